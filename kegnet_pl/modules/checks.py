"""Checks shared by the LightningModules."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import torch

from kegnet_pl.errors import ConfigError, NumericalError


def all_finite(values: Iterable[torch.Tensor]) -> bool:
    """Whether every element of ``values`` is finite, read back from the device once, however many there are; under
    several processes (DDP), whether it is so on every process, so that all stop together rather than the others
    waiting for the stopped one in the gradients' all-reduce until the collective times out.

    On a GPU each read-back waits for the queued work; one per training step instead of one per loss term keeps
    the CPU queueing kernels ahead of the GPU.
    """
    flat = [value.detach().reshape(-1).float() for value in values]
    if not flat:
        return True
    finite = torch.isfinite(torch.cat(flat)).all()
    if torch.distributed.is_available() and torch.distributed.is_initialized():  # every process decides alike
        flag = finite.float()
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
        finite = flag > 0
    return bool(finite)


def check_finite(stage: str, step: int, epoch: int, terms: dict[str, torch.Tensor]) -> None:
    """Stop training with a message naming the stage, step and loss term when a loss is NaN or infinite.

    Raising inside the training step stops the run before anything is saved, so the checkpoints on disk are
    the last good ones.
    """
    check_finite_groups(step, epoch, {stage: terms})


def check_finite_groups(step: int, epoch: int, groups: dict[str, dict[str, torch.Tensor]]) -> None:
    """:func:`check_finite` for several stages' (or networks') terms at once, with one read-back from the device;
    the message names the first group and term that is not finite."""
    if all_finite(value for terms in groups.values() for value in terms.values()):
        return
    advice = "training stopped and the last good checkpoint is kept. Resume with --ckpt_path last (from Python: "
    advice += (
        "trainer.fit(..., ckpt_path=...)), perhaps with a lower lr (--model.lr), or in a wider precision (16-true "
    )
    advice += "overflows easily; 32-true or bf16-mixed do not)"
    for stage, terms in groups.items():
        for name, value in terms.items():
            if not torch.isfinite(value.detach()).all():
                raise NumericalError(
                    f"{stage}: the loss term {name} is {value.detach().float().mean().item()} at step {step} "
                    f"(epoch {epoch}); {advice}"
                )
    stages = ", ".join(groups)
    raise NumericalError(f"{stages}: a loss is not finite on another process at step {step} (epoch {epoch}); {advice}")


def check_data_fits(module_name: str, input_shape: tuple[int, ...], num_classes: int, datamodule: Any) -> None:
    """Fail early when a DataModule's shapes differ from the network's, naming both numbers."""
    if datamodule is None:
        return
    data_shape = tuple(getattr(datamodule, "input_shape", input_shape))
    data_classes = getattr(datamodule, "num_classes", num_classes)
    if data_shape != tuple(input_shape) or data_classes != num_classes:
        raise ConfigError(
            f"{module_name} expects input_shape={tuple(input_shape)} and num_classes={num_classes}, but "
            f"{type(datamodule).__name__} gives input_shape={data_shape} and num_classes={data_classes}; "
            "make the model's input_shape/num_classes match the data"
        )


def check_data_kind(module: Any, datamodule: Any) -> None:
    """Fail before training when a stage gets the other kind of DataModule: the data-free stages train on
    NoiseDataModule batches drawn with the module's ``noise_settings()``, a teacher on real labelled data."""
    if datamodule is None:
        return
    from kegnet_pl.data.noise import NoiseDataModule

    name, data_name = type(module).__name__, type(datamodule).__name__
    settings = module.noise_settings() if hasattr(module, "noise_settings") else None
    if settings is None:
        if isinstance(datamodule, NoiseDataModule):
            raise ConfigError(
                f"{name} trains on real labelled data, and NoiseDataModule holds none; give it a real-data DataModule "
                "(MNISTDataModule, CSVDataModule, ...)"
            )
        return
    if not isinstance(datamodule, NoiseDataModule):
        raise ConfigError(
            f"{name} trains without data, on NoiseDataModule batches, but got {data_name}; pass "
            f"NoiseDataModule(..., **model.noise_settings(), eval_data={data_name}(...)) to score it on that data's "
            "validation and test splits too"
        )
    wrong = {key: value for key, value in settings.items() if datamodule.settings.get(key) != value}
    if wrong:
        drawn = ", ".join(f"{key}={datamodule.settings.get(key)!r}" for key in wrong)
        needed = ", ".join(f"{key}={value!r}" for key, value in wrong.items())
        raise ConfigError(
            f"{name} needs noise batches with {needed}, but the NoiseDataModule draws {drawn}; "
            "build it as NoiseDataModule(..., **model.noise_settings())"
        )


def check_fit_setup(module: Any, stage: str) -> None:
    """What every stage checks in ``setup`` before a fit: the kind of DataModule (:func:`check_data_kind`) and the
    checkpoint folder (:func:`check_checkpoint_folder`); nothing outside a fit or without a trainer."""
    if stage != "fit" or module._trainer is None:
        return
    check_data_kind(module, getattr(module.trainer, "datamodule", None))
    check_checkpoint_folder(module.trainer)


def check_checkpoint_folder(trainer: Any) -> None:
    """Refuse to let Lightning write a run's checkpoints into the folder of the shipped teachers (one holding
    ``manifest.json``): a Trainer with ``logger=False`` and no ``default_root_dir`` writes to ``./checkpoints``."""
    for callback in getattr(trainer, "checkpoint_callbacks", []) or []:
        folder = getattr(callback, "dirpath", None)
        if folder and os.path.isfile(os.path.join(folder, "manifest.json")):
            raise ConfigError(
                f"this run would write its checkpoints into {folder!r}, the folder of the shipped teachers "
                "(it holds manifest.json); give the Trainer a default_root_dir (or a logger), or the ModelCheckpoint "
                "a dirpath of its own"
            )


def with_lr_schedule(optimizer: torch.optim.Optimizer, schedule: str, module: Any) -> Any:
    """``optimizer`` alone (``constant``), or with a cosine decay of its learning rate to 0 over the optimiser steps
    of ``module``'s run (``cosine``; asks its trainer), in the form ``configure_optimizers`` returns."""
    if schedule == "constant":
        return optimizer
    if schedule != "cosine":
        raise ConfigError(f"lr_schedule must be 'constant' or 'cosine', got {schedule!r}")
    steps = max(1, int(module.trainer.estimated_stepping_batches))
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": decay, "interval": "step"}}


class ResumableRandomness:
    """Mixin of the LightningModules: every checkpoint holds torch's global random state (the CPU's, and the GPU's
    the module runs on), and a run resumed from a checkpoint takes it up as its first epoch starts, so that what
    draws from it (dropout) goes on as in a run never interrupted. (The data have random streams of their own.)
    Subclasses that override ``on_save_checkpoint``, ``on_load_checkpoint`` or ``on_train_epoch_start`` call
    ``super()``. Under DDP every rank would start from the same seed and draw the same dropout masks: there each
    epoch instead seeds each rank's state from the run's seed, the epoch and the rank, which a resumed run repeats
    without the checkpoint's state (rank 0's alone)."""

    _saved_random_state: dict[str, Any] | None = None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        state = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        checkpoint["random_state"] = state

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("random_state")
        self._saved_random_state = state if isinstance(state, dict) else None

    def on_train_epoch_start(self) -> None:
        state, self._saved_random_state = self._saved_random_state, None
        trainer = self.trainer
        if trainer.world_size > 1:  # each rank a stream of its own, from (seed, epoch, rank)
            from kegnet_pl.data.noise import derive_seed

            base = os.environ.get("PL_GLOBAL_SEED", "0")
            torch.manual_seed(derive_seed("global", base, trainer.current_epoch, trainer.global_rank))
            return
        if state is None or trainer.ckpt_path is None:  # loaded, not resumed: the run's own seed stands
            return
        cpu, cuda = state.get("cpu"), state.get("cuda")
        if isinstance(cpu, torch.Tensor) and cpu.dtype == torch.uint8:
            torch.set_rng_state(cpu)
        if isinstance(cuda, torch.Tensor) and cuda.dtype == torch.uint8 and self.device.type == "cuda":
            torch.cuda.set_rng_state(cuda, self.device)
