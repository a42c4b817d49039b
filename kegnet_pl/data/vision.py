"""Real image data through torchvision, with KegNet's preprocessing and splits.

Files are read from ``root`` in torchvision's own layout; they are downloaded only when ``download=True``
(in ``prepare_data``, once per node). With no test split of its own, a set is split 7:1:2; with one, the last
5,000 training images validate (the authors' protocol).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset, Subset, TensorDataset
from torchvision import datasets, transforms

from kegnet_pl.data.base import ClassificationDataModule, SeededTransforms
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
        in_memory: bool = True,
    ) -> None:
        """
        Args:
            root: folder holding the data set in torchvision's layout.
            download: fetch the files into ``root`` when they are missing.
            val_size: how many of the last training images form the validation split.
            batch_size: images per batch (per device under DDP).
            num_workers: DataLoader worker processes.
            seed: seed of the training loader's shuffling.
            in_memory: preprocess every image once in ``setup`` and keep the tensors (the same values as the
                per-image transforms, many times faster on a CPU); splits with random augmentation (the training
                split of Fashion-MNIST and CIFAR-10) are always transformed per image.
        """
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed)
        self.root = root
        self.download = download
        self.val_size = val_size
        self.in_memory = in_memory

    # --- preprocessing -------------------------------------------------------------------------------
    def eval_transform(self) -> transforms.Compose:
        return transforms.Compose(
            [transforms.Resize(32), transforms.ToTensor(), transforms.Normalize(self.mean, self.std)]
        )

    def train_transform(self) -> transforms.Compose:
        return self.eval_transform()

    @property
    def augments(self) -> bool:
        """Whether the training transform is random (then the training split is never held in memory)."""
        return type(self).train_transform is not TorchvisionDataModule.train_transform

    def _images(self, dataset) -> tuple[torch.Tensor, torch.Tensor]:
        """All images of a torchvision data set as uint8 (N, C, H, W) and its labels as int64 (N,)."""
        data = torch.as_tensor(dataset.data)
        if data.dim() == 3:  # MNIST, Fashion-MNIST: (N, H, W)
            data = data[:, None]
        elif data.shape[-1] in (1, 3):  # CIFAR-10: (N, H, W, C)
            data = data.permute(0, 3, 1, 2)
        labels = getattr(dataset, "targets", None)
        labels = getattr(dataset, "labels", None) if labels is None else labels
        return data.contiguous(), torch.as_tensor(labels, dtype=torch.long)

    def _preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """``eval_transform`` on a batch of uint8 images: torchvision's uint8 resize is bit-exact with PIL's, so the
        tensors equal those of the per-image transforms."""
        from torchvision.transforms.v2 import functional as TF

        images = TF.resize(images, [32, 32], antialias=True).float().div_(255)
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        return (images - mean) / std

    # --- torchvision ---------------------------------------------------------------------------------
    def _dataset(self, train: bool, transform, download: bool = False):
        return self.dataset_class(self.root, train=train, transform=transform, download=download)

    def _open(self, train: bool, transform):
        try:
            return self._dataset(train, transform)
        except (RuntimeError, ValueError, EOFError) as err:
            name, root = self.dataset_class.__name__, str(Path(self.root).resolve())
            if "download=True" not in str(err):  # the files are there but do not read: cut short or corrupt
                reason = " ".join(str(err).split())[:200]
                fixes = ["replace them (full MNIST: make data, which checks every file and fetches a bad one again)"]
                raise DataNotFoundError(
                    f"{name}'s files in {root!r} could not be read ({type(err).__name__}: {reason}); one is truncated "
                    "or corrupt",
                    [*fixes, "set {options}download true"],
                ) from err
            files = ", ".join(str(Path(self.root) / name) for name in self.expected_files)
            raise DataNotFoundError(
                f"{name} is not in {root!r}: expected {files}",
                ["put the files there", "point {options}root DIR at them", "set {options}download true"],
            ) from err

    def prepare_data(self) -> None:
        if self.download:
            for train in (True, False):
                try:
                    self._dataset(train, None, download=True)
                except (RuntimeError, OSError) as err:  # urllib's errors are OSErrors; torchvision wraps some
                    name, root = self.dataset_class.__name__, str(Path(self.root).resolve())
                    reason = " ".join(str(err).split())[:200]
                    files = ", ".join(self.expected_files)
                    raise DataNotFoundError(
                        f"could not download {name} into {root!r} ({type(err).__name__}: {reason}); is the network "
                        f"reachable? Without it, put its files ({files}) there yourself",
                        [
                            "point {options}root DIR at a copy of them",
                            "set {options}download false once they are there",
                        ],
                    ) from err

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        if not self.in_memory:
            train_full = self._open(True, self.train_transform())
            val_full = self._open(True, self.eval_transform())
            train_idx, val_idx = self._split(len(train_full))
            self.train_set, self.val_set = self._augmented(Subset(train_full, train_idx)), Subset(val_full, val_idx)
            self.test_set = self._open(False, self.eval_transform())
            return
        images, labels = self._images(self._open(True, None))
        train_idx, val_idx = self._split(len(images))
        inputs = self._preprocess(images)
        if self.augments:  # random augmentation: the training split stays per image
            self.train_set = self._augmented(Subset(self._open(True, self.train_transform()), train_idx))
        else:
            self.train_set = TensorDataset(inputs[train_idx], labels[train_idx])
        self.val_set = TensorDataset(inputs[val_idx], labels[val_idx])
        images, labels = self._images(self._open(False, None))
        self.test_set = TensorDataset(self._preprocess(images), labels)

    def _augmented(self, train_set: Dataset) -> Dataset:
        """The training split, its random transforms seeded per epoch and sample (:class:`SeededTransforms`)."""
        return SeededTransforms(train_set) if self.augments else train_set

    def _split(self, n: int) -> tuple[range, range]:
        """Training and validation indices: the last ``val_size`` images (at most a fifth) validate."""
        val_size = min(self.val_size, n // 5)
        return range(0, n - val_size), range(n - val_size, n)


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
