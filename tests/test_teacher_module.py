"""TeacherModule options that the full-MNIST teacher uses."""

import pytest
import torch
from conftest import quiet_trainer
from torch.utils.data import DataLoader, TensorDataset

from kegnet_pl.errors import ConfigError
from kegnet_pl.modules import TeacherModule


def _loader(n=32):
    generator = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(n, 1, 32, 32, generator=generator), torch.arange(n) % 10), 8)


def test_cosine_schedule_decays_the_learning_rate_to_zero_over_the_run(tmp_path):
    model = TeacherModule(lr=1e-3, lr_schedule="cosine")
    trainer = quiet_trainer(tmp_path, max_epochs=2)
    trainer.fit(model, train_dataloaders=_loader())
    assert trainer.global_step == 8
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)  # cos(pi) after 8 of 8 steps


def test_constant_schedule_keeps_the_learning_rate(tmp_path):
    model = TeacherModule(lr=1e-3)
    trainer = quiet_trainer(tmp_path, max_epochs=1)
    trainer.fit(model, train_dataloaders=_loader())
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(1e-3)


def test_unknown_schedule_is_refused():
    with pytest.raises(ConfigError, match="lr_schedule must be 'constant' or 'cosine', got 'linear'"):
        TeacherModule(lr_schedule="linear")
