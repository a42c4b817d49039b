"""Loading classifier weights from the files users have.

Three formats are read, always with ``weights_only=True`` (a file that would run code when unpickled is
refused) and always mapped onto the requested device, so files saved on a GPU load on a CPU-only machine:

* a kegnet_pl Lightning checkpoint: ``{'state_dict': {'net.<key>': ...}, 'hyper_parameters': {...}}``;
  the architecture is read from its hyper-parameters;
* the authors' KegNet format: ``{'model_state': state_dict}`` (their ``.pth.tar`` files);
* a plain state dict: ``{'<key>': tensor, ...}``.

A file never chooses code: :func:`read_checkpoint` refuses a file whose hyper-parameters name an architecture that
is neither registered nor trusted by the user (see :mod:`kegnet_pl.nets.registry`), or hold values of the wrong
kind, before anything is built from it.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import pickle
from collections.abc import Mapping, Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kegnet_pl.atomic import atomic_write
from kegnet_pl.errors import CheckpointError, KegnetError, run_folder_hint
from kegnet_pl.nets.generators import build_generator
from kegnet_pl.nets.registry import (
    build_classifier_from_spec,
    check_arch,
    check_arch_kwargs,
    check_input_shape,
    check_num_classes,
    get_constructor,
    validate_spec,
)

#: Prefix of the classifier's keys inside a kegnet_pl LightningModule's state dict.
NET_PREFIX = "net."


def read_checkpoint(path: str | Path, map_location: str | torch.device | None = "cpu") -> dict[str, Any]:
    """``torch.load`` a file safely (``weights_only=True``) and turn every failure into a :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        hint = " (it is a directory)" if path.is_dir() else ""
        todo = "check the path"
        if not path.is_dir() and path.parent.name == "checkpoints":  # another stage's output, not yet written
            todo += " (a stage's checkpoint: run that stage first, as the config's comments say, or give a file)"
        raise CheckpointError(f"checkpoint file {str(path)!r} does not exist{hint or run_folder_hint(path)}; {todo}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint file {str(path)!r} is empty (0 bytes); the file was not written completely")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if "Unsupported global" in str(err):  # a pickled reference to a function or class: code, not data
            raise CheckpointError(
                f"refused to load {str(path)!r}: it holds Python objects that could run code when unpickled, "
                "and kegnet_pl only loads tensors and plain containers (weights_only=True). Re-save its state dict "
                "with torch.save(model.state_dict(), path) from code you trust."
            ) from err
        reason = next((line.strip() for line in str(err).splitlines() if "Unsupported" in line), type(err).__name__)
        raise CheckpointError(f"{str(path)!r} is not a PyTorch checkpoint or is truncated/corrupt ({reason})") from err
    except Exception as err:  # torch raises many types for bytes that are not a checkpoint
        raise CheckpointError(
            f"{str(path)!r} is not a PyTorch checkpoint or is truncated/corrupt ({type(err).__name__}: {err})"
        ) from err
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{str(path)!r} holds a {type(obj).__name__}, not a state dict or a checkpoint dictionary; "
            "save weights with torch.save(model.state_dict(), path)"
        )
    hparams = obj.get("hyper_parameters")
    check_hyper_parameters(hparams, repr(str(path)))
    if "state_dict" in obj:
        if not isinstance(obj["state_dict"], Mapping):
            raise CheckpointError(f"{str(path)!r} has a state_dict of type {type(obj['state_dict']).__name__}")
        check_state_dict(obj["state_dict"], path)
        check_weights_fit(hparams or {}, obj["state_dict"], path)
    return dict(obj)


#: Sizes that module checkpoints record as plain hyper-parameters, with the largest value a file may give.
SIZE_LIMITS = {"n_generators": 1024, "noise_dim": 4096, "decoder_layers": 64, "image_columns": 256}


def check_hyper_parameters(hparams: Any, source: str) -> None:
    """Refuse a file's ``hyper_parameters`` that name code the user did not trust or hold values of the wrong kind.

    Checked: ``arch`` / ``teacher_arch`` (registered or trusted), ``input_shape``, ``num_classes``, ``arch_kwargs``
    (plain values the constructor declares), the ``teacher_spec`` of generator and student checkpoints, their
    ``generator_spec`` and the sizes in :data:`SIZE_LIMITS`. Nothing is imported or built.
    """
    if hparams is None:
        return
    if not isinstance(hparams, Mapping) or not all(isinstance(key, str) for key in hparams):
        raise CheckpointError(f"{source} has hyper_parameters of type {type(hparams).__name__}, not a dictionary")
    arch = hparams.get("arch")
    if arch is not None:
        check_arch(arch, source)
    if hparams.get("teacher_arch") is not None:
        check_arch(hparams["teacher_arch"], source)
    if hparams.get("input_shape") is not None:
        check_input_shape(hparams["input_shape"], source)
    if hparams.get("num_classes") is not None:
        check_num_classes(hparams["num_classes"], source)
    if hparams.get("arch_kwargs") is not None:
        check_arch_kwargs(arch, hparams["arch_kwargs"], source)
    if hparams.get("teacher_spec") is not None:
        validate_spec(hparams["teacher_spec"], f"{source} (its teacher_spec)")
    sizes = dict(hparams)
    generator_spec = hparams.get("generator_spec")
    if generator_spec is not None:
        if not isinstance(generator_spec, Mapping) or set(generator_spec) != {"n_generators", "noise_dim"}:
            raise CheckpointError(
                f"{source} records generator_spec={_short(generator_spec)}; it must be {{n_generators, noise_dim}}"
            )
        sizes.update(generator_spec)
    for key, limit in SIZE_LIMITS.items():
        value = sizes.get(key)
        if key in sizes and (not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= limit):
            raise CheckpointError(f"{source} records {key}={_short(value)}; it must be an integer from 0 to {limit}")


def check_weights_fit(hparams: Mapping[str, Any], state: Mapping[str, torch.Tensor], path: str | Path) -> None:
    """The networks that a generator or student checkpoint's ``teacher_spec`` and generator sizes describe must fit
    the weights it holds: compared shape by shape with networks sized on the ``meta`` device (nothing allocated)."""
    spec = hparams.get("teacher_spec")
    if spec is None:
        return
    spec = validate_spec(spec, f"{str(path)!r} (its teacher_spec)")
    sizes = {**hparams, **(hparams.get("generator_spec") or {})}
    held = sorted({key.split(".")[1] for key in state if key.startswith("generators.") and key.count(".") >= 2})
    if sizes.get("n_generators") is not None and sizes["n_generators"] != len(held):
        raise CheckpointError(
            f"{str(path)!r} records n_generators={sizes['n_generators']} but holds the weights of {len(held)} "
            "generator(s)"
        )
    try:
        with torch.device("meta"):
            networks = {"teacher": (build_classifier_from_spec(spec), "teacher.net.")}
            if held and sizes.get("noise_dim") is not None:
                generator = build_generator(spec["input_shape"], spec["num_classes"], sizes["noise_dim"])
                networks.update({f"generator {g}": (generator, f"generators.{g}.") for g in held})
    except KegnetError as err:
        raise CheckpointError(f"{str(path)!r}: {err}") from err
    for name, (net, prefix) in networks.items():
        weights = {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
        if weights and all(key.startswith("net.") for key in weights):  # a frozen generator inside a student
            weights = {key[len("net.") :]: value for key, value in weights.items()}
        problems = _misfit(net, weights, spec["arch"] if name == "teacher" else "the generator")
        if problems:
            raise CheckpointError(
                f"the weights of the {name} in {str(path)!r} do not fit its recorded spec: {'; '.join(problems)}"
            )


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def split_checkpoint(obj: Mapping[str, Any], path: str | Path = "<memory>") -> tuple[dict[str, torch.Tensor], dict]:
    """Return ``(state_dict, hyper_parameters)`` of any supported format; hyper-parameters may be empty."""
    if "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        state = obj["state_dict"]
        hparams = obj.get("hyper_parameters") or {}
        check_hyper_parameters(hparams, repr(str(path)))
        if any(isinstance(key, str) and key.startswith(NET_PREFIX) for key in state):
            state = {key[len(NET_PREFIX) :]: value for key, value in state.items() if key.startswith(NET_PREFIX)}
        return check_state_dict(state, path), dict(hparams)
    if "model_state" in obj and isinstance(obj["model_state"], Mapping):
        return check_state_dict(obj["model_state"], path), {}
    if obj and all(isinstance(value, torch.Tensor) for value in obj.values()):
        return check_state_dict(obj, path), {}
    raise CheckpointError(
        f"{str(path)!r} is a dictionary with keys {sorted(map(str, obj))[:8]} but none of the supported formats: "
        "a kegnet_pl/Lightning checkpoint ('state_dict'), the KegNet format ('model_state') or a plain state dict"
    )


def check_state_dict(state: Mapping[Any, Any], path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict of named tensors with finite floating-point values, or a :class:`CheckpointError`."""
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"{str(path)!r} holds {_short(key)}: {type(value).__name__} in its weights; a state dict maps names "
                "to tensors"
            )
        if value.numel() * value.element_size() > value.untyped_storage().nbytes():
            raise CheckpointError(
                f"{str(path)!r} holds a tensor {key!r} of shape {tuple(value.shape)} larger than the data stored for it"
            )
        if value.is_floating_point() and value.numel() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(
                f"{str(path)!r} holds non-finite weights (NaN or infinity) in {key!r}; it is not a usable network"
            )
    return dict(state)


def _misfit(net: nn.Module, state: Mapping[str, torch.Tensor], arch: str) -> list[str]:
    """What keeps ``state`` from loading into ``net`` with ``strict=True``: missing, unexpected, misshapen keys."""
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [
        f"{key}: file {tuple(state[key].shape)} vs {arch} {tuple(own[key].shape)}"
        for key in sorted(set(own) & set(state))
        if tuple(state[key].shape) != tuple(own[key].shape)
    ]
    details = []
    if missing:
        details.append(f"missing keys {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if unexpected:
        details.append(f"unexpected keys {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    if mismatched:
        details.append(f"shape mismatch {mismatched[:3]}{' ...' if len(mismatched) > 3 else ''}")
    return details


def load_state_into(net: nn.Module, state: Mapping[str, torch.Tensor], path: str | Path, arch: str) -> None:
    """``load_state_dict(strict=True)`` with an error that says what did not fit."""
    details = _misfit(net, state, arch)
    if details:
        raise CheckpointError(
            f"the weights in {str(path)!r} do not fit the architecture {arch!r} "
            f"(input_shape={getattr(net, 'input_shape', '?')}, num_classes={getattr(net, 'num_classes', '?')}): "
            + "; ".join(details)
            + ". Check the architecture, input shape and class count, or use the file's own architecture."
        )
    net.load_state_dict(state, strict=True)


def load_classifier_and_spec(
    path: str | Path,
    arch: str | None = None,
    input_shape: Sequence[int] | None = None,
    num_classes: int | None = None,
    map_location: str | torch.device | None = "cpu",
    **arch_kwargs: Any,
) -> tuple[nn.Module, dict[str, Any]]:
    """Like :func:`load_classifier`, and also return the spec that rebuilds the network without the file:
    ``{'arch', 'input_shape', 'num_classes', 'arch_kwargs'}`` for :func:`kegnet_pl.nets.build_classifier`.
    """
    if arch is not None:
        get_constructor(arch)  # an import path must be trusted even when it is given here
    obj = read_checkpoint(path, map_location=map_location)
    state, hparams = split_checkpoint(obj, path)
    saved = {key: hparams.get(key) for key in ("arch", "input_shape", "num_classes") if hparams.get(key) is not None}
    given = {"arch": arch, "input_shape": input_shape, "num_classes": num_classes}
    for key, value in given.items():
        if value is None or key not in saved:
            continue
        if key == "input_shape":
            value, saved[key] = tuple(value), tuple(saved[key])
        if value != saved[key]:
            raise CheckpointError(
                f"{str(path)!r} holds a classifier with {key}={saved[key]!r}, but {key}={value!r} was asked for; "
                f"remove the {key} setting or use a checkpoint of that {key}"
            )
    config = {key: value if value is not None else saved.get(key) for key, value in given.items()}
    absent = [key for key, value in config.items() if value is None]
    if absent:
        raise SpecMissingError(path, absent)
    spec = validate_spec(
        {**config, "arch_kwargs": {**dict(hparams.get("arch_kwargs") or {}), **arch_kwargs}}, repr(str(path))
    )
    net = build_classifier_from_spec(spec, repr(str(path)))
    load_state_into(net, state, path, spec["arch"])
    if map_location is not None:
        net = net.to(map_location)
    return net.eval(), spec


class SpecMissingError(CheckpointError):
    """A weights file that does not record its architecture, input shape or class count, and none was given."""

    def __init__(self, path: str | Path, absent: Sequence[str]) -> None:
        self.path, self.absent = str(path), list(absent)
        super().__init__(
            f"{self.path!r} does not say its {', '.join(absent)}; give them (for example arch='lenet5', "
            "input_shape=(1, 32, 32), num_classes=10)"
        )


def load_classifier(
    path: str | Path,
    arch: str | None = None,
    input_shape: Sequence[int] | None = None,
    num_classes: int | None = None,
    map_location: str | torch.device | None = "cpu",
    **arch_kwargs: Any,
) -> nn.Module:
    """Build a classifier and load its weights from ``path`` (any supported format), in eval mode.

    A kegnet_pl checkpoint carries its architecture; for the other formats ``arch``, ``input_shape`` and
    ``num_classes`` must be given. Values given here that disagree with a checkpoint's own raise an error.
    """
    net, _ = load_classifier_and_spec(path, arch, input_shape, num_classes, map_location, **arch_kwargs)
    return net


def save_classifier(net: nn.Module, path: str | Path, arch: str, arch_kwargs: Mapping[str, Any] | None = None) -> Path:
    """Save a classifier as a small kegnet_pl checkpoint that :func:`load_classifier` and ``TeacherModule``'s
    ``weights`` option read without being told the architecture (no optimiser state; weights as float32 on CPU).
    """
    path = Path(path)
    checkpoint = {
        "state_dict": {NET_PREFIX + key: value.detach().cpu().clone() for key, value in net.state_dict().items()},
        "hyper_parameters": {
            "arch": arch,
            "input_shape": tuple(net.input_shape),
            "num_classes": int(net.num_classes),
            "arch_kwargs": dict(arch_kwargs or {}),
        },
        "pytorch-lightning_version": version("pytorch-lightning"),
    }
    with atomic_write(path, "wb") as handle:  # never a half-written file under the final name
        torch.save(checkpoint, handle)
    return path


#: the checkpoint key that names the LightningModule class that wrote it (``kegnet`` also records ``_class_path``)
MODULE_KEY = "kegnet_pl_module"

#: what to do with a checkpoint of one kind of stage given to another, by (recorded class, loading class family)
_OTHER_STAGE_HINTS = {
    "GeneratorModule": "to distil a student from its generators, pass it as StudentModule(generators=...)",
    "TeacherModule": "to use the classifier it trained, pass it as a stage's teacher=... or TeacherModule(weights=...)",
}


def recorded_module(obj: Mapping[str, Any]) -> str | None:
    """The class path of the LightningModule that wrote a checkpoint, where it says (``None`` for files of earlier
    versions saved from Python, which record none)."""
    recorded = obj.get(MODULE_KEY)
    if not isinstance(recorded, str):
        hparams = obj.get("hyper_parameters")
        recorded = hparams.get("_class_path") if isinstance(hparams, Mapping) else None
    return recorded if isinstance(recorded, str) else None


class CheckedLoading:
    """Mixin of kegnet_pl's LightningModules: ``load_from_checkpoint`` reads the file through :func:`read_checkpoint`
    (``weights_only``, the hyper-parameters checked so that the file cannot name code the user did not trust, the
    weights checked to be finite tensors), and any failure to rebuild the module from it is a one-line
    :class:`CheckpointError` naming the file."""

    #: ``__init__`` arguments naming files whose contents the module's checkpoints hold themselves
    file_arguments: tuple[str, ...] = ()

    @classmethod
    def init_args_from_checkpoint(cls, hparams: Mapping[str, Any]) -> dict[str, Any]:
        """The ``__init__`` arguments that rebuild the networks a checkpoint with these hyper-parameters holds: every
        argument it records, and ``None`` for the files it replaces (``kegnet test --ckpt_path`` sets them over the
        config's, so that a config's preset never decides the shape of a trained network)."""
        accepted = inspect.signature(cls.__init__).parameters
        args = {key: value for key, value in hparams.items() if key in accepted and not key.startswith("_")}
        args.update({key: None for key in cls.file_arguments if key in accepted})
        return args

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the module's class, so that loading the file as another kind of stage is refused."""
        super().on_save_checkpoint(checkpoint)
        checkpoint[MODULE_KEY] = f"{type(self).__module__}.{type(self).__qualname__}"

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A checkpoint handed to ``trainer.fit(..., ckpt_path=...)`` of a module of another class is refused; its
        hyper-parameters are kept to explain weights that do not fit (:meth:`load_state_dict`)."""
        super().on_load_checkpoint(checkpoint)
        type(self)._check_recorded_module("the checkpoint", recorded_module(checkpoint))  # trainer.fit's ckpt_path
        hparams = checkpoint.get("hyper_parameters")
        self._checkpoint_hparams = dict(hparams) if isinstance(hparams, Mapping) else {}

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """torch's own loading; weights that do not fit the module (a checkpoint of the same class built with
        other settings) are one :class:`CheckpointError` that names the settings the checkpoint was written with."""
        try:
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        except RuntimeError as err:
            if "Error(s) in loading state_dict" not in str(err):
                raise
            recorded = getattr(self, "_checkpoint_hparams", None) or {}
            skip = {*self.file_arguments, *getattr(self, "spec_arguments", ())}
            differ = [
                f"{key}={_short(value, 60)}"
                for key, value in recorded.items()
                if key in self.hparams and key not in skip and not key.startswith("_") and value != self.hparams[key]
            ]
            written = f"was written with {', '.join(differ[:4])}" if differ else "holds other networks"
            name = type(self).__name__
            raise CheckpointError(
                f"the checkpoint's weights do not fit this {name} ({_short(' '.join(str(err).split()), 160)}); it "
                f"{written}: build the {name} with the checkpoint's settings, or load it with "
                f"{name}.load_from_checkpoint"
            ) from err

    @classmethod
    def _check_recorded_module(cls, what: str, recorded: str | None) -> None:
        """A checkpoint written by another class than ``cls`` (or one of its bases) would be rebuilt as something it
        is not: a DFADModule's as a plain StudentModule trains without its adversary, quietly."""
        if recorded is None:
            return
        name = recorded.rsplit(".", 1)[-1]
        if name in {klass.__name__ for klass in cls.__mro__}:
            return
        hint = _OTHER_STAGE_HINTS.get(name) or (
            f"load it with {name}.load_from_checkpoint (kegnet_pl.export.student_class picks the class of any "
            "student stage's checkpoint)"
        )
        raise CheckpointError(f"{what} is a checkpoint of a {name}, not of a {cls.__name__}; {hint}")

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, map_location: Any = None, *args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        if not isinstance(checkpoint_path, str | os.PathLike):  # a file object: Lightning's reader (specs are still
            return super().load_from_checkpoint(checkpoint_path, map_location, *args, **kwargs)  # checked when built)
        path = str(checkpoint_path)
        obj = read_checkpoint(path, map_location="cpu")
        state = obj.get("state_dict")
        if not isinstance(state, Mapping):
            raise CheckpointError(f"{path!r} is not a Lightning checkpoint of a {cls.__name__} (it has no state_dict)")
        cls._check_recorded_module(repr(path), recorded_module(obj))
        from kegnet_pl.compression.tucker import structure_only

        # every weight is loaded from the file (strict loading): Tucker layers need their shapes, not a decomposition
        strict = not args and kwargs.get("strict") is not False and getattr(cls, "strict_loading", True)
        skip = structure_only() if strict else contextlib.nullcontext()
        try:
            with skip:
                return super().load_from_checkpoint(path, map_location, *args, **kwargs)
        except KegnetError as err:
            if path in str(err):
                raise
            raise CheckpointError(f"{path!r} does not rebuild a {cls.__name__}: {err}") from err
        except Exception as err:  # values of the wrong kind in the file's hyper-parameters or weights
            message = " ".join(str(err).split())
            raise CheckpointError(
                f"{path!r} does not rebuild a {cls.__name__} ({type(err).__name__}: {_short(message, 300)})"
            ) from err
