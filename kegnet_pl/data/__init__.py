"""LightningDataModules: real data (teachers, evaluation) and the sampled noise of the data-free stages."""

from kegnet_pl.data.base import ClassificationDataModule, stratified_split
from kegnet_pl.data.noise import NoiseDataModule, sample_batch, sample_labels
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
    "NoiseDataModule",
    "SVHNDataModule",
    "sample_batch",
    "sample_labels",
    "stratified_split",
]
