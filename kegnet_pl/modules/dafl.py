"""DAFL: Data-Free Learning of Student Networks (Chen, Wang, Xu, Yang, Liu, Shi, Xu, Xu and Tian, ICCV 2019).

The frozen teacher T serves as a fixed discriminator: a generator G learns to make inputs x = G(z) that T finds
typical of its training data, and the student S learns to match T on them. On a batch of x, with teacher logits
t = T(x) and the features f that T's classifier head reads (``forward_features``, see
:mod:`kegnet_pl.nets.classifiers`), the generator minimises

    L_G = 1 * L_oh + 0.1 * L_a + 5 * L_ie                       (the weights of DAFL's released MNIST code)
    L_oh = CE(t, argmax t)                                     one-hot loss: T is confident on x
    L_a  = -mean_{b, j} |f_bj|                                 activation loss: T's features fire strongly
    L_ie = sum_k p_k log10 p_k,  p = mean_b softmax(t_b)       information entropy loss: classes balanced

and the student minimises the KL divergence from T's softmax to S's on the same batch, detached
(:func:`kegnet_pl.losses.distillation_loss` at temperature 1: DAFL's ``kdloss``). Each iteration computes both
losses on one batch, then steps the generator's Adam and the student's Adam; the student's loss does not depend on
G and the generator's does not depend on S, so this is the same as a generator step followed by a student step
on the batch drawn before it, and the same as the authors' code (one backward of the sum, then both steps).

The defaults are those of the authors' MNIST script (``DAFL-train.py`` in huawei-noah's DAFL): z of size 100, Adam
at 0.2 for the generator and 2e-3 for the student, both constant on MNIST, batch 512, 200 epochs of 120 iterations;
the teacher in eval mode, the generator never out of training mode. Its authors keep the epoch whose student scores
best on the test images; this keeps the last epoch (selecting on test data is neither data-free nor a fair test).

The method is a :class:`~kegnet_pl.modules.student.StudentModule` whose sample source is a trainable generator
(:class:`~kegnet_pl.modules.dfad.DFADGenerator`, which with ``noise_dim=100`` and ``bn_eps=0.8`` is DAFL's):
the same teachers, students, validation, real-data tests, checkpoints and CLI as KegNet's students and DFAD. Each
noise batch holds a seed and its z is drawn from a generator seeded by it (a function of the data seed, epoch,
rank and batch), so resumed runs see what an uninterrupted run would and every DDP rank draws its own z.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kegnet_pl.data.noise import batch_generator
from kegnet_pl.data.sources import DFADGenerator, batch_statistics
from kegnet_pl.errors import ConfigError
from kegnet_pl.losses import distillation_loss
from kegnet_pl.modules.checks import check_finite
from kegnet_pl.modules.student import StudentModule


def dafl_onehot_loss(teacher_logits: torch.Tensor) -> torch.Tensor:
    """DAFL's one-hot loss: the cross-entropy of the teacher's logits against their own argmax (pseudo labels),
    averaged over the batch: ``mean_b -log softmax(t_b)[argmax t_b]``."""
    logits = teacher_logits.float()
    return F.cross_entropy(logits, logits.argmax(dim=1).detach())


def dafl_activation_loss(features: torch.Tensor) -> torch.Tensor:
    """DAFL's activation loss: ``-mean_{b, j} |f_bj|``, the negated L1 norm of each sample's features averaged over
    the batch and divided by the feature size (the paper's ``-1/n sum_b ||f_b||_1``; the released code takes
    ``-features.abs().mean()``, this)."""
    return -features.float().abs().mean()


def dafl_entropy_loss(teacher_logits: torch.Tensor, base: float = 10.0) -> torch.Tensor:
    """DAFL's information entropy loss: ``sum_k p_k log p_k`` with ``p = mean_b softmax(t_b)``, the negative entropy
    of the teacher's mean prediction (minimising it balances the classes; its least is ``-log K``).

    ``base`` is the logarithm's: 10 in DAFL's released code (``torch.log10``, with which its weight 5 was chosen),
    ``math.e`` for nats. Computed from log-probabilities, so a class that no sample predicts adds 0, not NaN.
    """
    log_probs = F.log_softmax(teacher_logits.float(), dim=1)
    log_p = torch.logsumexp(log_probs, dim=0) - math.log(len(log_probs))  # log of the batch-mean softmax
    return (log_p.exp() * log_p).sum() / math.log(base)


def teacher_outputs(net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's logits and the features its classifier head reads, from one forward pass."""
    features = net.forward_features(x)
    return net.forward_head(features), features


def check_has_features(net: nn.Module, arch: Any) -> None:
    """A :class:`ConfigError` naming the fix when the teacher cannot give its features."""
    if not (callable(getattr(net, "forward_features", None)) and callable(getattr(net, "forward_head", None))):
        raise ConfigError(
            f"DAFLModule needs the teacher's features for its activation loss, but the teacher ({arch}) has no "
            "forward_features(x) and forward_head(features) methods; give it both (forward(x) must equal "
            "forward_head(forward_features(x)), as in kegnet_pl.nets.classifiers.LeNet5) or use a registered "
            "classifier as the teacher"
        )


@contextlib.contextmanager
def one_scale_update(precision_plugin: Any) -> Iterator[None]:
    """Hold back the loss scale's update while the optimiser steps inside run, so that the next step (outside) is
    unscaled by the scale that its gradients, from the same backward pass, were scaled by, and the update counts
    every optimiser's overflow once (GradScaler's order for several optimisers: step each, then update). The
    precision plugin (16-mixed) otherwise updates the scale after every optimiser step. Nothing without a scaler."""
    scaler = getattr(precision_plugin, "scaler", None)
    if scaler is None:
        yield
        return
    scaler.update = lambda *args, **kwargs: None  # an instance attribute over the method, removed below
    try:
        yield
    finally:
        del scaler.update


class DAFLModule(StudentModule):
    """DAFL (see the module docstring): a student distilled from a generator trained against the fixed teacher."""

    def __init__(
        self,
        teacher: str | None = None,
        teacher_arch: str | None = None,
        input_shape: list[int] | None = None,
        num_classes: int | None = None,
        student: str | dict[str, Any] = "lenet5-half",
        noise_dim: int = 100,
        generator_width: int = 64,
        generator_bn_eps: float = 0.8,
        onehot_weight: float = 1.0,
        activation_weight: float = 0.1,
        entropy_weight: float = 5.0,
        lr: float = 2e-3,
        lr_generator: float = 0.2,
        seed: int = 0,
        teacher_spec: dict[str, Any] | None = None,
        student_ranks: dict[str, list[int]] | None = None,
        source_spec: dict[str, Any] | None = None,
    ) -> None:
        """
        Args:
            teacher: the trained classifier's weights file (a kegnet_pl checkpoint); its architecture must have
                ``forward_features`` and ``forward_head`` (every registered classifier has).
            teacher_arch: the teacher's architecture, for a ``teacher`` file that does not record it.
            input_shape: the teacher's input shape, for a ``teacher`` file that does not record it.
            num_classes: the teacher's class count, for a ``teacher`` file that does not record it.
            student: a registered classifier trained from scratch (DAFL: ``lenet5-half``), or a compression preset
                or spec of the teacher (``lenet5-s1``..``s3``: the Tucker students).
            noise_dim: size of the generator's noise (DAFL: 100).
            generator_width: channels of the generator's last block (DAFL: 64, after a block of 128).
            generator_bn_eps: epsilon of the generator's two inner BatchNorms (DAFL's code: 0.8).
            onehot_weight: weight of the one-hot loss (DAFL: 1).
            activation_weight: weight of the activation loss (DAFL: 0.1).
            entropy_weight: weight of the information entropy loss, in log10 as DAFL's code (DAFL: 5).
            lr: Adam learning rate of the student (DAFL on MNIST: 2e-3, constant).
            lr_generator: Adam learning rate of the generator (DAFL: 0.2).
            seed: seed of the generator's and a from-scratch student's initialisation.
            teacher_spec: filled in with the teacher's architecture; leave unset.
            student_ranks: filled in with the exact ranks of a compressed student; leave unset.
            source_spec: filled in with the generator's settings; leave unset.
        """
        if lr_generator <= 0:
            raise ConfigError(f"DAFLModule: lr_generator must be positive, got {lr_generator}")
        weights = {
            "onehot_weight": onehot_weight,
            "activation_weight": activation_weight,
            "entropy_weight": entropy_weight,
        }
        negative = {name: value for name, value in weights.items() if value < 0}
        if negative:
            raise ConfigError(f"DAFLModule: loss weights must be >= 0, got {negative}")
        super().__init__(
            teacher=teacher,
            teacher_arch=teacher_arch,
            input_shape=input_shape,
            num_classes=num_classes,
            student=student,
            source=DFADGenerator(noise_dim, generator_width, generator_bn_eps),
            pool_size=None,
            lr=lr,
            optimizer="adam",
            seed=seed,
            teacher_spec=teacher_spec,
            student_ranks=student_ranks,
            source_spec=source_spec,
        )
        check_has_features(self.teacher.net, self.hparams["teacher_spec"].get("arch"))
        self.automatic_optimization = False

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        hp = self.hparams
        student = torch.optim.Adam(self.trainable_parameters(), lr=hp.lr)
        return [student, torch.optim.Adam(self.source_parameters(), lr=hp.lr_generator)]

    # --- the two losses ----------------------------------------------------------------------------
    def generator_loss(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """The generator's weighted loss on generated ``x``, its three parts (unweighted) and the teacher's logits."""
        hp = self.hparams
        logits, features = teacher_outputs(self.teacher.net, x)
        parts = {
            "loss_onehot": dafl_onehot_loss(logits),
            "loss_activation": dafl_activation_loss(features),
            "loss_entropy": dafl_entropy_loss(logits),
        }
        loss = (
            hp.onehot_weight * parts["loss_onehot"]
            + hp.activation_weight * parts["loss_activation"]
            + hp.entropy_weight * parts["loss_entropy"]
        )
        return loss, parts, logits

    def student_loss(self, x: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        """The student's loss: distillation from the teacher's logits on ``x``, both detached from the generator."""
        return distillation_loss(self.student(x.detach()), teacher_logits.detach().float())

    # --- steps -------------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        student_opt, generator_opt = self.optimizers()
        n = int(batch["size"])
        x = self.source.sample(n, batch_generator(batch), self.device)
        loss_generator, parts, teacher_logits = self.generator_loss(x)
        loss_student = self.student_loss(x, teacher_logits)
        terms = {"loss_generator": loss_generator, "loss_student": loss_student, **parts}
        check_finite("DAFL step", self.global_step, self.current_epoch, terms)
        generator_opt.zero_grad()
        student_opt.zero_grad()
        self.manual_backward(loss_generator + loss_student)  # disjoint: each reaches only its own network
        with one_scale_update(self.trainer.precision_plugin):  # 16-mixed: both unscaled by this backward's scale
            generator_opt.step()
        student_opt.step()
        losses = {"train/loss": loss_student, "train/loss_generator": loss_generator}
        self.log_dict(losses, prog_bar=True, on_step=True, on_epoch=True, sync_dist=True, batch_size=n)
        parts = {f"train/{name}": value for name, value in parts.items()}  # unweighted
        self.log_dict(parts, on_step=True, on_epoch=True, sync_dist=True, batch_size=n)

    # --- images ------------------------------------------------------------------------------------
    @torch.no_grad()
    def grid_samples(self, columns: int, seed: int) -> list[torch.Tensor]:
        """The samples of an image grid (:class:`kegnet_pl.images.SampleImages`): the generator is not conditioned
        on a class, so ``4 * classes * columns`` samples are drawn from ``seed`` and row ``k`` holds, in drawing
        order, the first ``columns`` of them that the teacher puts in class ``k`` (blank cells where it put fewer).
        Drawn as in training (BatchNorm on the batch's statistics), without changing the running statistics."""
        if len(self.input_shape) != 3:
            return []
        with batch_statistics(self.source.net):
            draws = torch.Generator().manual_seed(seed)
            x = self.source.sample(4 * self.num_classes * columns, draws, self.device).float()
        predicted = self.teacher(x).argmax(dim=1)
        grid = torch.zeros(self.num_classes * columns, *x.shape[1:])
        for k in range(self.num_classes):
            chosen = x[predicted == k][:columns].cpu()
            grid[k * columns : k * columns + len(chosen)] = chosen
        return [grid]


__all__ = [
    "DAFLModule",
    "dafl_activation_loss",
    "dafl_entropy_loss",
    "dafl_onehot_loss",
    "teacher_outputs",
]
