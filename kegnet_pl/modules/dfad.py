"""DFAD: Data-Free Adversarial Distillation (Fang, Song, Wang, Shen, Wang and Song, 2019; arXiv:1912.11006).

A generator G maps noise z to inputs on which the student S and the frozen teacher T disagree most, and the
student learns to agree with the teacher there. The discrepancy is the mean absolute difference of the logits:

    D(x) = mean_{b, k} |S(x)_bk - T(x)_bk|          the student minimises D(G(z)) (``student_steps`` steps)
                                                    the generator maximises it (one step, loss -D(G(z)))

The method is a :class:`~kegnet_pl.modules.student.StudentModule` whose sample source (:class:`DFADGenerator`)
is trained: the same teachers, students, validation, real-data tests, checkpoints and CLI. Each noise batch
holds a seed; its ``student_steps + 1`` draws of z come, in order, from one generator seeded by it, so resumed and
multi-process runs draw what they should. Optimisation is manual: SGD for the student, Adam for the generator.

The defaults are those of the authors' MNIST script (``DFAD_mnist.py`` in VainF/Data-Free-Adversarial-Distillation):
z of size 100, student SGD at lr 0.01 with momentum 0.9 and weight decay 1e-4, generator Adam at lr 1e-3, both
constant (its step schedule is off unless asked for), batch 512, 40 rounds of 50 iterations; the teacher in eval
mode and the generator in training mode (BatchNorm on batch statistics) in every step. Its CIFAR script differs:
z of size 256 and weight decay 5e-4. Its authors keep the round whose student scores best on the test images; this
keeps the last round (selecting on test data is neither data-free nor a fair test).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kegnet_pl.data.noise import batch_generator
from kegnet_pl.data.sources import SampleSource
from kegnet_pl.errors import ConfigError
from kegnet_pl.modules.checks import check_finite
from kegnet_pl.modules.student import StudentModule


def dfad_discrepancy(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """DFAD's loss: the mean absolute error between student and teacher logits, ``mean_{b,k} |s_bk - t_bk|``
    (the student minimises it, the generator maximises it)."""
    return F.l1_loss(student_logits.float(), teacher_logits.float())


class DFADGeneratorNet(nn.Module):
    """DFAD's image generator (its ``GeneratorA``): z -> dense -> (2w, s/4, s/4) -> BatchNorm -> upsample, conv 3x3
    2w -> 2w, BatchNorm, LeakyReLU(0.2) -> upsample, conv 2w -> w, BatchNorm, LeakyReLU -> conv w -> channels,
    tanh, then a BatchNorm without learned affine (as its authors' code).

    DAFL's generator (Chen et al., 2019) is the same network with z of size 100, w = 64 and ``bn_eps=0.8`` in the
    two BatchNorms after the convolutions (its code's ``BatchNorm2d(128, 0.8)``); DFAD's keeps the default 1e-5.
    """

    def __init__(self, input_shape: Sequence[int], noise_dim: int = 100, width: int = 64, bn_eps: float = 1e-5) -> None:
        super().__init__()
        channels, height, wide = (int(size) for size in input_shape)
        if height != wide or height % 4:
            raise ConfigError(f"DFADGenerator makes square images with a side divisible by 4, got {tuple(input_shape)}")
        self.start = height // 4
        self.width = width
        self.fc = nn.Linear(noise_dim, 2 * width * self.start**2)
        self.blocks = nn.Sequential(
            nn.BatchNorm2d(2 * width),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1),
            nn.BatchNorm2d(2 * width, eps=bn_eps),
            nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(2 * width, width, 3, padding=1),
            nn.BatchNorm2d(width, eps=bn_eps),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, channels, 3, padding=1),
            nn.Tanh(),
            nn.BatchNorm2d(channels, affine=False),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.fc(z).view(len(z), 2 * self.width, self.start, self.start))


class DFADGenerator(SampleSource):
    """A trainable sample source: DFAD's generator of images from noise z ~ N(0, I) (DAFL's with ``bn_eps=0.8``;
    :class:`~kegnet_pl.modules.dafl.DAFLModule` builds it so)."""

    def __init__(self, noise_dim: int = 100, width: int = 64, bn_eps: float = 1e-5) -> None:
        """
        Args:
            noise_dim: size of z (DFAD's MNIST code and DAFL: 100; DFAD's CIFAR code: 256).
            width: channels of the generator's last block (DFAD and DAFL: 64).
            bn_eps: epsilon of the BatchNorms after the two 3x3 convolutions (DFAD: 1e-5; DAFL: 0.8).
        """
        super().__init__()
        if noise_dim <= 0 or width <= 0 or bn_eps <= 0:
            raise ConfigError(
                f"DFADGenerator: noise_dim, width and bn_eps must be positive, got {noise_dim}, {width} and {bn_eps}"
            )
        self.noise_dim = noise_dim
        self.width = width
        self.bn_eps = float(bn_eps)
        self.net: DFADGeneratorNet | None = None

    def bind(self, input_shape: Sequence[int], num_classes: int, seed: int = 0) -> None:
        """Build the network for the teacher's image shape, initialised from ``seed``."""
        super().bind(input_shape, num_classes, seed)
        if len(self.input_shape) != 3:
            raise ConfigError(f"DFADGenerator makes images, but the teacher takes inputs of shape {self.input_shape}")
        if self.net is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self.net = DFADGeneratorNet(self.input_shape, self.noise_dim, self.width, self.bn_eps)

    def sample(self, n: int, generator: torch.Generator, device: torch.device | str = "cpu") -> torch.Tensor:
        self._require_bound()
        z = torch.randn(n, self.noise_dim, generator=generator).to(device, self.dtype)
        return self.net(z)

    def spec(self) -> dict[str, Any]:
        return {
            "class_path": f"{__name__}.DFADGenerator",
            "init_args": {"noise_dim": self.noise_dim, "width": self.width, "bn_eps": self.bn_eps},
        }


class DFADModule(StudentModule):
    """DFAD (see the module docstring): a student distilled from a generator trained against it."""

    def __init__(
        self,
        teacher: str | None = None,
        teacher_arch: str | None = None,
        input_shape: list[int] | None = None,
        num_classes: int | None = None,
        student: str | dict[str, Any] = "lenet5-half",
        noise_dim: int = 100,
        generator_width: int = 64,
        student_steps: int = 5,
        lr: float = 0.01,
        lr_generator: float = 1e-3,
        weight_decay: float = 1e-4,
        seed: int = 0,
        teacher_spec: dict[str, Any] | None = None,
        student_ranks: dict[str, list[int]] | None = None,
        source_spec: dict[str, Any] | None = None,
    ) -> None:
        """
        Args:
            teacher: the trained classifier's weights file (a kegnet_pl checkpoint).
            teacher_arch: the teacher's architecture, for a ``teacher`` file that does not record it.
            input_shape: the teacher's input shape, for a ``teacher`` file that does not record it.
            num_classes: the teacher's class count, for a ``teacher`` file that does not record it.
            student: a registered classifier trained from scratch (DFAD: ``lenet5-half``), or a compression preset
                or spec of the teacher (``lenet5-s1``..``s3``: the Tucker students).
            noise_dim: size of the generator's noise (DFAD's MNIST code: 100; its CIFAR code: 256).
            generator_width: channels of the generator's last block (DFAD: 64).
            student_steps: student steps per generator step (DFAD: 5).
            lr: SGD learning rate of the student, momentum 0.9 (DFAD on MNIST: 0.01).
            lr_generator: Adam learning rate of the generator (DFAD: 1e-3).
            weight_decay: weight decay of the student's SGD (DFAD's MNIST code: 1e-4; its CIFAR code: 5e-4).
            seed: seed of the generator's and a from-scratch student's initialisation.
            teacher_spec: filled in with the teacher's architecture; leave unset.
            student_ranks: filled in with the exact ranks of a compressed student; leave unset.
            source_spec: filled in with the generator's settings; leave unset.
        """
        if student_steps <= 0 or lr_generator <= 0:
            raise ConfigError(
                f"DFADModule: student_steps and lr_generator must be positive, got {student_steps} and {lr_generator}"
            )
        super().__init__(
            teacher=teacher,
            teacher_arch=teacher_arch,
            input_shape=input_shape,
            num_classes=num_classes,
            student=student,
            source=DFADGenerator(noise_dim, generator_width),
            pool_size=None,
            lr=lr,
            optimizer="sgd",
            weight_decay=weight_decay,
            seed=seed,
            teacher_spec=teacher_spec,
            student_ranks=student_ranks,
            source_spec=source_spec,
        )
        self.automatic_optimization = False

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        hp = self.hparams
        student = torch.optim.SGD(self.trainable_parameters(), lr=hp.lr, momentum=0.9, weight_decay=hp.weight_decay)
        return [student, torch.optim.Adam(self.source_parameters(), lr=hp.lr_generator)]

    def student_loss(self, x: torch.Tensor) -> torch.Tensor:
        """The student's loss on ``x``: the discrepancy to the teacher's logits, neither reaching the generator."""
        x = x.detach()
        with torch.no_grad():
            teacher_logits = self.teacher(x)
        return dfad_discrepancy(self.student(x), teacher_logits)

    def generator_loss(self, x: torch.Tensor) -> torch.Tensor:
        """The generator's loss on its samples ``x``: minus the discrepancy, its gradient through both the student
        and the teacher (as its authors' code: neither side's logits are detached)."""
        return -dfad_discrepancy(self.student(x), self.teacher(x))

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        student_opt, generator_opt = self.optimizers()
        n, draws = int(batch["size"]), batch_generator(batch)
        for _ in range(self.hparams.student_steps):  # the student closes the gap on the generator's samples
            with torch.no_grad():
                x = self.source.sample(n, draws, self.device)
            loss_student = self.student_loss(x)
            check_finite("DFAD student step", self.global_step, self.current_epoch, {"loss_student": loss_student})
            student_opt.zero_grad()
            self.manual_backward(loss_student)
            student_opt.step()
        x = self.source.sample(n, draws, self.device)  # the generator widens it
        loss_generator = self.generator_loss(x)
        check_finite("DFAD generator step", self.global_step, self.current_epoch, {"loss_generator": loss_generator})
        generator_opt.zero_grad()
        self.manual_backward(loss_generator)
        generator_opt.step()
        logged = {"train/loss": loss_student, "train/loss_generator": loss_generator}
        self.log_dict(logged, prog_bar=True, on_step=True, on_epoch=True, sync_dist=True, batch_size=n)


__all__ = ["DFADGenerator", "DFADGeneratorNet", "DFADModule", "dfad_discrepancy"]
