"""The data of the data-free stages: per-batch seeds, sampled labels and noise vectors, never real data.

Each batch is a pure function of ``(seed, epoch, rank, index)``: every epoch draws fresh noise, every DDP rank
draws its own, and a run resumed from a checkpoint sees exactly the batches an uninterrupted run would, also in
the middle of an epoch (the training loader, a :class:`ResumableLoader`, saves its position in the checkpoint).
The loader only carries batch indices; the seeds, labels and noise are drawn (on the CPU, so the same numbers come
out on any device) in :meth:`NoiseDataModule.on_before_batch_transfer`, when the trainer's epoch and rank
are known.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

import torch
from pytorch_lightning import LightningDataModule
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from kegnet_pl.data.base import check_positive
from kegnet_pl.errors import ConfigError, DataNotFoundError

LabelDistribution = Literal["onehot", "uniform"]


def derive_seed(*keys: object) -> int:
    """A 63-bit seed that depends on every one of ``keys`` (a hash, so nearby keys give unrelated seeds)."""
    text = "/".join(str(key) for key in ("kegnet", *keys))
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1


def stream_seed(seed: int, epoch: int, rank: int, index: int) -> int:
    """The seed of batch ``index`` of ``epoch`` on ``rank`` (held-out batches: epoch -1, rank 0)."""
    return derive_seed(seed, epoch, rank, index)


def sample_labels(
    n: int, num_classes: int, distribution: LabelDistribution, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``n`` label vectors: uniformly random one-hot classes, or the paper's unnormalised U(0, 1) soft labels."""
    if distribution == "onehot":
        classes = torch.randint(num_classes, (n,), generator=generator)
        return torch.nn.functional.one_hot(classes, num_classes).float()
    if distribution == "uniform":
        return torch.rand(n, num_classes, generator=generator)
    raise ConfigError(f"label distribution must be 'onehot' or 'uniform', got {distribution!r}")


def sample_batch(
    seed: int,
    epoch: int,
    rank: int,
    index: int,
    streams: int,
    batch_size: int,
    num_classes: int,
    noise_dim: int,
    distribution: LabelDistribution = "onehot",
) -> dict[str, torch.Tensor]:
    """Labels ``(streams, batch_size, num_classes)``, noise ``(streams, batch_size, noise_dim)`` ~ N(0, I), and
    ``seed``: a further seed of this batch, for any other randomness a model needs (the noise baselines)."""
    generator = torch.Generator().manual_seed(stream_seed(seed, epoch, rank, index))
    labels = sample_labels(streams * batch_size, num_classes, distribution, generator)
    noise = torch.randn(streams * batch_size, noise_dim, generator=generator)
    return {
        "labels": labels.view(streams, batch_size, num_classes),
        "noise": noise.view(streams, batch_size, noise_dim),
        "seed": torch.randint(2**62, (), generator=generator),
    }


class _Indices(Dataset):
    def __init__(self, length: int) -> None:
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> int:
        return index


_END = object()


class ResumableLoader(DataLoader):
    """A ``DataLoader`` that resumes mid-epoch, through Lightning's stateful-dataloader protocol: Lightning saves
    :meth:`state_dict` in every checkpoint and hands it to :meth:`load_state_dict` when a run resumes.

    The state is how many batches of the current pass have been handed out; after :meth:`load_state_dict` the next
    pass skips that many, so a run resumed from a checkpoint taken mid-epoch goes on with the batch an uninterrupted
    run would see next (and Lightning does not warn that the loader is not resumable). Skipping reads the skipped
    items: this loader is for datasets that cost nothing to read, such as the batch indices of
    :class:`NoiseDataModule`. Under DDP each rank counts its share of the indices; every rank serves as many
    batches as rank 0, whose count the checkpoint holds.
    """

    def __init__(self, *args: Any, pass_length: Callable[[], float] | None = None, **kwargs: Any) -> None:
        """
        Args:
            args, kwargs: those of ``DataLoader``.
            pass_length: how many batches of a pass are used (the trainer's ``num_training_batches``, fewer than
                the loader holds under ``limit_train_batches``): a checkpoint taken after the last of them resumes
                at the start of the next pass. Default: every batch.
        """
        super().__init__(*args, **kwargs)
        self.pass_length = pass_length
        self._served = 0  # batches handed out by the current pass
        self._skip = 0  # batches the next pass skips (set by load_state_dict)

    def __iter__(self) -> Iterator[Any]:
        batches = super().__iter__()
        skip, self._skip = self._skip, 0
        self._served = 0
        while self._served < skip and next(batches, _END) is not _END:
            self._served += 1
        return self._counted(batches)

    def _counted(self, batches: Iterator[Any]) -> Iterator[Any]:
        for batch in batches:
            self._served += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        """``{"served": n}``: the batches of the current pass handed out so far (0 once the pass is used up)."""
        used = min(len(self), self.pass_length()) if self.pass_length is not None else len(self)
        return {"served": self._served if self._served < used else 0}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self._skip = int(state_dict.get("served", 0))


@contextmanager
def _eval_data_options() -> Iterator[None]:
    """Missing real data of ``eval_data`` is named by the options that reach it, and may be left out."""
    try:
        yield
    except DataNotFoundError as err:
        raise err.within(
            "--data.init_args.eval_data.init_args.",
            "leave out the real-data figures with --data.init_args.eval_data null",
        ) from err


class NoiseDataModule(LightningDataModule):
    """Batches of randomness for the data-free stages, never real data.

    Every batch holds ``seed``, a seed of its own (a function of the data seed, the epoch, the rank and the batch
    index) and ``size``, the batch size: a stage that makes its own inputs (the student, from its sample source)
    draws them with a generator seeded by it. With ``streams`` set, batches also hold sampled ``labels``
    ``(streams, batch_size, num_classes)`` and ``noise`` ``(streams, batch_size, noise_dim)``, one stream per
    generator of the generator stage. ``kegnet`` links ``streams``, ``num_classes``, ``noise_dim`` and
    ``label_distribution`` to the model's (``noise_settings()``), so a config does not repeat them; in Python,
    pass them yourself (``NoiseDataModule(..., **model.noise_settings())``).

    Validation and test batches: ``val_batches`` fixed held-out batches (the same in every epoch and on every rank,
    drawn with epoch -1), for data-free figures such as the student's agreement with the teacher, followed by the
    validation/test split of ``eval_data``, a real DataModule, when one is given. The training split of
    ``eval_data`` is never used.
    """

    def __init__(
        self,
        batch_size: int = 256,
        batches_per_epoch: int = 100,
        seed: int = 0,
        num_classes: int | None = None,
        noise_dim: int | None = None,
        streams: int | None = None,
        label_distribution: LabelDistribution = "onehot",
        val_batches: int = 0,
        eval_data: LightningDataModule | None = None,
    ) -> None:
        """
        Args:
            batch_size: samples per generator per step, per device (the paper: 256).
            batches_per_epoch: steps in an epoch, over all devices (the paper's "epoch": 100 batches).
            seed: seed of the stream; with epoch, rank and batch index it fixes every sample.
            num_classes: classes of the labels (linked to the model's by ``kegnet``).
            noise_dim: size of each noise vector (linked to the model's; the paper: 10).
            streams: independent label and noise streams per batch, one per generator (linked to the model's;
                ``null``: batches carry only their seed and size).
            label_distribution: ``onehot`` or ``uniform`` soft labels (linked to the model's).
            val_batches: fixed held-out batches for validation and test (0: none).
            eval_data: a real-data DataModule whose validation and test splits are evaluated too (optional).
        """
        super().__init__()
        check_positive("batch_size", batch_size, "NoiseDataModule")
        check_positive("batches_per_epoch", batches_per_epoch, "NoiseDataModule")
        if val_batches < 0:
            raise ConfigError(f"NoiseDataModule: val_batches must be >= 0, got {val_batches}")
        if streams is not None:
            check_positive("streams", streams, "NoiseDataModule")
            missing = [name for name, value in (("num_classes", num_classes), ("noise_dim", noise_dim)) if not value]
            if missing:
                raise ConfigError(
                    f"NoiseDataModule: streams={streams} needs {' and '.join(missing)} too "
                    "(kegnet links them to the model's; in Python pass **model.noise_settings())"
                )
        if label_distribution not in ("onehot", "uniform"):
            raise ConfigError(
                f"NoiseDataModule: label_distribution must be 'onehot' or 'uniform', got {label_distribution!r}"
            )
        self.batch_size = batch_size
        self.batches_per_epoch = batches_per_epoch
        self.val_batches = val_batches
        self.eval_data = eval_data
        self.seed = seed
        self.settings: dict[str, Any] = {
            "num_classes": num_classes,
            "noise_dim": noise_dim,
            "streams": streams,
            "label_distribution": label_distribution,
        }

    def setup(self, stage: str | None = None) -> None:
        if self.eval_data is not None and stage in ("fit", "validate", "test", None):
            self.eval_data.trainer = self.trainer
            with _eval_data_options():
                self.eval_data.setup(stage)

    def prepare_data(self) -> None:
        if self.eval_data is not None:
            with _eval_data_options():
                self.eval_data.prepare_data()

    def train_dataloader(self) -> DataLoader:
        """An epoch's batch indices, resumable mid-epoch. Over several processes each rank takes its share in an
        order fixed once for all (rank ``r`` of ``W``: ``r, r + W, ...``) instead of Lightning's sampler, which
        reshuffles every epoch and, on a resumed run, would give the resumed epoch the first epoch's order."""
        indices, trainer, sampler = _Indices(self.batches_per_epoch), self.trainer, None
        if trainer is not None and trainer.world_size > 1:
            sampler = DistributedSampler(indices, trainer.world_size, trainer.global_rank, shuffle=False)
        return ResumableLoader(indices, batch_size=None, sampler=sampler, pass_length=self._training_batches)

    def _training_batches(self) -> float:
        """How many batches of an epoch the trainer takes (``limit_train_batches`` may make them fewer)."""
        return self.trainer.num_training_batches if self.trainer is not None else float("inf")

    def _eval_loaders(self, real_loader: str) -> list[DataLoader]:
        loaders = [DataLoader(_Indices(self.val_batches), batch_size=None)] if self.val_batches else []
        if self.eval_data is not None:
            loaders.append(getattr(self.eval_data, real_loader)())
        return loaders

    def val_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders("val_dataloader")

    def test_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders("test_dataloader")

    def sample(self, epoch: int, rank: int, index: int) -> dict[str, torch.Tensor]:
        """The batch at ``(epoch, rank, index)`` of this stream."""
        settings = self.settings
        if settings["streams"] is None:
            return {
                "seed": torch.tensor(stream_seed(self.seed, epoch, rank, index)),
                "size": torch.tensor(self.batch_size),
            }
        batch = sample_batch(
            self.seed,
            epoch,
            rank,
            index,
            streams=settings["streams"],
            batch_size=self.batch_size,
            num_classes=settings["num_classes"],
            noise_dim=settings["noise_dim"],
            distribution=settings["label_distribution"],
        )
        return {**batch, "size": torch.tensor(self.batch_size)}

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if not (isinstance(batch, int) or (isinstance(batch, torch.Tensor) and batch.ndim == 0)):
            return batch  # real data, or already sampled
        trainer = self.trainer
        if trainer.training:
            sampled = self.sample(trainer.current_epoch, trainer.global_rank, int(batch))
        else:
            sampled = self.sample(-1, 0, int(batch))  # the fixed held-out batches, the same on every rank and epoch
        # drawn after Lightning converted the (index) batch to the trainer's precision: convert them too (64-true)
        return trainer.precision_plugin.convert_input(sampled)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """A noise batch's ``seed`` and ``size`` stay on the CPU, where the stages read them: on a GPU, reading them
        back would make every step wait for the work queued before it."""
        if not isinstance(batch, dict):
            return super().transfer_batch_to_device(batch, device, dataloader_idx)
        on_cpu = {key: batch[key] for key in CPU_KEYS if key in batch}
        moved = super().transfer_batch_to_device(
            {key: value for key, value in batch.items() if key not in on_cpu}, device, dataloader_idx
        )
        return {**moved, **on_cpu}


CPU_KEYS = ("seed", "size")  # the parts of a noise batch read as numbers, kept on the CPU


def batch_generator(batch: dict[str, torch.Tensor]) -> torch.Generator:
    """A CPU random generator seeded by a noise batch's own ``seed``: what a stage draws that batch's inputs with."""
    return torch.Generator().manual_seed(int(batch["seed"]))


InputDistribution = Literal["uniform", "normal"]


def sample_inputs(
    kind: InputDistribution, n: int, shape: tuple[int, ...], generator: torch.Generator | None = None
) -> torch.Tensor:
    """The paper's noise baselines: ``n`` inputs of ``shape`` from U(-1, 1) or N(0, 1)."""
    if kind == "uniform":
        return torch.rand(n, *shape, generator=generator) * 2 - 1
    if kind == "normal":
        return torch.randn(n, *shape, generator=generator)
    raise ConfigError(f"input distribution must be 'uniform' or 'normal', got {kind!r}")
