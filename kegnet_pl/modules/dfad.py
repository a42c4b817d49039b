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

from typing import Any

import torch

from kegnet_pl.data.noise import batch_generator
from kegnet_pl.data.sources import DFADGenerator
from kegnet_pl.errors import ConfigError
from kegnet_pl.losses import dfad_discrepancy
from kegnet_pl.modules.checks import check_finite
from kegnet_pl.modules.student import StudentModule
from kegnet_pl.nets.generators import DFADGeneratorNet


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
