"""``--trainer.default_root_dir`` moves a run: checkpoints, TensorBoard logs and sample PNGs go under it unless the
config gives their folders, ``--ckpt_path last`` looks there, and the refusal to mix runs names the flag."""

import pytest
import torch
from conftest import ROOT, TEACHER, teacher_config

from kegnet_pl.cli import main

GENERATOR = str(ROOT / "configs" / "mnist_subset" / "generator.yaml")
TINY = [
    "--model.teacher",
    TEACHER,
    "--model.n_generators",
    "1",
    "--data.init_args.batch_size",
    "8",
    "--data.init_args.batches_per_epoch",
    "2",
    "--trainer.max_epochs",
    "1",
    "--trainer.enable_progress_bar",
    "false",
]


def test_a_shipped_config_writes_everything_under_the_root_it_is_given(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the config's own root, runs/..., would appear here
    moved = ["fit", "--config", GENERATOR, *TINY, "--trainer.default_root_dir", "elsewhere"]
    main(moved)
    assert [path.name for path in tmp_path.iterdir()] == ["elsewhere"]
    root = tmp_path / "elsewhere"
    checkpoints = root / "checkpoints"
    assert {"last.ckpt", "samples_gen0.png", "samples_gen-all.png"} <= {path.name for path in checkpoints.iterdir()}
    assert list((root / "tensorboard" / "version_0").glob("events.out.tfevents.*"))

    main([*moved, "--trainer.max_epochs", "2", "--ckpt_path", "last"])  # found under the root, and resumed
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["global_step"] == 4
    assert (root / "tensorboard" / "version_1").is_dir()

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:  # a new run into the same root
        main(moved)
    assert exit_info.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"kegnet: error: the checkpoint folder {str(root / 'checkpoints')!r} already holds")
    assert "write this one elsewhere with --trainer.default_root_dir DIR" in line

    main(["fit", "--config", GENERATOR, *TINY, "--trainer.default_root_dir", "again"])  # the fix the error names
    assert (tmp_path / "again" / "checkpoints" / "last.ckpt").is_file()


def test_folders_the_config_gives_win_over_the_root(tmp_path):
    config = teacher_config(tmp_path)  # its logger's save_dir is tmp_path (logs in tb/), its dirpath tmp_path/ckpt
    main(["fit", "--config", str(config), "--trainer.default_root_dir", str(tmp_path / "root")])
    assert (tmp_path / "ckpt" / "last.ckpt").is_file()
    assert list((tmp_path / "tb").rglob("events.out.tfevents.*"))
    assert not (tmp_path / "root" / "checkpoints").exists() and not (tmp_path / "root" / "tensorboard").exists()
