"""Callbacks of kegnet_pl."""

from __future__ import annotations

import json
import math

from pytorch_lightning import Callback, LightningModule, Trainer

from kegnet_pl.atomic import atomic_write_text


class MetricsToJSON(Callback):
    """Write the trainer's final test metrics, and the module's ``summary()`` if it has one, to a JSON file
    (rank 0 only); ``kegnet-pipeline`` reads it."""

    def __init__(self, path: str) -> None:
        """
        Args:
            path: the JSON file to write at the end of ``kegnet test``.
        """
        self.path = path

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        metrics = {key: float(value) for key, value in trainer.callback_metrics.items() if value.numel() == 1}
        metrics = {key: value for key, value in metrics.items() if math.isfinite(value)}
        summary = getattr(pl_module, "summary", None)
        if callable(summary):  # sizes of the networks (parameters, compression ratio)
            metrics.update(summary())
        atomic_write_text(self.path, json.dumps(metrics, indent=2, sort_keys=True) + "\n")
