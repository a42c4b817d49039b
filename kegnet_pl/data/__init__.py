"""LightningDataModules (real data for teachers and evaluation, the sampled noise of the data-free stages) and the
sample sources that make a student's inputs."""

from kegnet_pl.data.base import ClassificationDataModule, stratified_split
from kegnet_pl.data.noise import NoiseDataModule, sample_batch, sample_labels
from kegnet_pl.data.offline import CSVDataModule, DigitsDataModule, MNISTSubsetDataModule
from kegnet_pl.data.sources import (
    KegnetGenerators,
    Mixture,
    NormalNoise,
    Pool,
    SampleSource,
    Strokes,
    UniformNoise,
)
from kegnet_pl.data.vision import CIFAR10DataModule, FashionMNISTDataModule, MNISTDataModule, SVHNDataModule

__all__ = [
    "CIFAR10DataModule",
    "CSVDataModule",
    "ClassificationDataModule",
    "DigitsDataModule",
    "FashionMNISTDataModule",
    "KegnetGenerators",
    "MNISTDataModule",
    "MNISTSubsetDataModule",
    "Mixture",
    "NoiseDataModule",
    "NormalNoise",
    "Pool",
    "SVHNDataModule",
    "SampleSource",
    "Strokes",
    "UniformNoise",
    "sample_batch",
    "sample_labels",
    "stratified_split",
]
