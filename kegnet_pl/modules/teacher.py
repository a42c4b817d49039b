"""TeacherModule: trains (or evaluates) a classifier on real data. The only stage of kegnet_pl that sees data."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pytorch_lightning import LightningModule
from torchmetrics.classification import MulticlassAccuracy

from kegnet_pl.errors import ConfigError
from kegnet_pl.loading import CheckedLoading, load_classifier
from kegnet_pl.modules.checks import (
    ResumableRandomness,
    check_data_fits,
    check_finite,
    check_fit_setup,
    with_lr_schedule,
)
from kegnet_pl.nets.registry import build_classifier


class TeacherModule(ResumableRandomness, CheckedLoading, LightningModule):
    """Trains a registered classifier with cross-entropy and reports accuracy per stage.

    ``forward`` returns logits. The network lives in ``self.net`` so a checkpoint's state dict is the
    classifier's own with a ``net.`` prefix, which :func:`kegnet_pl.loading.load_classifier` reads.
    """

    #: the starting weights are not read again when a checkpoint of the module is tested or resumed
    file_arguments = ("weights",)

    def __init__(
        self,
        arch: str = "lenet5",
        input_shape: tuple[int, ...] = (1, 32, 32),
        num_classes: int = 10,
        arch_kwargs: dict[str, Any] | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        weights: str | None = None,
        lr_schedule: Literal["constant", "cosine"] = "constant",
    ) -> None:
        """
        Args:
            arch: registered classifier name (lenet5, resnet14, mlp) or an importable ``module:Class``.
            input_shape: shape of one input, without the batch dimension.
            num_classes: number of classes.
            arch_kwargs: extra keyword arguments of the architecture (e.g. ``{dropout: 0.15}`` for the MLP).
            lr: Adam learning rate (KegNet trains teachers with Adam at 1e-3).
            weight_decay: Adam weight decay.
            weights: optional weights file to start from (kegnet_pl checkpoint, KegNet ``.pth.tar``, state dict).
            lr_schedule: ``constant`` (the authors) or ``cosine``: the learning rate decays to 0 over the run's
                ``max_epochs`` (the shipped full-MNIST teacher: 99.31% after 12 epochs).
        """
        super().__init__()
        if lr <= 0:
            raise ConfigError(f"TeacherModule: lr must be positive, got {lr}")
        if weight_decay < 0:
            raise ConfigError(f"TeacherModule: weight_decay must be >= 0, got {weight_decay}")
        if lr_schedule not in ("constant", "cosine"):
            raise ConfigError(f"TeacherModule: lr_schedule must be 'constant' or 'cosine', got {lr_schedule!r}")
        input_shape = tuple(int(size) for size in input_shape)
        self.save_hyperparameters(ignore=["weights"])
        self.hparams["input_shape"] = input_shape
        if weights is None:
            self.net = build_classifier(arch, input_shape, num_classes, **(arch_kwargs or {}))
        else:  # checked against arch, input_shape and num_classes by the loader
            self.net = load_classifier(
                weights, arch=arch, input_shape=input_shape, num_classes=num_classes, **(arch_kwargs or {})
            ).train()
        self.metrics = torch.nn.ModuleDict(
            {stage: MulticlassAccuracy(num_classes, average="micro") for stage in ("train_", "val_", "test_")}
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        check_fit_setup(self, stage)
        check_data_fits("TeacherModule", self.hparams.input_shape, self.hparams.num_classes, datamodule)

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        if stage == "train":
            check_finite("teacher stage", self.global_step, self.current_epoch, {"loss_ce": loss})
        metric = self.metrics[f"{stage}_"]
        metric(logits, y)
        self.log(f"{stage}/loss", loss, prog_bar=stage != "test", sync_dist=stage != "train")
        self.log(f"{stage}/acc", metric, prog_bar=True)
        return loss

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "test")

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(x).softmax(-1)

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.Adam(self.net.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        schedule = self.hparams.get("lr_schedule", "constant")
        return with_lr_schedule(optimizer, schedule, self)
