"""StudentModule: distillation of the teacher into a Tucker-compressed student (KegNet step 2).

The student is a copy of the teacher whose layers a compression spec replaces by Tucker-2 factorisations
(initialised by the decomposition). It learns to match the teacher's softmax on artificial data only:

* ``source: kegnet``: samples of the trained generators (the paper's method);
* ``source: uniform`` / ``normal``: U(-1, 1) or N(0, 1) inputs (the paper's baselines).

Data is either a fixed pool of ``pool_size`` samples per generator, drawn once (as in the paper) and labelled
once by the teacher, or fresh samples every step (``pool_size: null``). Both are pure functions of the seed,
the epoch, the rank and the batch index, so resumed runs see the data an uninterrupted run would.

Validation needs no real data: the student's agreement with the teacher on fixed held-out artificial samples
(``val/agreement``) is the default figure for choosing checkpoints. When the data module also carries real
data (``NoiseDataModule(eval_data=...)``), the real accuracy is logged as ``val/acc`` and ``test/acc``, and the
test also logs how closely the student follows the teacher on that real data: ``test/real_agreement`` (same
top class) and ``test/real_kl`` (the KL divergence of the loss, at temperature 1).
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pytorch_lightning import LightningModule
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from kegnet_pl.compression import compress_with_report, parameter_count
from kegnet_pl.data.noise import sample_batch, sample_inputs, stream_seed
from kegnet_pl.errors import CheckpointError, ConfigError
from kegnet_pl.loading import CheckedLoading, load_classifier_and_spec
from kegnet_pl.modules.checks import check_finite
from kegnet_pl.modules.teacher import check_data_fits
from kegnet_pl.nets import Frozen, build_classifier_from_spec
from kegnet_pl.nets.generators import build_generator

Source = Literal["kegnet", "uniform", "normal"]


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0):
    """KL divergence (batch mean) from the teacher's softmax to the student's, at a temperature ``T``.

    Scaled by ``T**2`` so that gradients keep their size across temperatures (Hinton et al., 2015); at the
    paper's ``T = 1`` this is exactly KegNet's loss.
    """
    log_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True) * temperature**2


def read_generator_checkpoint(path: str) -> dict[str, Any]:
    """The hyper-parameters and state dict of a :class:`GeneratorModule` checkpoint (``weights_only``)."""
    from kegnet_pl.loading import read_checkpoint

    checkpoint = read_checkpoint(path)
    hparams = checkpoint.get("hyper_parameters") or {}
    state = checkpoint.get("state_dict")
    if (
        not isinstance(state, dict)
        or not hparams.get("teacher_spec")
        or not all(isinstance(hparams.get(key), int) for key in ("n_generators", "noise_dim"))
        or not any(k.startswith("generators.") for k in state)
    ):
        raise CheckpointError(
            f"{path!r} is not a GeneratorModule checkpoint (no generators and teacher in it); give the "
            "last.ckpt of a 'kegnet fit --config .../generator.yaml' run"
        )
    return {"hparams": hparams, "state": state}


class StudentModule(CheckedLoading, LightningModule):
    """Distils the teacher into a compressed student from artificial data (KegNet), or from noise (baselines).

    ``forward`` is the student's. The checkpoint holds teacher, generators and student (with its exact ranks), so
    ``StudentModule.load_from_checkpoint(path)`` needs no other file.
    """

    def __init__(
        self,
        generators: str | None = None,
        teacher: str | None = None,
        student: str | dict[str, Any] = "lenet5-s1",
        source: Source = "kegnet",
        label_distribution: Literal["onehot", "uniform"] = "onehot",
        pool_size: int | None = 6400,
        temperature: float = 1.0,
        lr: float = 1e-4,
        optimizer: Literal["adam", "sgd"] = "adam",
        weight_decay: float = 0.0,
        seed: int = 0,
        use_generators: list[int] | None = None,
        teacher_spec: dict[str, Any] | None = None,
        generator_spec: dict[str, Any] | None = None,
        student_ranks: dict[str, list[int]] | None = None,
    ) -> None:
        """
        Args:
            generators: a GeneratorModule checkpoint (it holds the teacher too).
            teacher: the classifier to compress, if not the generators' own teacher (a kegnet_pl checkpoint); its
                class count and input shape must be those of the generators.
            student: which layers to compress: a preset (``lenet5-s1``..``s3``, ``resnet14-s1``..``s3``,
                ``mlp-r5``, ``mlp-r10``) or a spec mapping layer names/globs to rank rules.
            source: ``kegnet`` (generator samples), or the baselines ``uniform`` U(-1,1) and ``normal`` N(0,1).
            label_distribution: labels fed to the generators: ``onehot`` (the authors' code) or ``uniform``
                unnormalised U(0,1) soft labels (the paper).
            pool_size: samples per generator in a fixed pool drawn once (the authors: 6,400); ``null`` draws fresh
                samples every step. The baselines draw the same total count.
            temperature: softmax temperature of the distillation loss (the paper: 1).
            lr: learning rate (the paper: 1e-5 for MNIST, 1e-4 otherwise).
            optimizer: ``adam`` (the paper) or ``sgd`` (momentum 0.9).
            weight_decay: weight decay of the optimiser.
            seed: seed of the pool, of the batch order and of the held-out samples.
            use_generators: which of the checkpoint's generators to sample from (default: all).
            teacher_spec: filled in from the generator checkpoint; leave unset.
            generator_spec: filled in from the generator checkpoint; leave unset.
            student_ranks: filled in with the exact ranks chosen for the student; leave unset.
        """
        super().__init__()
        if source not in ("kegnet", "uniform", "normal"):
            raise ConfigError(f"StudentModule: source must be 'kegnet', 'uniform' or 'normal', got {source!r}")
        if optimizer not in ("adam", "sgd"):
            raise ConfigError(f"StudentModule: optimizer must be 'adam' or 'sgd', got {optimizer!r}")
        for name, value in (("lr", lr), ("temperature", temperature)):
            if value <= 0:
                raise ConfigError(f"StudentModule: {name} must be positive, got {value}")
        if pool_size is not None and pool_size <= 0:
            raise ConfigError(f"StudentModule: pool_size must be positive or null (fresh samples), got {pool_size}")
        if weight_decay < 0:
            raise ConfigError(f"StudentModule: weight_decay must be >= 0, got {weight_decay}")
        self.save_hyperparameters()

        loaded = read_generator_checkpoint(generators) if generators is not None else None
        if loaded is not None:
            teacher_spec = dict(loaded["hparams"]["teacher_spec"])
            generator_spec = {key: loaded["hparams"][key] for key in ("n_generators", "noise_dim")}
        if teacher_spec is None or generator_spec is None:
            raise ConfigError(
                "StudentModule needs generators: set model.init_args.generators to a generator checkpoint"
            )
        self.hparams["teacher_spec"], self.hparams["generator_spec"] = teacher_spec, generator_spec

        teacher = build_classifier_from_spec(teacher_spec)
        generator_nets = nn.ModuleList(
            build_generator(teacher_spec["input_shape"], teacher_spec["num_classes"], generator_spec["noise_dim"])
            for _ in range(generator_spec["n_generators"])
        )
        if loaded is not None:
            state = loaded["state"]
            teacher.load_state_dict(
                {k[len("teacher.net.") :]: v for k, v in state.items() if k.startswith("teacher.net.")}
            )
            generator_nets.load_state_dict(
                {k[len("generators.") :]: v for k, v in state.items() if k.startswith("generators.")}
            )
        if self.hparams.teacher is not None and loaded is not None:  # another teacher than the generators' own
            other, spec = load_classifier_and_spec(self.hparams.teacher)
            own = teacher_spec
            if spec["num_classes"] != own["num_classes"] or tuple(spec["input_shape"]) != tuple(own["input_shape"]):
                raise ConfigError(
                    f"the generators in {generators!r} were trained for a teacher with {own['num_classes']} classes "
                    f"and input shape {tuple(own['input_shape'])}, but the teacher {self.hparams.teacher!r} has "
                    f"{spec['num_classes']} classes and input shape {tuple(spec['input_shape'])}; use generators "
                    "trained against this teacher"
                )
            teacher, teacher_spec = other, spec
            self.hparams["teacher_spec"] = spec
        self.teacher = Frozen(teacher)
        self.generators = nn.ModuleList(Frozen(net) for net in generator_nets)

        chosen = list(range(len(self.generators))) if use_generators is None else list(use_generators)
        if not chosen or any(not 0 <= g < len(self.generators) for g in chosen):
            raise ConfigError(
                f"StudentModule: use_generators={use_generators} must name generators 0..{len(self.generators) - 1}"
            )
        self.use_generators = chosen

        base = build_classifier_from_spec(teacher_spec)
        base.load_state_dict(teacher.state_dict())
        self.student, report = compress_with_report(base, student_ranks or student, inplace=True)
        self.student.requires_grad_(True)
        self.hparams["student_ranks"] = report.ranks()

        self.num_classes = teacher_spec["num_classes"]
        self.input_shape = tuple(teacher_spec["input_shape"])
        self.noise_dim = generator_spec["noise_dim"]
        self.noise_streams = 1
        self.label_distribution = label_distribution
        self.metrics = nn.ModuleDict(
            {
                name: MulticlassAccuracy(self.num_classes, average="micro")
                for name in (
                    "val_agreement",
                    "test_agreement",
                    "val_acc",
                    "test_acc",
                    "test_teacher_acc",
                    "test_real_agreement",
                )
            }
        )
        self._pool: tuple[torch.Tensor, torch.Tensor] | None = None
        self._order: tuple[int, torch.Tensor] | None = None

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        check_data_fits("StudentModule", self.input_shape, self.num_classes, getattr(datamodule, "eval_data", None))

    # --- the student -------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student(x)

    @property
    def compression_ratio(self) -> float:
        return parameter_count(self.teacher) / parameter_count(self.student)

    # --- artificial data ---------------------------------------------------------------------------
    @torch.no_grad()
    def synthesize(self, labels: torch.Tensor, noise: torch.Tensor, generator: torch.Generator | None = None):
        """Inputs for a batch: generator samples (sample i from generator ``use_generators[i % n]``) or noise."""
        n = labels.shape[0]
        if self.hparams.source != "kegnet":
            return sample_inputs(self.hparams.source, n, self.input_shape, generator).to(self.device)
        labels, noise = labels.to(self.device), noise.to(self.device)
        x = torch.empty(n, *self.input_shape, device=self.device)
        which = torch.arange(n, device=self.device) % len(self.use_generators)
        for slot, g in enumerate(self.use_generators):
            mask = which == slot
            if mask.any():
                x[mask] = self.generators[g](labels[mask], noise[mask]).float()
        return x

    @torch.no_grad()
    def _build_pool(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``pool_size`` samples per generator and the teacher's logits for them, drawn once for this rank."""
        total = self.hparams.pool_size * len(self.use_generators)
        inputs, logits = [], []
        for chunk, start in enumerate(range(0, total, 1024)):
            n = min(1024, total - start)
            key = stream_seed(self.hparams.seed, -2, self.global_rank, chunk)
            draws = sample_batch(
                self.hparams.seed,
                -2,
                self.global_rank,
                chunk,
                1,
                n,
                self.num_classes,
                self.noise_dim,
                self.label_distribution,
            )
            x = self.synthesize(draws["labels"][0], draws["noise"][0], torch.Generator().manual_seed(key))
            inputs.append(x)
            logits.append(self.teacher(x).float())
        return torch.cat(inputs), torch.cat(logits)

    def _pool_batch(self, batch_size: int, batch_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._pool is None:
            self._pool = self._build_pool()
        inputs, logits = self._pool
        epoch = self.current_epoch
        if self._order is None or self._order[0] != epoch:  # a fresh order of the pool every epoch
            generator = torch.Generator().manual_seed(stream_seed(self.hparams.seed, epoch, self.global_rank, -3))
            self._order = (epoch, torch.randperm(len(inputs), generator=generator).to(inputs.device))
        order = self._order[1]
        start = (batch_idx * batch_size) % len(order)
        index = order[start : start + batch_size]
        if len(index) < batch_size:
            index = torch.cat([index, order[: batch_size - len(index)]])
        return inputs[index], logits[index]

    @staticmethod
    def _batch_generator(batch: dict[str, torch.Tensor]) -> torch.Generator:
        """The random generator of a noise batch (it draws the inputs of the noise baselines)."""
        return torch.Generator().manual_seed(int(batch["seed"]))

    def _training_batch(self, batch: dict[str, torch.Tensor], batch_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels, noise = batch["labels"][0], batch["noise"][0]
        if self.hparams.pool_size is not None:
            return self._pool_batch(labels.shape[0], batch_idx)
        x = self.synthesize(labels, noise, self._batch_generator(batch))
        with torch.no_grad():
            return x, self.teacher(x).float()

    # --- steps -------------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, teacher_logits = self._training_batch(batch, batch_idx)
        loss = distillation_loss(self(x), teacher_logits, self.hparams.temperature)
        check_finite("student stage", self.global_step, self.current_epoch, {"loss_kd": loss})
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(x))
        return loss

    def _eval_step(self, batch: Any, stage: str) -> None:
        if isinstance(batch, dict):  # held-out artificial samples: agreement with the teacher, no real data
            x = self.synthesize(batch["labels"][0], batch["noise"][0], self._batch_generator(batch))
            teacher_logits, student_logits = self.teacher(x), self(x)
            agreement = self.metrics[f"{stage}_agreement"]
            agreement(student_logits, teacher_logits.argmax(-1))
            self.log(f"{stage}/agreement", agreement, prog_bar=True, add_dataloader_idx=False, batch_size=len(x))
            loss = distillation_loss(student_logits, teacher_logits, self.hparams.temperature)
            self.log(f"{stage}/kl", loss, add_dataloader_idx=False, sync_dist=True, batch_size=len(x))
            return
        x, y = batch  # real data, for evaluation only
        student_logits = self(x)
        accuracy = self.metrics[f"{stage}_acc"]
        accuracy(student_logits, y)
        self.log(f"{stage}/acc", accuracy, prog_bar=True, add_dataloader_idx=False, batch_size=len(x))
        if stage == "test":  # and how closely the student follows the teacher on real data (fidelity)
            teacher_logits = self.teacher(x)
            self.metrics["test_teacher_acc"](teacher_logits, y)
            self.log("test/teacher_acc", self.metrics["test_teacher_acc"], add_dataloader_idx=False, batch_size=len(x))
            self.metrics["test_real_agreement"](student_logits, teacher_logits.argmax(-1))
            self.log(
                "test/real_agreement", self.metrics["test_real_agreement"], add_dataloader_idx=False, batch_size=len(x)
            )
            kl = distillation_loss(student_logits, teacher_logits, 1.0)
            self.log("test/real_kl", kl, add_dataloader_idx=False, sync_dist=True, batch_size=len(x))

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, "test")

    def summary(self) -> dict[str, float]:
        """Parameter counts of student and teacher and the compression ratio."""
        return {
            "params": parameter_count(self.student),
            "teacher_params": parameter_count(self.teacher),
            "compression_ratio": self.compression_ratio,
        }

    def on_fit_start(self) -> None:
        if self.logger is not None and self.trainer.is_global_zero:
            self.logger.log_metrics({f"student/{key}": value for key, value in self.summary().items()}, step=0)

    def on_test_start(self) -> None:
        self.on_fit_start()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = [p for p in self.student.parameters() if p.requires_grad]
        frozen = {id(p) for p in (*self.teacher.parameters(), *self.generators.parameters())}
        assert not frozen & {id(p) for p in params}, "a teacher or generator parameter would be optimised"
        if self.hparams.optimizer == "sgd":
            return torch.optim.SGD(params, lr=self.hparams.lr, momentum=0.9, weight_decay=self.hparams.weight_decay)
        return torch.optim.Adam(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Self-contained checkpoints: rebuilt from the specs and exact ranks, without the generator file."""
        hparams = checkpoint.get("hyper_parameters")
        if hparams is not None:
            hparams["generators"] = None
            hparams["teacher"] = None
            for key in ("teacher_spec", "generator_spec", "student_ranks"):
                hparams[key] = copy.deepcopy(self.hparams[key])
