"""Checkpoint files that are never half-written, and a guard against mixing runs in one checkpoint folder."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

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


def refuse_to_mix_runs(folder: str | os.PathLike | None, resuming: bool, overwrite: bool) -> None:
    """A new (not resumed) run must not write into a folder holding another run's checkpoints."""
    existing = checkpoint_files(folder)
    if existing and not resuming and not overwrite:
        names = ", ".join(path.name for path in existing[:4]) + (" ..." if len(existing) > 4 else "")
        raise ConfigError(
            f"the checkpoint folder {str(folder)!r} already holds checkpoints of another run ({names}). "
            "Resume that run with --ckpt_path last, write this one elsewhere (the ModelCheckpoint dirpath in the "
            "config), or pass --overwrite true to start a new run there anyway (nothing is deleted: Lightning "
            "gives the new files a -v1 suffix, and --ckpt_path last then takes the newest)."
        )
