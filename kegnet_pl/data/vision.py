"""Real image data through torchvision, with KegNet's preprocessing and splits.

Files are read from ``root`` in torchvision's own layout; they are downloaded only when ``download=True``
(in ``prepare_data``, once per node). With no test split of its own, a set is split 7:1:2; with one, the last
5,000 training images validate (the authors' protocol).
"""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Subset
from torchvision import datasets, transforms

from kegnet_pl.data.base import ClassificationDataModule
from kegnet_pl.errors import DataNotFoundError


class TorchvisionDataModule(ClassificationDataModule):
    """Base of the torchvision sets; subclasses say which dataset class, files and normalisation."""

    dataset_class: type
    #: files (relative to ``root``) that torchvision reads, named in the error when they are missing
    expected_files: tuple[str, ...] = ()
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_shape = (1, 32, 32)
    num_classes = 10

    def __init__(
        self,
        root: str = "data",
        download: bool = False,
        val_size: int = 5000,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        """
        Args:
            root: folder holding the data set in torchvision's layout.
            download: fetch the files into ``root`` when they are missing.
            val_size: how many of the last training images form the validation split.
            batch_size: images per batch (per device under DDP).
            num_workers: DataLoader worker processes.
            seed: seed of the training loader's shuffling.
        """
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed)
        self.root = root
        self.download = download
        self.val_size = val_size

    # --- preprocessing -------------------------------------------------------------------------------
    def eval_transform(self) -> transforms.Compose:
        return transforms.Compose(
            [transforms.Resize(32), transforms.ToTensor(), transforms.Normalize(self.mean, self.std)]
        )

    def train_transform(self) -> transforms.Compose:
        return self.eval_transform()

    # --- torchvision ---------------------------------------------------------------------------------
    def _dataset(self, train: bool, transform, download: bool = False):
        return self.dataset_class(self.root, train=train, transform=transform, download=download)

    def _open(self, train: bool, transform):
        try:
            return self._dataset(train, transform)
        except RuntimeError as err:
            if "download=True" not in str(err):
                raise
            files = ", ".join(str(Path(self.root) / name) for name in self.expected_files)
            raise DataNotFoundError(
                f"{self.dataset_class.__name__} is not in {str(Path(self.root).resolve())!r}: expected {files}. "
                f"Put the files there, point --data.init_args.root at them, or set --data.init_args.download true."
            ) from err

    def prepare_data(self) -> None:
        if self.download:
            for train in (True, False):
                self._dataset(train, None, download=True)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        train_full = self._open(True, self.train_transform())
        val_full = self._open(True, self.eval_transform())
        n = len(train_full)
        val_size = min(self.val_size, n // 5)
        self.train_set = Subset(train_full, range(0, n - val_size))
        self.val_set = Subset(val_full, range(n - val_size, n))
        self.test_set = self._open(False, self.eval_transform())


class MNISTDataModule(TorchvisionDataModule):
    """MNIST resized to 32x32, normalised with (0.1307, 0.3081) as in KegNet."""

    dataset_class = datasets.MNIST
    expected_files = tuple(
        f"MNIST/raw/{name}"
        for name in (
            "train-images-idx3-ubyte",
            "train-labels-idx1-ubyte",
            "t10k-images-idx3-ubyte",
            "t10k-labels-idx1-ubyte",
        )
    )
    mean, std = (0.1307,), (0.3081,)


class FashionMNISTDataModule(TorchvisionDataModule):
    """Fashion-MNIST resized to 32x32, normalised with (0.2856, 0.3385), random horizontal flips in training."""

    dataset_class = datasets.FashionMNIST
    expected_files = tuple(name.replace("MNIST/", "FashionMNIST/") for name in MNISTDataModule.expected_files)
    mean, std = (0.2856,), (0.3385,)

    def train_transform(self) -> transforms.Compose:
        return transforms.Compose([transforms.RandomHorizontalFlip(), *self.eval_transform().transforms])


class CIFAR10DataModule(TorchvisionDataModule):
    """CIFAR-10 with the usual per-channel normalisation and crop/flip augmentation."""

    dataset_class = datasets.CIFAR10
    expected_files = ("cifar-10-batches-py/data_batch_1 ... data_batch_5", "cifar-10-batches-py/test_batch")
    input_shape = (3, 32, 32)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)

    def train_transform(self) -> transforms.Compose:
        augment = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()]
        return transforms.Compose([*augment, *self.eval_transform().transforms])


class SVHNDataModule(TorchvisionDataModule):
    """SVHN (train and test splits) normalised with KegNet's per-channel statistics."""

    dataset_class = datasets.SVHN
    expected_files = ("train_32x32.mat", "test_32x32.mat")
    input_shape = (3, 32, 32)
    mean, std = (0.4378, 0.4439, 0.4729), (0.1980, 0.2011, 0.1971)

    def _dataset(self, train: bool, transform, download: bool = False):
        split = "train" if train else "test"
        return self.dataset_class(self.root, split=split, transform=transform, download=download)
