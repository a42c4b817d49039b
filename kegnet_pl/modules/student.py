"""StudentModule: distillation of the teacher into a Tucker-compressed student (KegNet step 2).

The student is a copy of the teacher whose layers a compression spec replaces by Tucker-2 factorisations
(initialised by the decomposition). It learns to match the teacher's softmax on inputs made by a sample source
(:mod:`kegnet_pl.data.sources`), given by ``class_path`` in YAML:

* ``KegnetGenerators``: samples of the trained generators (the paper's method);
* ``UniformNoise`` / ``NormalNoise``: U(-1, 1) or N(0, 1) inputs (the paper's baselines);
* ``Strokes``: random pen strokes on blank paper (a drawn prior for handwriting-like inputs);
* ``Mixture``: fixed shares of every batch from several of these;
* ``Pool``: a fixed set of samples of any of these, drawn once (the paper's protocol), or any source of your own.

``adversary_fraction`` gives a share of every batch to an adversary trained alongside the student: DFAD's image
generator (:class:`~kegnet_pl.data.sources.DFADGenerator`, narrow by default) that learns to make the inputs on which
student and teacher disagree most (the L1 gap of their logits), one step every ``adversary_every`` student steps,
while the student learns to agree with the teacher on them. Data-free like the rest: it sees only the teacher, the
student and noise.

The strings ``kegnet``, ``uniform`` and ``normal`` are shorthands for the paper's sources built from
``generators``, ``label_distribution``, ``use_generators`` and ``pool_size`` (what ``kegnet-pipeline`` and
``--model.source uniform`` use). Every batch's inputs are drawn with a generator seeded by the noise batch's own
seed (a function of the data seed, the epoch, the rank and the batch index), so resumed runs see the data an
uninterrupted run would and every DDP rank draws its own.

Validation needs no real data: the student's agreement with the teacher on fixed held-out samples of the source
(``val/agreement``, never from a pool) is the default figure for choosing checkpoints. When the data module also
carries real data (``NoiseDataModule(eval_data=...)``), the real accuracy is logged as ``val/acc`` and
``test/acc``, and the test also logs how closely the student follows the teacher on that real data:
``test/real_agreement`` (same top class) and ``test/real_kl`` (the KL divergence of the loss, at temperature 1).
"""

from __future__ import annotations

import inspect
import sys
import time
from typing import Any, Literal, get_args

import torch
from pytorch_lightning.strategies import DDPStrategy
from torch import nn
from torch.func import functional_call
from torchmetrics.classification import MulticlassAccuracy

from kegnet_pl.compression import compress_with_report, parameter_count
from kegnet_pl.data.noise import batch_generator
from kegnet_pl.data.sources import (
    DFADGenerator,
    KegnetGenerators,
    Mixture,
    NormalNoise,
    Pool,
    SampleSource,
    Strokes,
    UniformNoise,
    build_source,
    read_generator_checkpoint,
    strip_prefix,
)
from kegnet_pl.errors import ConfigError
from kegnet_pl.losses import dfad_discrepancy, distillation_loss
from kegnet_pl.modules.base import TeacherStage, load_teacher
from kegnet_pl.modules.checks import check_data_fits, check_finite, check_fit_setup, with_lr_schedule
from kegnet_pl.nets import build_classifier, build_classifier_from_spec, classifier_names

Shorthand = Literal["kegnet", "uniform", "normal", "strokes", "no-generators"]
SHORTHANDS: tuple[str, ...] = get_args(Shorthand)


class StudentModule(TeacherStage):
    """Distils the teacher into a compressed student from the inputs of a sample source.

    ``forward`` is the student's. The checkpoint holds teacher, source (with any generators) and student (with its
    exact ranks), so ``StudentModule.load_from_checkpoint(path)`` needs no other file.
    """

    file_arguments = ("teacher", "generators")
    spec_arguments = ("teacher_spec", "generator_spec", "student_ranks", "source_spec")

    def __init__(
        self,
        generators: str | None = None,
        teacher: str | None = None,
        teacher_arch: str | None = None,
        input_shape: list[int] | None = None,
        num_classes: int | None = None,
        student: str | dict[str, Any] = "lenet5-s1",
        source: SampleSource | Shorthand = "kegnet",
        label_distribution: Literal["onehot", "uniform"] = "onehot",
        pool_size: int | None = 6400,
        temperature: float = 1.0,
        loss: Literal["kl", "l1"] = "kl",
        lr: float = 1e-4,
        optimizer: Literal["adam", "sgd"] = "adam",
        weight_decay: float = 0.0,
        lr_schedule: Literal["constant", "cosine"] = "constant",
        seed: int = 0,
        use_generators: list[int] | None = None,
        noise_fraction: float = 0.0,
        strokes: dict[str, Any] | None = None,
        strokes_fraction: float = 0.0,
        adversary_fraction: float = 0.0,
        adversary_width: int = 16,
        adversary_every: int = 5,
        adversary_lr: float = 1e-3,
        teacher_spec: dict[str, Any] | None = None,
        generator_spec: dict[str, Any] | None = None,
        student_ranks: dict[str, list[int]] | None = None,
        source_spec: dict[str, Any] | None = None,
    ) -> None:
        """
        Args:
            generators: a GeneratorModule checkpoint: the teacher (unless ``teacher`` is given) and, for the
                ``kegnet`` shorthand, the generators.
            teacher: the classifier to compress, if not the generators' own (a kegnet_pl checkpoint); its class
                count and input shape must be those of the generators.
            teacher_arch: the teacher's architecture, for a ``teacher`` file that does not record it (KegNet files,
                state dicts).
            input_shape: the teacher's input shape, for a ``teacher`` file that does not record it.
            num_classes: the teacher's class count, for a ``teacher`` file that does not record it.
            student: which layers of the teacher to compress: a preset (``lenet5-s1``..``s3``,
                ``resnet14-s1``..``s3``, ``mlp-r5``, ``mlp-r10``) or a spec mapping layer names/globs to rank rules;
                or a registered classifier trained from scratch (``lenet5-half``, the DAFL/DFAD student).
            source: what makes the student's inputs: a SampleSource by ``class_path`` (``KegnetGenerators``,
                ``UniformNoise``, ``NormalNoise``, ``Pool``, your own), or the shorthand ``kegnet`` (the generators
                of ``generators``), ``uniform`` (U(-1,1)), ``normal`` (N(0,1)), ``strokes`` (random pen strokes,
                :class:`~kegnet_pl.data.sources.Strokes` with the ``strokes`` settings) or ``no-generators``: the
                ``kegnet`` shorthand's batches with the generators' share given to U(-1,1) noise (its noise and
                strokes shares kept), the control that shows what the generators add.
            label_distribution: shorthand ``kegnet`` only: labels fed to the generators, ``onehot`` (the authors'
                code) or ``uniform`` unnormalised U(0,1) soft labels (the paper).
            pool_size: shorthands only: samples per generator in a fixed ``Pool`` drawn once (the authors: 6,400);
                ``null`` draws fresh samples every step. The baselines draw the same total count.
            temperature: softmax temperature of the distillation loss (the paper: 1).
            loss: the student's training loss: ``kl``, the KL divergence from the teacher's softmax at
                ``temperature`` (the paper), or ``l1``, DFAD's mean absolute gap of the logits, the gap the adversary
                ascends. For a student trained from scratch beside an adversary, ``l1`` with ``optimizer: sgd``
                (DFAD's recipe) is far better (README, "Students trained from scratch").
            lr: learning rate (the paper: 1e-5 for MNIST, 1e-4 otherwise).
            optimizer: ``adam`` (the paper) or ``sgd`` (momentum 0.9).
            weight_decay: weight decay of the optimiser.
            lr_schedule: ``constant`` (the paper) or ``cosine``: the learning rate decays to 0 over the run, so the
                last epoch is the one to keep, chosen without data.
            seed: seed of a Pool that names none and of a student trained from scratch (held-out and training
                batches are keyed by the data's seed).
            use_generators: shorthand ``kegnet`` only: which of the checkpoint's generators to sample from (default:
                all).
            noise_fraction: shorthands ``kegnet`` and ``no-generators`` only: this share of every batch is U(-1, 1)
                noise instead of generator samples (a :class:`~kegnet_pl.data.sources.Mixture`); 0 is the paper's
                KegNet.
            strokes: the settings of :class:`~kegnet_pl.data.sources.Strokes` (``background``, ``ink``, ...) for the
                ``strokes`` shorthand and ``strokes_fraction``; give the teacher's normalised values of blank paper
                and full ink (MNIST: ``{background: -0.4242, ink: 2.8215}``).
            strokes_fraction: shorthands ``kegnet`` and ``no-generators`` only: this share of every batch is pen
                strokes (``strokes``) instead of generator samples, besides ``noise_fraction``; 0 is the paper's KegNet.
            adversary_fraction: shorthands ``kegnet`` and ``no-generators`` only: this share of every batch comes from
                an adversary, DFAD's generator trained against the student (see the module docstring), besides
                ``noise_fraction`` and ``strokes_fraction`` (a ``Mixture`` source of your own: its last source is
                trained so if it is a ``DFADGenerator``); needs ``pool_size: null``. 0: no adversary. A DDP run
                with one needs the strategy that finds unused parameters (``ddp_find_unused_parameters_true``): the
                adversary trains on one step in ``adversary_every``.
            adversary_width: channels of the adversary's last block (DFAD: 64; 16 costs a quarter of the time).
            adversary_every: student steps per adversary step (DFAD: 5).
            adversary_lr: the learning rate of the adversary's own Adam (DFAD's generator optimiser: 1e-3), constant,
                without weight decay, whatever the student's optimiser.
            teacher_spec: filled in with the teacher's architecture; leave unset.
            generator_spec: read from checkpoints of earlier versions only; leave unset.
            student_ranks: filled in with the exact ranks chosen for the student; leave unset.
            source_spec: filled in with what rebuilds the source without its files; leave unset.
        """
        arguments = {key: value for key, value in locals().items() if key not in ("self", "source", "__class__")}
        super().__init__()
        if optimizer not in ("adam", "sgd"):
            raise ConfigError(f"StudentModule: optimizer must be 'adam' or 'sgd', got {optimizer!r}")
        if loss not in ("kl", "l1"):
            raise ConfigError(f"StudentModule: loss must be 'kl' (the paper) or 'l1' (DFAD's), got {loss!r}")
        for name, value in (("lr", lr), ("temperature", temperature)):
            if value <= 0:
                raise ConfigError(f"StudentModule: {name} must be positive, got {value}")
        if pool_size is not None and pool_size <= 0:
            raise ConfigError(f"StudentModule: pool_size must be positive or null (fresh samples), got {pool_size}")
        if weight_decay < 0:
            raise ConfigError(f"StudentModule: weight_decay must be >= 0, got {weight_decay}")
        if not 0.0 <= noise_fraction < 1.0:
            raise ConfigError(f"StudentModule: noise_fraction must be in [0, 1), got {noise_fraction}")
        if not 0.0 <= strokes_fraction < 1.0 or noise_fraction + strokes_fraction >= 1.0:
            raise ConfigError(
                f"StudentModule: strokes_fraction must be in [0, 1) and leave generator samples beside noise_fraction "
                f"(their sum below 1), got strokes_fraction={strokes_fraction}, noise_fraction={noise_fraction}"
            )
        if not 0.0 <= adversary_fraction < 1.0 or noise_fraction + strokes_fraction + adversary_fraction >= 1.0:
            raise ConfigError(
                f"StudentModule: adversary_fraction must be in [0, 1) and leave generator samples beside "
                f"noise_fraction and strokes_fraction (the three below 1 together), got adversary_fraction="
                f"{adversary_fraction}, noise_fraction={noise_fraction}, strokes_fraction={strokes_fraction}"
            )
        if adversary_width <= 0 or adversary_every <= 0 or adversary_lr <= 0:
            raise ConfigError(
                f"StudentModule: adversary_width, adversary_every and adversary_lr must be positive, got "
                f"{adversary_width}, {adversary_every} and {adversary_lr}"
            )
        if adversary_fraction > 0 and pool_size is not None:
            raise ConfigError(
                f"StudentModule: the adversary's samples change as it trains, so they cannot come from a fixed pool: "
                f"set pool_size: null (fresh samples) with adversary_fraction={adversary_fraction}"
            )
        if lr_schedule not in ("constant", "cosine"):
            raise ConfigError(f"StudentModule: lr_schedule must be 'constant' or 'cosine', got {lr_schedule!r}")
        self.save_hyperparameters(ignore=["source"])
        for key, value in arguments.items():  # a method built on this module may not expose every argument
            self.hparams.setdefault(key, value)

        loaded = read_generator_checkpoint(generators) if generators is not None else None
        if source_spec is not None:  # rebuilt from a checkpoint of this module
            self.source = build_source(source_spec)
        elif isinstance(source, SampleSource):
            self.source = source
        else:
            self.source = self._shorthand_source(source, generators, loaded, teacher_spec, generator_spec)

        teacher_net, teacher_spec = self._teacher(teacher, loaded, teacher_spec, teacher_arch, input_shape, num_classes)
        self.set_teacher(teacher_net, teacher_spec)
        self.source.bind(self.input_shape, self.num_classes, seed)
        self.hparams["source_spec"] = self.source.spec()
        self.hparams["generator_spec"] = None
        self.adversary: DFADGenerator | None = None  # the last of a mixture's sources (the shorthands put it there)
        last = self.source.sources[-1] if isinstance(self.source, Mixture) else None
        if adversary_fraction > 0 and isinstance(last, DFADGenerator):
            self.adversary = last
        self.adversary_optimizer: torch.optim.Optimizer | None = None  # its own Adam (configure_optimizers)
        self._adversary_state: dict[str, Any] | None = None  # a resumed run's state for it (on_load_checkpoint)

        if isinstance(student, str) and student in classifier_names():  # an architecture trained from scratch
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self.student = build_classifier(student, self.input_shape, self.num_classes)
            self.hparams["student_ranks"] = None
        else:  # a Tucker-compressed copy of the teacher
            base = build_classifier_from_spec(teacher_spec)
            base.load_state_dict(teacher_net.state_dict())
            self.student, report = compress_with_report(base, student_ranks or student, inplace=True)
            self.hparams["student_ranks"] = report.ranks()
        self.student.requires_grad_(True)

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

    @classmethod
    def init_args_from_checkpoint(cls, hparams: dict[str, Any]) -> dict[str, Any]:
        """As the base, and the config's ``source`` replaced by a shorthand that reads no file: the checkpoint's
        ``source_spec`` rebuilds the source."""
        args = super().init_args_from_checkpoint(hparams)
        if args.get("source_spec") is not None and "source" in inspect.signature(cls.__init__).parameters:
            args["source"] = "kegnet"
        return args

    def _shorthand_source(
        self,
        name: str,
        generators: str | None,
        loaded: dict[str, Any] | None,
        teacher_spec: dict[str, Any] | None,
        generator_spec: dict[str, Any] | None,
    ) -> SampleSource:
        """The source a shorthand names, in a ``Pool`` of ``pool_size`` samples per generator unless that is null."""
        hp = self.hparams
        if name not in SHORTHANDS:
            names = ", ".join(repr(shorthand) for shorthand in SHORTHANDS[:-1])
            raise ConfigError(
                f"StudentModule: source must be a SampleSource (class_path) or {names} or {SHORTHANDS[-1]!r}, "
                f"got {name!r}"
            )
        if loaded is not None:
            n_generators = int(loaded["hparams"]["n_generators"])
        elif generator_spec is not None:  # a checkpoint of an earlier version
            n_generators = int(generator_spec["n_generators"])
        else:
            n_generators = None
        if name == "kegnet":
            if loaded is None and (generator_spec is None or teacher_spec is None):
                raise ConfigError(
                    "StudentModule needs generators: give generators= a generator checkpoint "
                    "(model.init_args.generators in a config)"
                )
            spec = None
            if loaded is None:
                spec = {
                    **generator_spec,
                    "input_shape": list(teacher_spec["input_shape"]),
                    "num_classes": teacher_spec["num_classes"],
                }
            generated = KegnetGenerators(generators, hp.label_distribution, hp.use_generators, spec)
            fraction = float(hp.get("noise_fraction") or 0.0)
            inner = self._mixed(generated, [(UniformNoise(), fraction)] if fraction > 0 else [])
        elif name == "no-generators":  # the kegnet mixture, U(-1, 1) noise in the generators' place
            inner = self._mixed(UniformNoise(), [])
        elif name == "strokes":
            inner = self._strokes()
        else:
            inner = UniformNoise() if name == "uniform" else NormalNoise()
        if hp.pool_size is None:
            return inner
        chosen = len(hp.use_generators) if hp.use_generators else (n_generators or 1)
        return Pool(inner, size=hp.pool_size * chosen, seed=hp.seed)

    def _mixed(self, first: SampleSource, others: list[tuple[SampleSource, float]]) -> SampleSource:
        """``first`` and the sources of ``others`` at their shares, then pen strokes at ``strokes_fraction`` and the
        adversary last at ``adversary_fraction``; ``first`` takes the share they leave (kept positive by the checks
        in ``__init__``). ``first`` alone when nothing else has a share."""
        hp = self.hparams
        parts = list(others)
        drawn = float(hp.get("strokes_fraction") or 0.0)
        if drawn > 0:
            parts.append((self._strokes(), drawn))
        adversary = float(hp.get("adversary_fraction") or 0.0)
        if adversary > 0:
            parts.append((DFADGenerator(width=int(hp.get("adversary_width") or 16)), adversary))
        if not parts:
            return first
        share = 1.0
        for _, taken in parts:
            share -= taken
        return Mixture([first, *(part for part, _ in parts)], [share, *(taken for _, taken in parts)])

    def _strokes(self) -> Strokes:
        settings = self.hparams.get("strokes")
        if settings is None:
            raise ConfigError(
                "StudentModule: the strokes source needs the teacher's input values of blank paper and full ink: "
                "give strokes= (model.init_args.strokes in a config), e.g. {background: -0.4242, ink: 2.8215} for "
                "MNIST's normalisation"
            )
        if not isinstance(settings, dict):
            raise ConfigError(f"StudentModule: strokes must be a mapping of Strokes settings, got {settings!r}")
        try:
            return Strokes(**settings)
        except TypeError as err:
            raise ConfigError(f"StudentModule: strokes has a setting Strokes does not take: {err}") from None

    def _teacher(
        self,
        teacher: str | None,
        loaded: dict[str, Any] | None,
        teacher_spec: dict[str, Any] | None,
        teacher_arch: str | None = None,
        input_shape: list[int] | None = None,
        num_classes: int | None = None,
    ) -> tuple[nn.Module, dict[str, Any]]:
        """The teacher: its own file (described by ``teacher_arch``, ``input_shape``, ``num_classes`` where it does
        not record them), else the generator checkpoint's, else the source's, else rebuilt from ``teacher_spec``
        (its weights then come from this module's checkpoint)."""
        if teacher is not None:
            return load_teacher(teacher, teacher_arch, input_shape, num_classes, stage=type(self).__name__)
        owner: dict[str, Any] | None = None
        if loaded is not None:
            owner = {"spec": loaded["hparams"]["teacher_spec"], "state": strip_prefix(loaded["state"], "teacher.net.")}
        else:
            for module in self.source.modules():
                if isinstance(module, KegnetGenerators) and module.teacher_spec is not None:
                    owner = {"spec": module.teacher_spec, "state": module.teacher_state}
                    break
        if owner is not None:
            net = build_classifier_from_spec(owner["spec"])
            net.load_state_dict(owner["state"])
            return net, dict(owner["spec"])
        if teacher_spec:
            return build_classifier_from_spec(teacher_spec), dict(teacher_spec)
        raise ConfigError(
            "StudentModule needs a teacher: give generators= a generator checkpoint (it holds its teacher) or "
            "teacher= the teacher's weights file (model.init_args.generators or model.init_args.teacher in a config)"
        )

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        check_fit_setup(self, stage)  # tests and validation may read a real DataModule directly
        check_data_fits("StudentModule", self.input_shape, self.num_classes, getattr(datamodule, "eval_data", None))
        self.source.set_rank(self.global_rank)
        strategy = self.trainer.strategy if self._trainer is not None else None
        # Lightning keeps DDP's options in a private dict; where a release names it otherwise, nothing is refused
        # here (torch's own error about parameters that got no gradient then stops a plain DDP run in its first steps)
        # rather than refusing the strategies that work
        ddp_options = getattr(strategy, "_ddp_kwargs", None) if isinstance(strategy, DDPStrategy) else None
        if (
            stage == "fit"
            and self.adversary is not None
            and isinstance(ddp_options, dict)
            and not ddp_options.get("find_unused_parameters", False)
        ):
            raise ConfigError(
                "StudentModule: the adversary (adversary_fraction > 0) trains on one step in adversary_every, which "
                "plain DDP cannot sync: use --trainer.strategy ddp_find_unused_parameters_true (or "
                "ddp_spawn_find_unused_parameters_true)"
            )

    # --- the student -------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student(x)

    @property
    def compression_ratio(self) -> float:
        return parameter_count(self.teacher) / parameter_count(self.student)

    # --- inputs ------------------------------------------------------------------------------------
    def _inputs(self, batch: dict[str, torch.Tensor], source: SampleSource) -> torch.Tensor:
        """The inputs of a noise batch: ``size`` samples of ``source`` drawn with the batch's own seed."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and source.trainable):
            x = source.sample(int(batch["size"]), batch_generator(batch), self.device)
        return x.to(self.dtype)  # the noise sources draw float32; a 64-true student is float64

    # --- steps -------------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if self.adversary is not None:
            return self._adversarial_step(batch)
        x = self._inputs(batch, self.source)
        with torch.no_grad():
            teacher_logits = self.teacher(x).float()
        loss = self.student_loss(self(x), teacher_logits)
        check_finite("student stage", self.global_step, self.current_epoch, {"loss_kd": loss})
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, sync_dist=True, batch_size=len(x))
        return loss

    def student_loss(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        """The loss the student minimises (``loss``): the KL divergence at ``temperature``, or the L1 logit gap."""
        if self.hparams.get("loss", "kl") == "l1":
            return dfad_discrepancy(student_logits.float(), teacher_logits.float())
        return distillation_loss(student_logits, teacher_logits, self.hparams.temperature)

    def _adversarial_step(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """A step with an adversary: every ``adversary_every`` steps, first its loss on a batch of its own (the
        student's logits computed from detached weights, so only the adversary learns from it: it ascends the L1
        gap to the teacher), then the student's loss on the mixture's batch, drawn without gradients (so only the
        student learns from it). One backward pass; the adversary's own Adam steps in
        :meth:`on_before_optimizer_step`, the student's optimiser after it."""
        hp, n = self.hparams, int(batch["size"])
        draws = batch_generator(batch)
        terms: dict[str, torch.Tensor] = {}
        if self.global_step % hp.adversary_every == 0:
            x = self.adversary.sample(self.source.counts(n)[-1], draws, self.device).to(self.dtype)
            fixed = {name: p.detach() for name, p in self.student.named_parameters()}
            terms["loss_adversary"] = -dfad_discrepancy(functional_call(self.student, fixed, (x,)), self.teacher(x))
        with torch.no_grad():
            x = self.source.sample(n, draws, self.device).to(self.dtype)
            teacher_logits = self.teacher(x).float()
        terms["loss_kd"] = self.student_loss(self(x), teacher_logits)
        check_finite("student stage", self.global_step, self.current_epoch, terms)
        loss = terms["loss_kd"]
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, sync_dist=True, batch_size=n)
        if "loss_adversary" in terms:
            gap = -terms["loss_adversary"].detach()
            self.log("train/adversary_gap", gap, on_step=True, on_epoch=True, sync_dist=True, batch_size=n)
        return sum(terms.values())

    def _eval_step(self, batch: Any, stage: str) -> None:
        if isinstance(batch, dict):  # held-out artificial samples: agreement with the teacher, no real data
            x = self._inputs(batch, self.source.held_out())
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
            **super().summary(),
            "params": parameter_count(self.student),
            "compression_ratio": self.compression_ratio,
        }

    def on_fit_start(self) -> None:
        if self.logger is not None and self.trainer.is_global_zero:
            self.logger.log_metrics({f"student/{key}": value for key, value in self.summary().items()}, step=0)

    def on_test_start(self) -> None:
        self.on_fit_start()

    def on_train_start(self) -> None:
        """Draw the source's fixed pools now, saying what and how long (rank 0): the first step would otherwise
        wait for them in silence (5 x 6,400 generator samples: 52 s on 2 busy CPU cores)."""
        hp, loss = self.hparams, self.hparams.get("loss", "kl")
        if self.adversary is not None and hp.get("student_ranks") is None and (loss, hp.optimizer) != ("l1", "sgd"):
            self._say(
                f"StudentModule: {hp.student} is trained from scratch beside an adversary with loss {loss!r} and "
                f"optimizer {hp.optimizer!r}; DFAD's recipe (--model.loss l1 --model.optimizer sgd --model.lr 0.01 "
                "--model.lr_schedule constant --model.weight_decay 0.0001) trains such a student far better (README, "
                "'Students trained from scratch')"
            )
        for pool in (module for module in self.source.modules() if isinstance(module, Pool)):
            self._say(f"StudentModule: drawing a fixed pool of {pool.size:,} samples from {describe(pool.source)} ...")
            start = time.perf_counter()
            pool.fill(self.device)
            self._say(f"StudentModule: pool of {pool.size:,} samples drawn in {time.perf_counter() - start:.1f} s")

    def _say(self, message: str) -> None:
        """``message`` on rank 0's console (above any progress bar), now rather than when the buffer fills."""
        self.print(message)
        sys.stdout.flush()

    def trained_modules(self) -> list[nn.Module]:
        """The student: an adversary, if any, trains with an Adam of its own (:meth:`configure_optimizers`)."""
        return [self.student]

    def frozen_modules(self) -> list[nn.Module]:
        """The teacher, and the source unless it trains (a method's generator, with its own optimiser)."""
        return [self.teacher] if self.source.trainable else [self.teacher, self.source]

    def source_parameters(self) -> list[torch.nn.Parameter]:
        """The parameters of a trained source, for its own optimiser: never the teacher's or the student's."""
        params = list(self.source.parameters())
        others = {id(p) for module in (self.teacher, self.student) for p in module.parameters()}
        assert not others & {id(p) for p in params}, f"{type(self).__name__}: the source shares a network's parameters"
        return params

    def configure_optimizers(self) -> Any:
        """The student's optimiser (and its schedule); an adversary gets an Adam of its own (DFAD's generator
        optimiser: its learning rate, constant, no weight decay), stepped by :meth:`on_before_optimizer_step`."""
        params, hp = self.trainable_parameters(), self.hparams
        self.adversary_optimizer = None
        if self.adversary is not None:
            self.adversary_optimizer = torch.optim.Adam(self.adversary.parameters(), lr=hp.adversary_lr)
            if self._adversary_state is not None:  # resumed: its state from the checkpoint
                self.adversary_optimizer.load_state_dict(self._adversary_state)
                self._adversary_state = None
        if hp.optimizer == "sgd":
            optimizer = torch.optim.SGD(params, lr=hp.lr, momentum=0.9, weight_decay=hp.weight_decay)
        else:
            optimizer = torch.optim.Adam(params, lr=hp.lr, weight_decay=hp.weight_decay)
        return with_lr_schedule(optimizer, hp.get("lr_schedule", "constant"), self)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """The adversary's step, on a step that gave it gradients (one in ``adversary_every``), before the
        student's: through the precision plugin's gradient scaler where there is one (16-mixed), which unscales
        its gradients and skips the step if they overflowed."""
        adversary_optimizer = self.adversary_optimizer
        if adversary_optimizer is None:
            return
        if any(p.grad is not None for p in self.adversary.parameters()):
            scaler = getattr(self.trainer.precision_plugin, "scaler", None)
            if scaler is not None:
                scaler.unscale_(adversary_optimizer)
                scaler.step(adversary_optimizer)
            else:
                adversary_optimizer.step()
        adversary_optimizer.zero_grad(set_to_none=True)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Self-contained checkpoints: rebuilt from the specs and exact ranks, without the generator file; the
        adversary's optimiser state beside the student's (``adversary_optimizer``), so that a run resumes it."""
        super().on_save_checkpoint(checkpoint)
        if self.adversary_optimizer is not None:
            checkpoint["adversary_optimizer"] = self.adversary_optimizer.state_dict()
        if checkpoint.get("hyper_parameters") is not None:
            checkpoint["hyper_parameters"].pop("source", None)  # the source is rebuilt from source_spec

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Checkpoints of earlier versions held the generators at ``generators.*``: they now live in the source; and
        the adversary's optimiser state was a second parameter group of the student's optimiser: it is split off."""
        super().on_load_checkpoint(checkpoint)
        self._adversary_state = checkpoint.get("adversary_optimizer")
        if self.adversary is not None and self._adversary_state is None:
            self._adversary_state = split_adversary_group(checkpoint)
        state = checkpoint.get("state_dict") or {}
        if any(key.startswith("generators.") for key in state):
            prefix = next(
                (
                    f"{name}.generators."
                    for name, module in self.named_modules()
                    if isinstance(module, KegnetGenerators)
                ),
                None,
            )
            if prefix is not None:
                checkpoint["state_dict"] = {
                    (prefix + key[len("generators.") :] if key.startswith("generators.") else key): value
                    for key, value in state.items()
                }


def split_adversary_group(checkpoint: dict[str, Any]) -> dict[str, Any] | None:
    """The adversary's Adam state out of a checkpoint of an earlier version, where the adversary was the second
    parameter group of the student's optimiser; the student's optimiser state (and its schedule's) is cut to its
    own group in place. ``None`` where there is nothing to split or the old group was not Adam's (its state then
    starts afresh)."""
    states = checkpoint.get("optimizer_states") or []
    if len(states) != 1 or len(states[0].get("param_groups", [])) != 2:
        return None
    student_group, adversary_group = states[0]["param_groups"]
    state = states[0].get("state", {})
    states[0] = {"state": {i: state[i] for i in student_group["params"] if i in state}, "param_groups": [student_group]}
    for schedule in checkpoint.get("lr_schedulers") or []:
        for key in ("base_lrs", "_last_lr"):
            if isinstance(schedule.get(key), list):
                schedule[key] = schedule[key][:1]
        schedule.pop("lr_lambdas", None)
    if "betas" not in adversary_group:  # SGD's momentum: nothing an Adam can take over
        return None
    order = list(adversary_group["params"])
    return {
        "state": {new: state[old] for new, old in enumerate(order) if old in state},
        "param_groups": [{**adversary_group, "params": list(range(len(order)))}],
    }


def describe(source: SampleSource) -> str:
    """What a source draws from, in words: ``5 KegNet generators``, ``UniformNoise``, ``a mixture of ...``."""
    if isinstance(source, KegnetGenerators):
        n = len(source.use_generators)
        return f"{n} KegNet generator{'s' if n != 1 else ''}"
    if isinstance(source, Mixture):
        return "a mixture of " + " and ".join(describe(part) for part in source.sources)
    return type(source).__name__
