"""Checks shared by the LightningModules."""

from __future__ import annotations

import torch

from kegnet_pl.errors import NumericalError


def check_finite(stage: str, step: int, epoch: int, terms: dict[str, torch.Tensor]) -> None:
    """Stop training with a message naming the stage, step and loss term when a loss is NaN or infinite.

    Raising inside the training step stops the run before anything is saved, so the checkpoints on disk are
    the last good ones.
    """
    for name, value in terms.items():
        if not torch.isfinite(value.detach()).all():
            raise NumericalError(
                f"{stage}: the loss term {name} is {value.detach().float().mean().item()} at step {step} "
                f"(epoch {epoch}); training stopped and the last good checkpoint is kept. Resume with "
                "--ckpt_path last, perhaps with a lower --model.lr"
            )
