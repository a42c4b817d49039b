import pytest
import torch

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


def test_datamodule_settings_must_agree_with_the_model():
    class Model:
        num_classes, noise_dim, noise_streams, label_distribution = 10, 10, 5, "onehot"

    class Trainer:
        lightning_module = Model()

    data = NoiseDataModule(batch_size=4, batches_per_epoch=2, num_classes=7)
    data.trainer = Trainer()
    with pytest.raises(ConfigError, match="NoiseDataModule has num_classes=7 but Model has 10"):
        data.setup("fit")
    data = NoiseDataModule(batch_size=4, batches_per_epoch=2)
    data.trainer = Trainer()
    data.setup("fit")
    assert data.sample(0, 0, 1)["labels"].shape == (5, 4, 10)
    assert len(data.train_dataloader()) == 2


@pytest.mark.parametrize("field", ["batch_size", "batches_per_epoch"])
def test_non_positive_sizes_are_refused(field):
    with pytest.raises(ConfigError, match=f"NoiseDataModule: {field} must be positive, got 0"):
        NoiseDataModule(**{field: 0})
