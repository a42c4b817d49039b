import pytest
import torch
from conftest import ROOT, TEACHER

from kegnet_pl.cli import build_cli
from kegnet_pl.data import NoiseDataModule, sample_batch, sample_labels
from kegnet_pl.errors import ConfigError


def batch(**overrides):
    args = dict(seed=0, epoch=0, rank=0, index=0, streams=3, batch_size=8, num_classes=10, noise_dim=4)
    return sample_batch(**{**args, **overrides})


def test_batch_shapes_and_one_hot_labels():
    out = batch()
    assert out["labels"].shape == (3, 8, 10) and out["noise"].shape == (3, 8, 4)
    assert torch.equal(out["labels"].sum(-1), torch.ones(3, 8))
    assert set(out["labels"].unique().tolist()) == {0.0, 1.0}


def test_stream_is_a_pure_function_of_seed_epoch_rank_index():
    reference = batch()
    assert all(torch.equal(reference[k], batch()[k]) for k in reference)
    for key in ("seed", "epoch", "rank", "index"):
        assert not torch.equal(reference["noise"], batch(**{key: 1})["noise"]), key


def test_streams_within_a_batch_differ():
    noise = batch()["noise"]
    assert not torch.equal(noise[0], noise[1])


def test_uniform_soft_labels_are_unnormalised_in_0_1():
    labels = sample_labels(1000, 5, "uniform", torch.Generator().manual_seed(0))
    assert labels.min() >= 0 and labels.max() <= 1
    assert not torch.allclose(labels.sum(-1), torch.ones(1000))
    with pytest.raises(ConfigError, match="'onehot' or 'uniform', got 'gauss'"):
        sample_labels(4, 5, "gauss")


def test_datamodule_draws_the_streams_it_is_given():
    data = NoiseDataModule(batch_size=4, batches_per_epoch=2, streams=5, num_classes=10, noise_dim=3)
    batch = data.sample(0, 0, 1)
    assert batch["labels"].shape == (5, 4, 10) and batch["noise"].shape == (5, 4, 3) and int(batch["size"]) == 4
    assert len(data.train_dataloader()) == 2
    with pytest.raises(ConfigError, match="streams=5 needs num_classes and noise_dim too"):
        NoiseDataModule(streams=5)


def test_without_streams_a_batch_is_its_seed_and_size():
    data = NoiseDataModule(batch_size=4, batches_per_epoch=2, seed=3)
    batch = data.sample(0, 1, 1)
    assert set(batch) == {"seed", "size"} and int(batch["size"]) == 4
    assert int(batch["seed"]) == int(data.sample(0, 1, 1)["seed"])
    others = [data.sample(1, 1, 1), data.sample(0, 0, 1), data.sample(0, 1, 0), NoiseDataModule(seed=4).sample(0, 1, 1)]
    assert len({int(batch["seed"]), *(int(other["seed"]) for other in others)}) == 5


def test_moving_a_batch_to_a_device_keeps_its_seed_and_size_on_the_cpu():
    """The stages read them as numbers every step; on a GPU a read-back would wait for the queued work."""
    data = NoiseDataModule(batch_size=4, batches_per_epoch=2, streams=5, num_classes=10, noise_dim=3)
    moved = data.transfer_batch_to_device(data.sample(0, 0, 1), torch.device("meta"), 0)
    assert moved["labels"].device.type == moved["noise"].device.type == "meta"
    assert moved["seed"].device.type == moved["size"].device.type == "cpu" and int(moved["size"]) == 4
    real = data.transfer_batch_to_device([torch.zeros(2), torch.ones(2)], torch.device("meta"), 0)
    assert all(tensor.device.type == "meta" for tensor in real)  # real data batches move as usual


def test_kegnet_links_the_datamodule_to_the_generator_model():
    """The CLI fills the NoiseDataModule's streams, classes, noise size and label distribution from the model."""
    args = ["--config", str(ROOT / "configs/mnist_subset/generator.yaml"), "--model.teacher", TEACHER]
    args += ["--model.n_generators", "3", "--model.noise_dim", "6", "--model.label_distribution", "uniform"]
    cli = build_cli([*args, "--trainer.logger", "false", "--trainer.callbacks", "[]"], run=False)
    assert cli.datamodule.settings == {"streams": 3, "num_classes": 10, "noise_dim": 6, "label_distribution": "uniform"}


@pytest.mark.parametrize("field", ["batch_size", "batches_per_epoch"])
def test_non_positive_sizes_are_refused(field):
    with pytest.raises(ConfigError, match=f"NoiseDataModule: {field} must be positive, got 0"):
        NoiseDataModule(**{field: 0})
