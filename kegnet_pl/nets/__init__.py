"""Plain ``torch.nn`` networks: no Lightning in here."""

from kegnet_pl.nets.classifiers import MLP, LeNet5, LeNet5Half, ResNet14
from kegnet_pl.nets.frozen import Frozen
from kegnet_pl.nets.registry import (
    build_classifier,
    build_classifier_from_spec,
    classifier_names,
    register_classifier,
    trust_arch,
)

__all__ = [
    "Frozen",
    "MLP",
    "LeNet5",
    "LeNet5Half",
    "ResNet14",
    "build_classifier",
    "build_classifier_from_spec",
    "classifier_names",
    "register_classifier",
    "trust_arch",
]
