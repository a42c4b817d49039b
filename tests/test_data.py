import struct

import numpy as np
import pytest
import torch

from kegnet_pl.data import (
    CSVDataModule,
    DigitsDataModule,
    FashionMNISTDataModule,
    MNISTDataModule,
    MNISTSubsetDataModule,
    SVHNDataModule,
    stratified_split,
)
from kegnet_pl.errors import ConfigError, DataNotFoundError


def write_idx_mnist(folder, n_train=40, n_test=12, seed=0):
    """Write MNIST files in torchvision's own on-disk layout: <root>/<Name>/raw/*-ubyte (big-endian idx)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    labels = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels[prefix] = np.arange(n, dtype=np.uint8) % 10
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes())
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + labels[prefix].tobytes())
    return labels


def test_stratified_split_is_seeded_disjoint_and_balanced():
    labels = torch.arange(100) % 5
    parts = stratified_split(labels, (0.7, 0.1, 0.2), seed=3)
    assert [len(p) for p in parts] == [70, 10, 20]
    assert len(torch.cat(parts).unique()) == 100
    assert all((torch.bincount(labels[p], minlength=5) == len(p) // 5).all() for p in parts)
    again = stratified_split(labels, (0.7, 0.1, 0.2), seed=3)
    other = stratified_split(labels, (0.7, 0.1, 0.2), seed=4)
    assert all(torch.equal(a, b) for a, b in zip(parts, again, strict=True))
    assert not torch.equal(parts[0], other[0])
    with pytest.raises(ConfigError, match="sum to 1"):
        stratified_split(labels, (0.5, 0.1), seed=0)


@pytest.mark.parametrize("workers", [0, 2])
def test_training_orders_are_a_plain_shuffled_loaders(workers):
    """The orders that trained the shipped teachers (a DataLoader shuffled by a generator seeded with ``seed``, no
    workers), epoch after epoch, also with persistent workers."""
    from torch.utils.data import DataLoader, TensorDataset

    from kegnet_pl.data.base import ClassificationDataModule

    def epochs(loader):
        return [torch.cat([index for (index,) in loader]).tolist() for _ in range(3)]

    data = ClassificationDataModule(batch_size=8, num_workers=workers, seed=3)
    data.train_set = TensorDataset(torch.arange(50))
    plain = DataLoader(data.train_set, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(3))
    orders = epochs(data.train_dataloader())
    assert orders == epochs(plain) and orders[0] != orders[1]


def test_mnist_subset_is_split_3500_500_1000():
    data = MNISTSubsetDataModule(batch_size=32)
    data.setup()
    assert [len(s) for s in (data.train_set, data.val_set, data.test_set)] == [3500, 500, 1000]
    x, y = next(iter(data.test_dataloader()))
    assert x.shape == (32, 1, 32, 32) and y.dtype == torch.int64
    assert torch.bincount(data.test_set.tensors[1]).tolist() == [100] * 10
    # the file lists the digits in order; the held-out splits are served mixed (limit_val_batches sees every class)
    assert data.load_arrays()[1][:500].unique().numel() == 1
    assert data.val_set.tensors[1][:50].unique().numel() == 10 and y.unique().numel() >= 8
    assert abs(data.train_set.tensors[0].mean().item()) < 0.1  # MNIST normalisation (0.1307, 0.3081)
    again = MNISTSubsetDataModule(batch_size=32)  # the text file is parsed once a process (fit, then test)
    again.setup()
    assert again.load_arrays()[0] is data.load_arrays()[0]
    data.test_set.tensors[0].zero_()  # each module's splits are copies: changing one changes no other
    assert again.test_set.tensors[0].abs().sum() > 0 and data.load_arrays()[0].abs().sum() > 0


@pytest.mark.parametrize(("as_images", "shape"), [(False, (64,)), (True, (1, 32, 32))])
def test_digits_as_features_or_images(as_images, shape):
    data = DigitsDataModule(as_images=as_images)
    data.setup()
    assert data.input_shape == shape and data.train_set[0][0].shape == shape
    assert sum(len(s) for s in (data.train_set, data.val_set, data.test_set)) == 1797
    if not as_images:  # standardised with training statistics
        train = data.train_set.tensors[0]
        assert torch.allclose(train.mean(0), torch.zeros(64), atol=1e-4)


def test_csv_loader_maps_labels_and_skips_header(tmp_path):
    rng = np.random.default_rng(0)
    rows = ["a,b,c,label"] + [
        f"{x:.3f},{y:.3f},{z:.3f},{label}"
        for (x, y, z), label in zip(rng.normal(size=(60, 3)), [3, 7, 9] * 20, strict=True)
    ]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    data = CSVDataModule(str(tmp_path / "t.csv"), batch_size=8)
    assert data.input_shape == (3,) and data.num_classes == 3 and data.classes == [3, 7, 9]
    data.setup()
    assert sorted(
        torch.cat([s.tensors[1] for s in (data.train_set, data.val_set, data.test_set)]).unique().tolist()
    ) == [0, 1, 2]


def test_csv_with_non_integer_label_column(tmp_path):
    (tmp_path / "bad.csv").write_text("\n".join(f"{i},{i * 2},{i}.5" for i in range(20)) + "\n")
    with pytest.raises(
        ConfigError, match=r"'.*bad\.csv': data row 1 has the label '0\.5' in column -1, but labels must be integers"
    ):
        CSVDataModule(str(tmp_path / "bad.csv")).setup()
    with pytest.raises(DataNotFoundError, match=r"CSV file '.*missing\.csv' does not exist"):
        CSVDataModule(str(tmp_path / "missing.csv")).setup()


def test_torchvision_mnist_from_files_on_disk(tmp_path):
    labels = write_idx_mnist(tmp_path / "MNIST" / "raw")
    data = MNISTDataModule(root=str(tmp_path), batch_size=4, in_memory=False)
    data.setup()
    assert (len(data.train_set), len(data.val_set), len(data.test_set)) == (32, 8, 12)  # val capped at a fifth
    x, y = next(iter(data.test_dataloader()))
    assert x.shape == (4, 1, 32, 32) and y.tolist() == labels["t10k"][:4].tolist()
    assert data.val_set.indices == range(32, 40)  # the last training images validate


def test_in_memory_mnist_equals_the_per_image_transforms(tmp_path):
    write_idx_mnist(tmp_path / "MNIST" / "raw")
    per_image = MNISTDataModule(root=str(tmp_path), in_memory=False)
    in_memory = MNISTDataModule(root=str(tmp_path))
    per_image.setup()
    in_memory.setup()
    for split in ("train_set", "val_set", "test_set"):
        a, b = getattr(per_image, split), getattr(in_memory, split)
        assert len(a) == len(b)
        x_a, y_a = zip(*(a[i] for i in range(len(a))), strict=True)
        assert torch.equal(torch.stack(x_a), b.tensors[0])  # bit-exact: the same resize as PIL's
        assert list(y_a) == b.tensors[1].tolist()
    assert in_memory.test_set.tensors[0].shape == (12, 1, 32, 32)
    assert abs(in_memory.test_set.tensors[0].mean().item() - (0.5 - 0.1307) / 0.3081) < 0.1  # normalised


def test_fashion_mnist_flips_only_training_images(tmp_path):
    write_idx_mnist(tmp_path / "FashionMNIST" / "raw")
    data = FashionMNISTDataModule(root=str(tmp_path), in_memory=False)
    data.setup()
    names = [type(t).__name__ for t in data.train_set.dataset.dataset.transform.transforms]
    assert names[0] == "RandomHorizontalFlip"
    assert "RandomHorizontalFlip" not in [type(t).__name__ for t in data.test_set.transform.transforms]
    held = FashionMNISTDataModule(root=str(tmp_path))  # in memory: the augmented split stays per image
    held.setup()
    assert type(held.train_set.dataset.dataset.transform.transforms[0]).__name__ == "RandomHorizontalFlip"
    assert isinstance(held.test_set, torch.utils.data.TensorDataset)


@pytest.mark.parametrize("in_memory", [True, False])
def test_random_transforms_are_those_of_an_uninterrupted_run_with_any_workers(tmp_path, in_memory):
    """Each training sample's flip is drawn from the epoch and its index: the same with 0 or 2 loader workers, in
    the epoch after a resume from the DataModule's saved state, and different from epoch to epoch."""
    write_idx_mnist(tmp_path / "FashionMNIST" / "raw")

    def fashion(workers):
        data = FashionMNISTDataModule(root=str(tmp_path), in_memory=in_memory, batch_size=8, num_workers=workers)
        data.setup()
        return data

    def epoch(loader):
        return torch.cat([x for x, _ in loader])

    straight = fashion(0)
    loader = straight.train_dataloader()
    first, state, second = epoch(loader), straight.state_dict(), epoch(loader)
    for workers in (0, 2):
        torch.manual_seed(workers + 1)  # the random state a resumed process happens to start from
        resumed = fashion(workers)
        resumed.load_state_dict(state)
        assert torch.equal(epoch(resumed.train_dataloader()), second)
        assert torch.equal(epoch(fashion(workers).train_dataloader()), first)
    train_set = straight.train_set  # keyed by (index, the epoch's draw): another draw flips other images
    one, again, other = ([train_set[(i, draw)][0] for i in range(len(train_set))] for draw in (1, 1, 2))
    assert all(torch.equal(a, b) for a, b in zip(one, again, strict=True))
    same = [torch.equal(a, b) for a, b in zip(one, other, strict=True)]
    assert not all(same) and all(s or torch.equal(a.flip(-1), b) for s, a, b in zip(same, one, other, strict=True))


@pytest.mark.parametrize(
    ("module", "expected"),
    [(MNISTDataModule, r"MNIST/raw/train-images-idx3-ubyte"), (SVHNDataModule, r"train_32x32\.mat")],
)
def test_missing_data_says_where_to_put_the_files(tmp_path, module, expected):
    fix = r"download true; from Python, the DataModule's arguments root and download\.$"
    with pytest.raises(DataNotFoundError, match=rf"is not in '.*'.*{expected}.*{fix}"):
        module(root=str(tmp_path / "empty")).setup()


def test_a_download_without_network_is_one_error_that_says_what_to_do(tmp_path, monkeypatch):
    import urllib.error

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(SVHNDataModule, "dataset_class", offline)
    with pytest.raises(DataNotFoundError, match=r"could not download .* \(URLError: .*Name or service not known"):
        SVHNDataModule(root=str(tmp_path), download=True).prepare_data()


def test_bad_batch_size():
    with pytest.raises(ConfigError, match="MNISTSubsetDataModule: batch_size must be positive, got 0"):
        MNISTSubsetDataModule(batch_size=0)


def test_a_truncated_mnist_file_is_one_error_that_says_how_to_replace_it(tmp_path):
    write_idx_mnist(tmp_path / "MNIST" / "raw")
    labels = tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes()[:-5])  # cut short, as an interrupted copy leaves it
    with pytest.raises(
        DataNotFoundError, match=r"MNIST's files in '.*' could not be read .*truncated or corrupt.*make data"
    ):
        MNISTDataModule(root=str(tmp_path), batch_size=4).setup()
