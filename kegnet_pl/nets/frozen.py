"""Frozen networks (the teacher, trained generators): no gradients, a fixed mode whatever calls ``.train()``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


class Frozen(nn.Module):
    """Wraps a network whose parameters never train and whose mode never changes.

    ``batchnorm_train=False`` (the default) keeps the network in eval mode: BatchNorm uses its running
    statistics and dropout is off. ``batchnorm_train=True`` reproduces the authors' KegNet code, which left the
    teacher in training mode: BatchNorm normalises with each batch's own statistics (and dropout is active),
    but the running statistics are not updated, so the teacher's state stays bitwise unchanged.
    """

    def __init__(self, net: nn.Module, batchnorm_train: bool = False) -> None:
        super().__init__()
        self.net = net.requires_grad_(False)
        self.batchnorm_train = batchnorm_train
        if batchnorm_train:
            for module in net.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.track_running_stats = False  # batch statistics, buffers left alone
        self.train(False)

    def train(self, mode: bool = True) -> Frozen:
        """Ignores ``mode``: the wrapped network keeps the mode chosen at construction."""
        self.training = False
        self.net.train(self.batchnorm_train)
        return self

    def forward(self, *args: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.net(*args, **kwargs)

    @contextlib.contextmanager
    def evaluating(self) -> Iterator[None]:
        """The network in eval mode inside (running BatchNorm statistics, no dropout), its fixed mode again after:
        the teacher's own accuracy on real data, whichever mode the extraction runs it in."""
        self.net.eval()
        try:
            yield
        finally:
            self.net.train(self.batchnorm_train)
