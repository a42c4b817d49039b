"""The common base of the real-data DataModules: loaders, shapes and seeded splits."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from pytorch_lightning import LightningDataModule
from torch.utils.data import DataLoader, Dataset, RandomSampler

from kegnet_pl.errors import CheckpointError, ConfigError


def check_positive(name: str, value: float, owner: str) -> None:
    """Raise a :class:`ConfigError` naming ``owner.name`` when ``value`` is not positive."""
    if value is None or value <= 0:
        raise ConfigError(f"{owner}: {name} must be positive, got {value!r}")


def stratified_split(labels: torch.Tensor, fractions: Sequence[float], seed: int) -> list[torch.Tensor]:
    """Split indices into parts of the given ``fractions`` (summing to 1), class by class, reproducibly.

    Each class is shuffled with a generator seeded by ``seed`` and cut at the same fractions, so every part
    holds the classes in the proportions of the whole set.
    """
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise ConfigError(f"split fractions must sum to 1, got {list(fractions)}")
    generator = torch.Generator().manual_seed(seed)
    parts: list[list[torch.Tensor]] = [[] for _ in fractions]
    for cls in torch.unique(labels, sorted=True):
        idx = torch.nonzero(labels == cls).flatten()
        idx = idx[torch.randperm(len(idx), generator=generator)]
        bounds = torch.tensor([0.0, *torch.tensor(fractions).cumsum(0).tolist()]) * len(idx)
        bounds = bounds.round().long().tolist()
        for part, (start, stop) in zip(parts, zip(bounds[:-1], bounds[1:], strict=True), strict=True):
            part.append(idx[start:stop])
    return [torch.cat(part).sort().values for part in parts]


class EpochOrder(RandomSampler):
    """Each epoch's order from ``generator`` alone, whether the loader's iterator is made anew (``num_workers`` 0)
    or kept across epochs (persistent workers).

    A loader that shuffles with its ``generator`` also draws its workers' base seed from it, once per iterator: every
    epoch without workers, once a run with persistent workers, so a resumed run (a new iterator) drew one seed more
    than an uninterrupted one and went on with other orders. This sampler draws one int64 from ``generator`` before
    each epoch's permutation, as such a loader does without workers, so that the orders are those of a plain shuffled
    loader with ``num_workers`` 0 in every case (the shipped teachers were trained so); the loader takes its base
    seed from a generator of its own.

    Over a :class:`SeededTransforms` split it yields ``(index, draw)``: the index with that int64, from which the
    sample's random transforms are drawn."""

    def __iter__(self) -> Iterator[Any]:
        draw = int(torch.empty((), dtype=torch.int64).random_(generator=self.generator))
        if not isinstance(self.data_source, SeededTransforms):
            yield from super().__iter__()
            return
        for index in super().__iter__():
            yield index, draw


class SeededTransforms(Dataset):
    """A training split with random transforms (Fashion-MNIST's flips, CIFAR-10's crops), each sample's drawn from a
    seed of its own: the epoch's draw of the shuffling generator (:class:`EpochOrder` yields it with the index) and
    the sample's index. An epoch's augmentation is then the same with any number of loader workers and in a run
    resumed from a checkpoint, where workers would each go on from a random state of their own and start it afresh
    on resume. Given a plain index (Lightning's DistributedSampler under DDP), the transforms draw from the random
    state as it stands, as they would without this wrapper (under DDP with loader workers a resumed run's differ)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: Any) -> Any:
        if not isinstance(key, tuple):
            return self.dataset[key]
        index, draw = key
        state = torch.random.default_generator  # torchvision's transforms draw from torch's global random state
        saved = state.get_state()
        state.manual_seed((draw ^ (index * 0x9E3779B97F4A7C15)) & (2**63 - 1))  # torch.manual_seed: 50x the time
        try:
            return self.dataset[index]
        finally:
            state.set_state(saved)


class ClassificationDataModule(LightningDataModule):
    """A DataModule of (input, label) pairs with train, validation and test splits.

    Subclasses set ``input_shape`` and ``num_classes`` and fill ``train_set``, ``val_set`` and ``test_set``
    in :meth:`setup`.
    """

    input_shape: tuple[int, ...]
    num_classes: int

    def __init__(self, batch_size: int = 64, num_workers: int = 0, seed: int = 0) -> None:
        super().__init__()
        check_positive("batch_size", batch_size, type(self).__name__)
        if num_workers < 0:
            raise ConfigError(f"{type(self).__name__}: num_workers must be >= 0, got {num_workers}")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None
        self._shuffle: torch.Generator | None = None  # the training loader's, which draws every epoch's order
        self._shuffle_state: torch.Tensor | None = None  # its state from a checkpoint (load_state_dict)

    def _loader(self, dataset: Dataset | None, stage: str, shuffle: torch.Generator | None = None) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__} has no {stage} split; call setup() first")
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=None if shuffle is None else EpochOrder(dataset, generator=shuffle),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            generator=torch.Generator().manual_seed(self.seed),  # the workers' base seed only
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled by a generator seeded with ``seed`` that goes on from epoch to epoch; a run resumed from a
        checkpoint goes on from the state the checkpoint saved (:meth:`state_dict`), so that its epochs see the
        orders an uninterrupted run's would (with workers or without: :class:`EpochOrder`; under DDP Lightning's
        sampler orders them), and with the same random transforms (:class:`SeededTransforms`)."""
        self._shuffle = torch.Generator().manual_seed(self.seed)
        if self._shuffle_state is not None:
            self._shuffle.set_state(self._shuffle_state)
            self._shuffle_state = None
        return self._loader(self.train_set, "train", self._shuffle)

    def state_dict(self) -> dict[str, Any]:
        """Saved in every checkpoint: where the training loader's shuffling stands."""
        return {} if self._shuffle is None else {"shuffle_state": self._shuffle.get_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = state_dict.get("shuffle_state")
        if state is not None and not (isinstance(state, torch.Tensor) and state.dtype == torch.uint8):
            raise CheckpointError(f"{type(self).__name__}: the checkpoint's shuffle_state is not a generator state")
        self._shuffle_state = state

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, "validation")

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, "test")
