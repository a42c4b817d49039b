"""Shared fixtures: tiny configs written to a temporary folder, driven through the real ``kegnet`` entry point."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _few_threads():
    torch.set_num_threads(2)


def teacher_config(tmp_path: Path, **overrides) -> Path:
    """A tiny MNIST-subset teacher config whose outputs all go below ``tmp_path``."""
    config = {
        "seed_everything": 0,
        "trainer": {
            "max_epochs": 1,
            "limit_train_batches": 4,
            "limit_val_batches": 2,
            "limit_test_batches": 2,
            "log_every_n_steps": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "logger": {"class_path": "TensorBoardLogger", "init_args": {"save_dir": str(tmp_path), "name": "tb"}},
            "callbacks": [
                {
                    "class_path": "ModelCheckpoint",
                    "init_args": {
                        "dirpath": str(tmp_path / "ckpt"),
                        "monitor": "val/acc",
                        "mode": "max",
                        "save_last": True,
                    },
                }
            ],
        },
        "model": {
            "class_path": "TeacherModule",
            "init_args": {"arch": "lenet5", "input_shape": [1, 32, 32], "num_classes": 10},
        },
        "data": {"class_path": "MNISTSubsetDataModule", "init_args": {"batch_size": 16}},
    }
    for dotted, value in overrides.items():
        node = config
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path
