"""LightningDataModules of real data (for teachers and for evaluating students)."""

from kegnet_pl.data.base import ClassificationDataModule, stratified_split
from kegnet_pl.data.offline import CSVDataModule, DigitsDataModule, MNISTSubsetDataModule
from kegnet_pl.data.vision import CIFAR10DataModule, FashionMNISTDataModule, MNISTDataModule, SVHNDataModule

__all__ = [
    "CIFAR10DataModule",
    "CSVDataModule",
    "ClassificationDataModule",
    "DigitsDataModule",
    "FashionMNISTDataModule",
    "MNISTDataModule",
    "MNISTSubsetDataModule",
    "SVHNDataModule",
    "stratified_split",
]
