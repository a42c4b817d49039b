"""Checkpoint files that are never half-written, and a guard against mixing runs in one checkpoint folder."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning import Trainer
from pytorch_lightning.callbacks import ModelCheckpoint

from kegnet_pl.atomic import atomic_write
from kegnet_pl.errors import ConfigError
from kegnet_pl.loading import read_checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint with :func:`kegnet_pl.atomic.atomic_write`: a crash or a failed write (full disk, a
    killed process) leaves the previous checkpoint intact. Checkpoints are read back with ``weights_only=True``.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options")
        with atomic_write(path, "wb") as handle:
            torch.save(checkpoint, handle)

    def load_checkpoint(self, path, map_location=None, weights_only: bool | None = None) -> dict[str, Any]:
        """Read through :func:`kegnet_pl.loading.read_checkpoint`: ``weights_only``, one-line errors, and the file's
        hyper-parameters checked (a file never chooses code)."""
        if not Path(path).exists():
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)  # Lightning's message
        return read_checkpoint(path, map_location=map_location)


def checkpoint_files(folder: str | os.PathLike | None) -> list[Path]:
    """The ``*.ckpt`` files in ``folder`` (none if it does not exist)."""
    if folder is None or not Path(folder).is_dir():
        return []
    return sorted(Path(folder).glob("*.ckpt"))


def last_checkpoint(folders: Iterable[str | os.PathLike]) -> Path | None:
    """The newest ``last*.ckpt`` in ``folders`` (``last.ckpt``, or ``last-v1.ckpt`` of a run started with
    ``--overwrite true``), as Lightning's ``ckpt_path="last"`` chooses it; ``None`` if there is none."""
    found = [path for folder in folders for path in checkpoint_files(folder) if path.stem.startswith("last")]
    return max(found, key=lambda path: path.stat().st_mtime) if found else None


def refuse_to_mix_runs(folder: str | os.PathLike | None, resuming: bool, overwrite: bool) -> None:
    """A new (not resumed) run must not write into a folder holding another run's checkpoints."""
    existing = checkpoint_files(folder)
    if existing and not resuming and not overwrite:
        names = ", ".join(path.name for path in existing[:4]) + (" ..." if len(existing) > 4 else "")
        raise ConfigError(
            f"the checkpoint folder {str(folder)!r} already holds checkpoints of another run ({names}). "
            "Resume that run with --ckpt_path last, write this one elsewhere with --trainer.default_root_dir DIR "
            "(its checkpoints, logs and images go under DIR unless the config gives their folders), or pass "
            "--overwrite true to start a new run there anyway (nothing is deleted: Lightning gives the new files a "
            "-v1 suffix, and --ckpt_path last then takes the newest)."
        )


class LastEveryEpoch(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``last.ckpt`` holds the end of every epoch, whatever the monitored metric did.

    Since pytorch-lightning 2.6, ``save_last=True`` writes ``last.ckpt`` only at a step where a top-k checkpoint is
    saved too: with a ``monitor`` that stops improving, ``last.ckpt`` stays at the best epoch, so ``--ckpt_path last``
    would resume from (and test) an older model than the run ended with. This subclass keeps the earlier meaning.
    It adds no state, so the ``kegnet`` command turns every ``ModelCheckpoint(save_last=True)`` of a config into one
    (:func:`keep_last_every_epoch`).
    """

    def on_train_epoch_end(self, trainer: Trainer, pl_module: Any) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer)

    def on_validation_end(self, trainer: Trainer, pl_module: Any) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer)

    def on_train_end(self, trainer: Trainer, pl_module: Any) -> None:
        super().on_train_end(trainer, pl_module)
        if self.save_last is True and not trainer.fast_dev_run:  # the finished run, its loops marked complete
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def _refresh_last(self, trainer: Trainer) -> None:
        if self.save_last is not True or self._should_skip_saving_checkpoint(trainer):
            return
        if self._last_global_step_saved == trainer.global_step and self.last_model_path:
            return  # Lightning saved last.ckpt at this step already
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


def keep_last_every_epoch(trainer: Trainer) -> None:
    """Make each plain ``ModelCheckpoint`` of ``trainer`` with ``save_last=True`` a :class:`LastEveryEpoch`."""
    for callback in trainer.checkpoint_callbacks:
        if type(callback) is ModelCheckpoint and callback.save_last is True:
            callback.__class__ = LastEveryEpoch
