"""A name -> constructor registry for classifiers, and the one rule that decides which code may be imported.

Checkpoints store the plain name (``"lenet5"``), so a network can be rebuilt from a checkpoint's
hyper-parameters without the command line. A dotted path (``"my_pkg.nets:MyNet"`` or ``"my_pkg.nets.MyNet"``)
names any importable ``nn.Module`` that takes the same arguments, but importing a module runs its code, so a path
is imported only when it is *trusted*, and it becomes trusted only by the user's own words:

* typed as ``arch`` / ``teacher_arch`` in a ``kegnet`` config or on its command line (the CLI calls
  :func:`trust_arch` for them), or given to ``kegnet-compress --arch``;
* named by ``kegnet --trust_arch`` or the environment variable ``KEGNET_TRUST_ARCH`` (comma-separated paths);
* passed to :func:`trust_arch` in Python (or register the class with :func:`register_classifier` instead).

A file never adds to the trusted set: an architecture that a checkpoint names must be registered or trusted, and
a spec read from a file goes through :func:`validate_spec`, which also checks its shape, class count and keyword
arguments before any network is built.
"""

from __future__ import annotations

import importlib
import inspect
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kegnet_pl.errors import CheckpointError, ConfigError, KegnetError

_CLASSIFIERS: dict[str, Callable[..., nn.Module]] = {}
_TRUSTED: set[str] = set()

#: Environment variable of import paths the user trusts, separated by commas.
TRUST_ENV = "KEGNET_TRUST_ARCH"
#: Bounds on what a file may ask for (a crafted file must not make a reader allocate or loop without end).
MAX_INPUT_SIZE = 1 << 24  # elements of one input; 3 x 2048 x 2048 fits
MAX_DIM = 1 << 16
MAX_CLASSES = 1 << 20
MAX_KWARG_INT = 1 << 16
MAX_KWARG_LIST = 64
MAX_PARAMETERS = 1 << 30

HOW_TO_TRUST = (
    "if you trust that code, name it yourself: kegnet fit --trust_arch {path} ... (or teacher_arch/arch in your "
    "config), kegnet-compress --arch {path}, the environment variable KEGNET_TRUST_ARCH={path}, or "
    "kegnet_pl.nets.trust_arch({path!r}) in Python"
)


def register_classifier(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Class decorator that makes a classifier buildable by ``name``."""

    def decorator(constructor: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _CLASSIFIERS and _CLASSIFIERS[name] is not constructor:
            raise ValueError(f"a classifier named {name!r} is already registered ({_CLASSIFIERS[name]!r})")
        _CLASSIFIERS[name] = constructor
        return constructor

    return decorator


def classifier_names() -> list[str]:
    """The registered classifier names, sorted."""
    return sorted(_CLASSIFIERS)


def is_import_path(name: str) -> bool:
    """Whether ``name`` is an import path (``pkg.mod:Cls`` or ``pkg.mod.Cls``) rather than a registered name."""
    return isinstance(name, str) and name not in _CLASSIFIERS and ("." in name or ":" in name)


def _canonical(path: str) -> str:
    return path.strip().replace(":", ".")


def trust_arch(*paths: str) -> None:
    """Allow kegnet_pl to import these classifier paths (``"my_pkg.nets:MyNet"``), wherever they are named later,
    checkpoints included. Registered names need no trust; only call this with paths you chose yourself."""
    for path in paths:
        if not isinstance(path, str) or not path.strip():
            raise ConfigError(f"trust_arch takes import paths such as 'my_pkg.nets:MyNet', got {path!r}")
        if is_import_path(path):
            _TRUSTED.add(_canonical(path))


def trusted_archs() -> set[str]:
    """The import paths trusted now: those given to :func:`trust_arch` and those in ``KEGNET_TRUST_ARCH``."""
    from_env = {_canonical(p) for p in os.environ.get(TRUST_ENV, "").split(",") if p.strip()}
    return _TRUSTED | from_env


def untrust_all() -> None:
    """Forget every path given to :func:`trust_arch` (the environment variable still counts); for tests."""
    _TRUSTED.clear()


def _import_constructor(path: str) -> Callable[..., nn.Module]:
    if _canonical(path) not in trusted_archs():
        raise ConfigError(f"the classifier {path!r} is an import path that you have not trusted; " + _how(path))
    module_name, _, attr = _canonical(path).rpartition(".")
    try:
        module = importlib.import_module(module_name)
        constructor = getattr(module, attr)
    except (ImportError, AttributeError, ValueError) as err:
        hint = ""
        if isinstance(err, ModuleNotFoundError) and Path(module_name.split(".")[0] + ".py").is_file():
            hint = (
                " (its file is in this folder, which the kegnet commands do not import from: PYTHONPATH=. kegnet ...)"
            )
        raise ConfigError(
            f"cannot import the classifier {path!r} ({err}){hint}; give a registered name "
            f"({', '.join(classifier_names())}) or an importable 'package.module:ClassName'"
        ) from err
    if not (isinstance(constructor, type) and issubclass(constructor, nn.Module)):
        raise ConfigError(f"{path!r} is not an nn.Module class; a classifier path names a class such as MyNet")
    return constructor


def _how(path: str) -> str:
    return HOW_TO_TRUST.format(path=path)


def get_constructor(name: str) -> Callable[..., nn.Module]:
    """The constructor of a registered name or of a trusted import path."""
    if not isinstance(name, str):
        raise ConfigError(f"a classifier architecture is a name such as 'lenet5', got {type(name).__name__}")
    if name in _CLASSIFIERS:
        return _CLASSIFIERS[name]
    if is_import_path(name):
        return _import_constructor(name)
    raise ConfigError(
        f"unknown classifier architecture {name!r}; registered: {', '.join(classifier_names())} "
        "(or give an importable 'package.module:ClassName')"
    )


def build_classifier(name: str, input_shape: Sequence[int], num_classes: int, **kwargs) -> nn.Module:
    """Build the classifier registered as ``name`` for inputs of ``input_shape`` and ``num_classes`` outputs.

    Args:
        name: a registered name (see :func:`classifier_names`) or a trusted ``module:Class`` path (:func:`trust_arch`).
        input_shape: shape of one input without the batch dimension, e.g. ``(1, 32, 32)`` or ``(64,)``.
        num_classes: number of output logits.
        **kwargs: architecture-specific options (for example ``dropout`` of the MLP).
    """
    constructor = get_constructor(name)
    if num_classes < 2:
        raise ConfigError(f"num_classes must be at least 2, got {num_classes}")
    if any(int(size) <= 0 for size in input_shape):
        raise ConfigError(f"input_shape must hold positive sizes, got {tuple(input_shape)}")
    return constructor(input_shape=tuple(int(s) for s in input_shape), num_classes=int(num_classes), **kwargs)


def _is_plain(value: Any, depth: int = 0) -> bool:
    if isinstance(value, bool) or value is None or isinstance(value, str) and len(value) <= 1000:
        return True
    if isinstance(value, int):
        return abs(value) <= MAX_KWARG_INT
    if isinstance(value, float):
        return math.isfinite(value) and abs(value) <= MAX_KWARG_INT
    if isinstance(value, list | tuple) and depth == 0:
        return len(value) <= MAX_KWARG_LIST and all(_is_plain(item, 1) for item in value)
    return False


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_arch(arch: Any, source: str) -> str:
    """``arch`` as a file may give it: a registered name, or an import path that the user trusts (never imported
    here); otherwise a :class:`CheckpointError` that names ``source``, the path and how to allow it."""
    if not isinstance(arch, str) or not arch:
        raise CheckpointError(f"{source} records no architecture name (arch={_short(arch)})")
    if arch in _CLASSIFIERS:
        return arch
    if not is_import_path(arch):
        raise CheckpointError(
            f"{source} asks for the architecture {_short(arch)}, which is not registered "
            f"({', '.join(classifier_names())}); use a registered one or give the architecture yourself"
        )
    if _canonical(arch) not in trusted_archs():
        raise CheckpointError(
            f"refused to import {_short(arch)}, which {source} names as its architecture (a file never chooses "
            "which code runs); " + _how(arch)
        )
    return arch


def check_input_shape(shape: Any, source: str) -> tuple[int, ...]:
    """A file's ``input_shape``: 1 to 4 positive ints of at most :data:`MAX_INPUT_SIZE` elements in all."""
    if (
        not isinstance(shape, list | tuple)
        or not 1 <= len(shape) <= 4
        or not all(_is_int(size) and 1 <= size <= MAX_DIM for size in shape)
        or math.prod(shape) > MAX_INPUT_SIZE
    ):
        raise CheckpointError(
            f"{source} records input_shape={_short(shape)}; it must be a list of 1 to 4 positive sizes, "
            f"{MAX_INPUT_SIZE:,} elements at most"
        )
    return tuple(shape)


def check_num_classes(classes: Any, source: str) -> int:
    """A file's ``num_classes``: an int from 2 to :data:`MAX_CLASSES`."""
    if not _is_int(classes) or not 2 <= classes <= MAX_CLASSES:
        raise CheckpointError(
            f"{source} records num_classes={_short(classes)}; it must be an integer from 2 to {MAX_CLASSES:,}"
        )
    return classes


def check_arch_kwargs(arch: str | None, kwargs: Any, source: str) -> dict[str, Any]:
    """A file's ``arch_kwargs``: a dict of plain values whose keys the constructor of ``arch`` declares."""
    kwargs = {} if kwargs is None else kwargs
    if not isinstance(kwargs, Mapping):
        raise CheckpointError(f"{source} records arch_kwargs={_short(kwargs)}; it must be a dictionary")
    declared = _declared_parameters(get_constructor(arch)) if arch is not None else None
    for key, value in kwargs.items():
        if not isinstance(key, str) or declared is not None and key not in declared:
            raise CheckpointError(
                f"{source} gives {arch} the argument {_short(key)}, which it does not declare "
                f"(it takes {', '.join(sorted(declared or ())) or 'no other arguments'})"
            )
        if not _is_plain(value):
            raise CheckpointError(
                f"{source} gives {arch} the argument {key}={_short(value)}; values from a file must be plain "
                f"numbers (at most {MAX_KWARG_INT:,}), strings, booleans or short lists of them"
            )
    return {key: list(value) if isinstance(value, tuple) else value for key, value in kwargs.items()}


def validate_spec(spec: Any, source: str = "a checkpoint") -> dict[str, Any]:
    """Check a classifier spec ``{'arch', 'input_shape', 'num_classes', 'arch_kwargs'}`` that a file gave, and return
    it in canonical form; any doubt raises :class:`CheckpointError` naming ``source`` and what it asked for.

    ``arch`` must be registered or trusted (:func:`trust_arch`), ``input_shape`` a list of positive ints,
    ``num_classes`` an int >= 2, and ``arch_kwargs`` a dict whose keys are parameters that the constructor declares
    and whose values are plain (numbers, strings, booleans, lists of them), all within bounds.
    """
    if not isinstance(spec, Mapping):
        raise CheckpointError(f"{source} records its network as a {type(spec).__name__}, not a spec dictionary")
    arch = check_arch(spec.get("arch"), source)
    return {
        "arch": arch,
        "input_shape": check_input_shape(spec.get("input_shape"), source),
        "num_classes": check_num_classes(spec.get("num_classes"), source),
        "arch_kwargs": check_arch_kwargs(arch, spec.get("arch_kwargs"), source),
    }


def _declared_parameters(constructor: Callable[..., nn.Module]) -> set[str]:
    try:
        parameters = inspect.signature(constructor).parameters.values()
    except (TypeError, ValueError):
        return set()
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {p.name for p in parameters if p.kind in kinds} - {"self", "input_shape", "num_classes"}


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def build_classifier_from_spec(spec: Mapping[str, Any], source: str = "a checkpoint") -> nn.Module:
    """Build a classifier from a spec ``{'arch', 'input_shape', 'num_classes', 'arch_kwargs'}``, the form in which
    checkpoints record their networks. The spec is checked by :func:`validate_spec` first (``source`` names where it
    came from in the error), and the network is sized on the ``meta`` device before any memory is allocated."""
    spec = validate_spec(spec, source)
    args = (spec["arch"], spec["input_shape"], spec["num_classes"])
    try:
        with torch.device("meta"):
            sizing = build_classifier(*args, **spec["arch_kwargs"])
        count = sum(p.numel() for p in sizing.parameters())
    except KegnetError as err:
        raise CheckpointError(f"{source}: {err}") from err
    except Exception as err:  # a constructor given values it cannot take
        raise CheckpointError(
            f"{source} records a {spec['arch']} spec that cannot be built ({type(err).__name__}: {_short(str(err))})"
        ) from err
    if count > MAX_PARAMETERS:
        raise CheckpointError(
            f"{source} asks for a {spec['arch']} of {count:,} parameters, more than {MAX_PARAMETERS:,}"
        )
    return build_classifier(*args, **spec["arch_kwargs"])
