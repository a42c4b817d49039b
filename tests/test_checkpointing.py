"""last.ckpt is the end of the last epoch, also when the monitored metric stops improving (pytorch-lightning 2.6
writes it only with a new top-k checkpoint)."""

import torch
from pytorch_lightning import LightningModule, Trainer
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from kegnet_pl.checkpointing import LastEveryEpoch, keep_last_every_epoch


class Flat(LightningModule):
    """Trains a linear layer; its validation metric never changes after the first epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("val/metric", 1.0)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(tmp_path, keep: bool) -> dict:
    checkpoint = ModelCheckpoint(dirpath=tmp_path, monitor="val/metric", mode="max", save_last=True)
    trainer = Trainer(
        max_epochs=3,
        callbacks=[checkpoint],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        accelerator="cpu",
    )
    if keep:
        keep_last_every_epoch(trainer)
        assert type(trainer.checkpoint_callback) is LastEveryEpoch
    loader = DataLoader(TensorDataset(torch.randn(8, 4)), batch_size=4)
    model = Flat()
    trainer.fit(model, loader, loader)
    last = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert torch.equal(last["state_dict"]["layer.weight"], model.layer.weight.detach()) == (last["global_step"] == 6)
    return last


def test_last_checkpoint_is_the_last_epoch_when_the_metric_stops_improving(tmp_path):
    last = _fit(tmp_path, keep=True)
    assert (last["global_step"], last["epoch"]) == (6, 3)  # written when training ended: 3 epochs complete
    assert last["loops"]["fit_loop"]["epoch_progress"]["total"]["completed"] == 3
    assert sorted(p.name for p in tmp_path.glob("*.ckpt")) == ["epoch=0-step=2.ckpt", "last.ckpt"]  # best kept


def test_the_kegnet_command_keeps_last_every_epoch(tmp_path):
    from conftest import teacher_config

    from kegnet_pl.cli import build_cli

    cli = build_cli(["--config", str(teacher_config(tmp_path))], run=False)
    assert [type(c) for c in cli.trainer.checkpoint_callbacks] == [LastEveryEpoch]
