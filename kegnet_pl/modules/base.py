"""TeacherStage: the base of every stage that holds a frozen teacher (generators, students, other methods).

It owns what those stages share, so that each keeps only its own steps:

* the teacher, from its file or rebuilt from a checkpoint's ``teacher_spec`` (:func:`load_teacher`), behind the
  :class:`~kegnet_pl.nets.Frozen` wrapper (:meth:`TeacherStage.set_teacher`);
* self-contained checkpoints: the hyper-parameters that name files (``file_arguments``) are cleared and the specs
  that rebuild the networks without them (``spec_arguments``) are written, so ``load_from_checkpoint`` and
  ``--ckpt_path last`` need no other file;
* the optimiser's parameters: those of :meth:`TeacherStage.trained_modules`, checked to hold no parameter of a
  frozen network (:meth:`TeacherStage.trainable_parameters`);
* ``summary()``, the parameter counts ``kegnet-pipeline`` tabulates;
* ``noise_settings()``: what the stage's NoiseDataModule must draw (``kegnet`` links it), by default seeds only.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
from pytorch_lightning import LightningModule
from torch import nn

from kegnet_pl.compression import parameter_count
from kegnet_pl.errors import FROM_PYTHON, CheckpointError, ConfigError
from kegnet_pl.loading import CheckedLoading, SpecMissingError, load_classifier_and_spec
from kegnet_pl.modules.checks import ResumableRandomness
from kegnet_pl.nets import Frozen, build_classifier_from_spec

#: what a teacher file that does not record its architecture needs, as options of the ``kegnet`` command
TEACHER_FLAGS = {
    "arch": "--model.init_args.teacher_arch lenet5",
    "input_shape": "--model.init_args.input_shape '[1,32,32]'",
    "num_classes": "--model.init_args.num_classes 10",
}
#: the same as a stage's arguments in Python, after :data:`~kegnet_pl.errors.FROM_PYTHON` in the message
TEACHER_ARGUMENTS = {
    "arch": "teacher_arch='lenet5'",
    "input_shape": "input_shape=[1, 32, 32]",
    "num_classes": "num_classes=10",
}


# Frozen networks (teacher, trained generators) are in eval mode on purpose; the generator stage has no
# validation (its NoiseDataModule offers held-out batches only when asked to). Filtered where the modules are
# defined, so that a stage trained from Python is as quiet as one run by ``kegnet``.
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")
warnings.filterwarnings("ignore", message=r".*Total length of `list` across ranks is zero.*")
warnings.filterwarnings("ignore", message=r".*but have no `validation_step`. Skipping val loop.*")


def load_teacher(
    teacher: str | None,
    teacher_arch: str | None = None,
    input_shape: list[int] | None = None,
    num_classes: int | None = None,
    teacher_spec: dict[str, Any] | None = None,
    stage: str = "this stage",
) -> tuple[nn.Module, dict[str, Any]]:
    """The teacher and its spec: from its file, or rebuilt from a checkpoint's ``teacher_spec`` (its weights then
    come from the checkpoint's state dict)."""
    if teacher is not None:
        try:
            return load_classifier_and_spec(
                teacher, arch=teacher_arch, input_shape=input_shape, num_classes=num_classes
            )
        except SpecMissingError as err:  # a KegNet file or a bare state dict: the options that describe it
            flags, them = " ".join(TEACHER_FLAGS[key] for key in err.absent), "them" if len(err.absent) > 1 else "it"
            arguments = ", ".join(TEACHER_ARGUMENTS[key] for key in err.absent)
            raise CheckpointError(
                f"{err.path!r} does not say its {', '.join(err.absent)}; give {them}, for example {flags}"
                f"{FROM_PYTHON}{arguments}"
            ) from err
    if teacher_spec:
        spec = dict(teacher_spec)
        return build_classifier_from_spec(spec).eval(), spec
    raise ConfigError(
        f"{stage} needs a teacher: give teacher= the teacher's weights file (model.init_args.teacher in a config)"
    )


NOISE_SETTINGS = ("streams", "num_classes", "noise_dim", "label_distribution")


def noise_setting(model: Any, key: str) -> Any:
    """What ``kegnet`` links to a NoiseDataModule's argument ``key``: the model's ``noise_settings()[key]``, or
    nothing for a stage whose batches are only seeds (a module-level function, so that ddp_spawn can pickle the
    parser that holds the link)."""
    settings = model.noise_settings() if isinstance(model, TeacherStage) else {}
    if key not in settings:
        return "onehot" if key == "label_distribution" else None
    return settings[key]


class TeacherStage(ResumableRandomness, CheckedLoading, LightningModule):
    """A LightningModule around a frozen teacher (see the module docstring). Subclasses call :meth:`set_teacher`
    in ``__init__`` and say which modules train (:meth:`trained_modules`) and which are frozen besides the
    teacher (:meth:`frozen_modules`)."""

    #: hyper-parameters naming files that a checkpoint replaces by specs (set to ``None`` in the checkpoint)
    file_arguments: tuple[str, ...] = ("teacher",)
    #: hyper-parameters that rebuild the networks without those files (written into the checkpoint)
    spec_arguments: tuple[str, ...] = ("teacher_spec",)

    teacher: Frozen
    num_classes: int
    input_shape: tuple[int, ...]

    def set_teacher(self, net: nn.Module, spec: dict[str, Any], batchnorm_train: bool = False) -> None:
        """Hold ``net`` frozen as the teacher and record its spec (``teacher_spec``), class count and input shape."""
        self.teacher = Frozen(net, batchnorm_train=batchnorm_train)
        self.hparams["teacher_spec"] = dict(spec)
        self.num_classes = int(spec["num_classes"])
        self.input_shape = tuple(int(size) for size in spec["input_shape"])

    # --- what trains ---------------------------------------------------------------------------------
    def trained_modules(self) -> list[nn.Module]:
        """The networks the optimiser trains."""
        raise NotImplementedError

    def frozen_modules(self) -> list[nn.Module]:
        """The networks that never train: the teacher, and any a subclass adds (trained generators)."""
        return [self.teacher]

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """The parameters to optimise: those of :meth:`trained_modules` that require gradients, never a frozen one."""
        params = [p for module in self.trained_modules() for p in module.parameters() if p.requires_grad]
        frozen = {id(p) for module in self.frozen_modules() for p in module.parameters()}
        assert not frozen & {id(p) for p in params}, f"{type(self).__name__}: a frozen parameter would be optimised"
        return params

    # --- data ----------------------------------------------------------------------------------------
    def noise_settings(self) -> dict[str, Any]:
        """What the NoiseDataModule draws for this stage beyond each batch's seed (``kegnet`` links it; in Python
        ``NoiseDataModule(..., **module.noise_settings())``): nothing for a stage that makes its own inputs from
        the seed."""
        return {}

    # --- reports -------------------------------------------------------------------------------------
    def summary(self) -> dict[str, float]:
        """Parameter counts (``kegnet test`` writes them next to the test metrics)."""
        return {"teacher_params": parameter_count(self.teacher)}

    # --- checkpoints ---------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Make the checkpoint self-contained: files are forgotten, the specs that replace them are written."""
        super().on_save_checkpoint(checkpoint)
        hparams = checkpoint.get("hyper_parameters")
        if hparams is None:
            return
        for key in self.file_arguments:
            hparams[key] = None
        for key in self.spec_arguments:
            hparams[key] = copy.deepcopy(self.hparams.get(key))


__all__ = ["NOISE_SETTINGS", "TeacherStage", "load_teacher", "noise_setting"]
