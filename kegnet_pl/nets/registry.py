"""A name -> constructor registry for classifiers.

Checkpoints store the plain name (``"lenet5"``), so a network can be rebuilt from a checkpoint's
hyper-parameters without the command line. A dotted path (``"my_pkg.nets:MyNet"`` or
``"my_pkg.nets.MyNet"``) names any importable ``nn.Module`` that takes the same arguments.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence

from torch import nn

from kegnet_pl.errors import ConfigError

_CLASSIFIERS: dict[str, Callable[..., nn.Module]] = {}


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


def _import_constructor(path: str) -> Callable[..., nn.Module]:
    module_name, _, attr = path.replace(":", ".").rpartition(".")
    try:
        module = importlib.import_module(module_name)
        return getattr(module, attr)
    except (ImportError, AttributeError, ValueError) as err:
        raise ConfigError(
            f"cannot import the classifier {path!r} ({err}); give a registered name "
            f"({', '.join(classifier_names())}) or an importable 'package.module:ClassName'"
        ) from err


def build_classifier(name: str, input_shape: Sequence[int], num_classes: int, **kwargs) -> nn.Module:
    """Build the classifier registered as ``name`` for inputs of ``input_shape`` and ``num_classes`` outputs.

    Args:
        name: a registered name (see :func:`classifier_names`) or an importable ``module:Class`` path.
        input_shape: shape of one input without the batch dimension, e.g. ``(1, 32, 32)`` or ``(64,)``.
        num_classes: number of output logits.
        **kwargs: architecture-specific options (for example ``dropout`` of the MLP).
    """
    if name in _CLASSIFIERS:
        constructor = _CLASSIFIERS[name]
    elif "." in name or ":" in name:
        constructor = _import_constructor(name)
    else:
        raise ConfigError(
            f"unknown classifier architecture {name!r}; registered: {', '.join(classifier_names())} "
            "(or give an importable 'package.module:ClassName')"
        )
    if num_classes < 2:
        raise ConfigError(f"num_classes must be at least 2, got {num_classes}")
    if any(int(size) <= 0 for size in input_shape):
        raise ConfigError(f"input_shape must hold positive sizes, got {tuple(input_shape)}")
    return constructor(input_shape=tuple(int(s) for s in input_shape), num_classes=int(num_classes), **kwargs)


def build_classifier_from_spec(spec: dict) -> nn.Module:
    """Build a classifier from a spec ``{'arch', 'input_shape', 'num_classes', 'arch_kwargs'}``, the form in which
    checkpoints record their networks."""
    return build_classifier(spec["arch"], spec["input_shape"], spec["num_classes"], **(spec.get("arch_kwargs") or {}))
