"""GeneratorModule: knowledge extraction (KegNet step 1), with the teacher frozen and no real data at all.

Each of ``n_generators`` generator-decoder pairs learns, from sampled labels y and noise z, samples x = G(y, z)
that the teacher classifies as y, that the decoder maps back to z, and that differ as z differs:

    loss = l_cls(M(x), y) + alpha * l_dec(D(x), z) + beta * l_div(x, z)          (Yoo et al., NeurIPS 2019)

The pairs start from different initialisations and see independent noise streams; their losses are summed
into one optimiser step, which trains each pair exactly as if it were trained alone. ``vectorize=True`` runs the
pairs as one batched computation (:func:`kegnet_pl.nets.ensemble.call_pairs`) instead of one after another,
with the same losses, gradients and BatchNorm statistics up to rounding.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from kegnet_pl.errors import ConfigError
from kegnet_pl.losses import classification_loss, decoder_loss, diversity_loss
from kegnet_pl.modules.base import TeacherStage, load_teacher
from kegnet_pl.modules.checks import check_finite_groups, check_fit_setup
from kegnet_pl.nets.ensemble import call_pairs
from kegnet_pl.nets.generators import Decoder, build_generator


def check_teacher_fits(
    teacher_shape: tuple[int, ...], teacher_classes: int, input_shape: list[int] | None, num_classes: int | None
) -> None:
    """A generator config that names a shape or class count must agree with the teacher's."""
    if num_classes is not None and num_classes != teacher_classes:
        raise ConfigError(
            f"the teacher has {teacher_classes} classes but the generator config says num_classes={num_classes}; "
            "remove num_classes or use a teacher of that class count"
        )
    if input_shape is not None and tuple(input_shape) != tuple(teacher_shape):
        raise ConfigError(
            f"the teacher takes inputs of shape {tuple(teacher_shape)} but the generator config says "
            f"input_shape={tuple(input_shape)}; remove input_shape or use a teacher of that input shape"
        )


class GeneratorModule(TeacherStage):
    """Trains ``n_generators`` generator-decoder pairs against a frozen teacher (KegNet's knowledge extraction).

    Batches come from :class:`kegnet_pl.data.NoiseDataModule`: ``labels`` of shape (n_generators, B, classes)
    and ``noise`` of shape (n_generators, B, noise_dim). ``forward(labels, noise, generator=0)`` samples data.
    Checkpoints hold the teacher too, so a generator checkpoint alone is enough to sample data later.
    """

    def __init__(
        self,
        teacher: str | None = None,
        teacher_arch: str | None = None,
        teacher_spec: dict[str, Any] | None = None,
        n_generators: int = 5,
        noise_dim: int = 10,
        alpha: float = 1.0,
        beta: float = 0.0,
        decoder_layers: int = 1,
        lr: float = 1e-3,
        label_distribution: Literal["onehot", "uniform"] = "onehot",
        teacher_batchnorm: Literal["eval", "train"] = "eval",
        num_classes: int | None = None,
        input_shape: list[int] | None = None,
        seed: int = 0,
        vectorize: bool = False,
    ) -> None:
        """
        Args:
            teacher: the trained classifier's weights file (kegnet_pl checkpoint, KegNet ``.pth.tar`` or state dict).
            teacher_arch: its architecture, when the file does not record it (KegNet files, state dicts).
            teacher_spec: ``{arch, input_shape, num_classes, arch_kwargs}`` of the teacher, filled in by the
                module itself so that its checkpoints rebuild the teacher without the file; leave it unset.
            n_generators: independent generator-decoder pairs trained together (the paper: 5).
            noise_dim: size of the noise vector z (the paper: 10).
            alpha: weight of the decoder's reconstruction loss (the paper: 1).
            beta: weight of the diversity loss (the paper: 0 for MNIST, 10 for Fashion, 1 for SVHN).
            decoder_layers: extra 120-unit layers of the decoder (the paper: 1 for MNIST, 3 for images, 2 tabular).
            lr: Adam learning rate of generators and decoders (the paper: 1e-3 MNIST, 1e-2 Fashion/SVHN).
            label_distribution: ``onehot`` (uniformly random class) or ``uniform`` (unnormalised U(0,1) soft labels).
            teacher_batchnorm: ``eval`` uses the teacher's running BatchNorm statistics; ``train`` normalises with
                batch statistics as the authors' code did (the teacher's stored state is never changed).
            num_classes: the teacher's class count: checked against a file that records it, needed for one that
                does not (KegNet files, state dicts).
            input_shape: the teacher's input shape, checked or needed likewise.
            seed: seed of the generators' initialisation (pair g uses ``seed * n_generators + g``: every pair of every
                seed starts from its own weights).
            vectorize: run the pairs of a training step as one batched computation (vmap over the generators and
                the decoders, the teacher once on all their samples) rather than one pair after another. Results
                agree up to rounding. Off by default: on the CPU it was not faster (0.87 to 1.03 times the loop's
                speed on one thread; README, "Knowledge extraction"). With ``teacher_batchnorm="train"`` the
                teacher still sees each generator's batch on its own, so that its batch statistics stay those of
                one generator's samples.
        """
        super().__init__()
        for name, value in (("n_generators", n_generators), ("noise_dim", noise_dim), ("lr", lr)):
            if value <= 0:
                raise ConfigError(f"GeneratorModule: {name} must be positive, got {value}")
        for name, value in (("alpha", alpha), ("beta", beta), ("decoder_layers", decoder_layers)):
            if value < 0:
                raise ConfigError(f"GeneratorModule: {name} must be >= 0, got {value}")
        if label_distribution not in ("onehot", "uniform"):
            raise ConfigError(
                f"GeneratorModule: label_distribution must be 'onehot' or 'uniform', got {label_distribution!r}"
            )
        if teacher_batchnorm not in ("eval", "train"):
            raise ConfigError(
                f"GeneratorModule: teacher_batchnorm must be 'eval' or 'train', got {teacher_batchnorm!r}"
            )
        if not isinstance(vectorize, bool):
            raise ConfigError(f"GeneratorModule: vectorize must be true or false, got {vectorize!r}")
        net, spec = load_teacher(teacher, teacher_arch, input_shape, num_classes, teacher_spec, "GeneratorModule")
        check_teacher_fits(spec["input_shape"], spec["num_classes"], input_shape, num_classes)
        self.save_hyperparameters()
        self.set_teacher(net, spec, batchnorm_train=teacher_batchnorm == "train")
        self.noise_dim = noise_dim
        self.n_generators = n_generators
        generators, decoders = [], []
        for g in range(n_generators):
            with torch.random.fork_rng(devices=[]):
                # a different, reproducible initialisation per pair, and none shared between seeds (``seed + g``
                # gave generator 1 of seed 0 the starting weights of generator 0 of seed 1); seed 0 keeps g
                torch.manual_seed(seed * n_generators + g)
                generators.append(build_generator(self.input_shape, self.num_classes, noise_dim))
                decoders.append(Decoder(self.input_shape, noise_dim, extra_layers=decoder_layers))
        self.generators = nn.ModuleList(generators)
        self.decoders = nn.ModuleList(decoders)
        self.teacher_acc = nn.ModuleList(  # labels drawn here are valid: no checking (it reads back from the device)
            MulticlassAccuracy(self.num_classes, average="micro", validate_args=False) for _ in range(n_generators)
        )
        self.test_metrics = nn.ModuleDict(
            {
                name: MulticlassAccuracy(self.num_classes, average="micro")
                for name in [*map("gen{}".format, range(n_generators)), "real"]
            }
        )

    def noise_settings(self) -> dict[str, Any]:
        """What its NoiseDataModule must draw: one label and noise stream per generator (``kegnet`` links these to
        the DataModule's arguments)."""
        return {
            "streams": self.n_generators,
            "num_classes": self.num_classes,
            "noise_dim": self.noise_dim,
            "label_distribution": self.hparams.label_distribution,
        }

    # --- sampling ------------------------------------------------------------------------------------
    def forward(self, labels: torch.Tensor, noise: torch.Tensor, generator: int = 0) -> torch.Tensor:
        """Samples of generator ``generator`` for label vectors (B, classes) and noise (B, noise_dim)."""
        return self.generators[generator](labels, noise)

    # --- training ------------------------------------------------------------------------------------
    def pair_outputs(
        self, labels: torch.Tensor, noise: torch.Tensor
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per generator g, in order: its samples ``x = G_g(y_g, z_g)``, the teacher's logits on them and the
        decoder's estimate ``D_g(x)`` of ``z_g``, for ``labels`` and ``noise`` of shape (n_generators, B, ...).

        Looped (the default), a pair is computed when the caller asks for it; vectorised (``vectorize=True``), every
        pair is computed by the first request, in a few batched calls.
        """
        if not self.hparams.vectorize:
            for generator, decoder, y, z in zip(self.generators, self.decoders, labels, noise, strict=True):
                x = generator(y, z)
                yield x, self.teacher(x), decoder(x)
            return
        # a teacher with batch statistics sees one generator's batch at a time, as in the loop
        outputs = call_pairs(self.generators, self.decoders, self.teacher, labels, noise, self.teacher.batchnorm_train)
        yield from zip(*outputs, strict=True)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        labels, noise = batch["labels"], batch["noise"]
        if labels.shape[0] != self.n_generators or labels.shape[-1] != self.num_classes:
            raise ConfigError(
                f"noise batches have {labels.shape[0]} streams of {labels.shape[-1]} classes, but the model has "
                f"{self.n_generators} generators and a teacher of {self.num_classes} classes"
            )
        total = torch.zeros((), device=self.device)
        # With beta = 0 the diversity term is only a figure to watch: computed on the steps that are logged.
        train_diversity = self.hparams.beta > 0
        watch_diversity = train_diversity or batch_idx % max(1, self.trainer.log_every_n_steps) == 0
        checked = {}  # every pair's terms, checked together after the loop: one read-back from the device per step
        for g, (x, logits, z_hat) in enumerate(self.pair_outputs(labels, noise)):
            y, z = labels[g], noise[g]
            terms = {"loss_cls": classification_loss(logits, y), "loss_dec": decoder_loss(z_hat, z)}
            loss = terms["loss_cls"] + self.hparams.alpha * terms["loss_dec"]
            if train_diversity:
                terms["loss_div"] = diversity_loss(x, z)
                loss = loss + self.hparams.beta * terms["loss_div"]
            elif watch_diversity:
                with torch.no_grad():
                    terms["loss_div"] = diversity_loss(x, z)
            checked[f"generator stage (generator {g})"] = terms
            total = total + loss
            self.teacher_acc[g].update(logits, y.argmax(-1))  # logged per epoch: no per-step value to compute
            logged = {f"train/gen{g}/loss": loss, **{f"train/gen{g}/{name}": value for name, value in terms.items()}}
            if "loss_div" in terms:
                logged[f"train/gen{g}/diversity"] = -torch.log(terms["loss_div"].detach().clamp_min(1e-30))
            self.log_dict(logged, on_step=True, on_epoch=True, sync_dist=True, batch_size=len(x))
            self.log(f"train/gen{g}/teacher_acc", self.teacher_acc[g], on_step=False, on_epoch=True, batch_size=len(x))
        self.log(
            "train/loss",
            total / self.n_generators,
            prog_bar=True,
            on_step=True,
            on_epoch=True,
            sync_dist=True,
            batch_size=len(x),
        )
        check_finite_groups(self.global_step, self.current_epoch, checked)  # before backward: nothing is updated
        return total

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Held-out noise batches: the teacher's accuracy on each generator's samples and their diversity; real
        batches (``NoiseDataModule(eval_data=...)``): the teacher's own accuracy, for reference."""
        if isinstance(batch, dict):
            labels, noise = batch["labels"], batch["noise"]
            for g, generator in enumerate(self.generators):
                x = generator(labels[g], noise[g])
                metric = self.test_metrics[f"gen{g}"]
                metric(self.teacher(x), labels[g].argmax(-1))
                self.log(f"test/gen{g}/teacher_acc", metric, add_dataloader_idx=False, batch_size=len(x))
                diversity = -torch.log(diversity_loss(x, noise[g]).clamp_min(1e-30))
                self.log(f"test/gen{g}/diversity", diversity, add_dataloader_idx=False, batch_size=len(x))
            return
        x, y = batch
        metric = self.test_metrics["real"]
        with self.teacher.evaluating():  # its own accuracy: running statistics even with teacher_batchnorm: train
            metric(self.teacher(x), y)
        self.log("test/teacher_acc", metric, add_dataloader_idx=False, batch_size=len(x))

    def summary(self) -> dict[str, float]:
        """Parameter counts: teacher, and one generator with its decoder."""
        pair = (*self.generators[0].parameters(), *self.decoders[0].parameters())
        return {**super().summary(), "params": sum(p.numel() for p in pair)}

    def trained_modules(self) -> list[nn.Module]:
        return [self.generators, self.decoders]

    def setup(self, stage: str) -> None:
        check_fit_setup(self, stage)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.trainable_parameters(), lr=self.hparams.lr)

    # --- images ------------------------------------------------------------------------------------
    @torch.no_grad()
    def grid_samples(self, columns: int, seed: int) -> list[torch.Tensor]:
        """Per generator, the samples of an image grid: a row per class, a column per noise vector (``z = 0`` first,
        the others drawn from ``seed``), as a tensor ``(classes * columns, *input_shape)``; none for tabular data.

        Drawn in eval mode (BatchNorm uses running statistics and is not updated); each generator's mode is
        restored afterwards. :class:`kegnet_pl.images.SampleImages` lays them out, logs and saves them.
        """
        if len(self.input_shape) != 3:
            return []
        noise = torch.randn(columns, self.noise_dim, generator=torch.Generator().manual_seed(seed))
        noise[0] = 0.0
        noise = noise.to(self.device).repeat(self.num_classes, 1)
        labels = torch.eye(self.num_classes, device=self.device).repeat_interleave(columns, 0)
        samples = []
        for net in self.generators:
            was_training = net.training
            net.eval()
            try:
                samples.append(net(labels, noise).float().cpu())
            finally:
                net.train(was_training)
        return samples
