"""Integration tests that drive the real ``kegnet`` entry point on tiny configs."""

import json

import pytest
import torch
import yaml
from conftest import ROOT, teacher_config

from kegnet_pl.cli import main


def run(args):
    main(args)


def event_files(folder):
    return list(folder.rglob("events.out.tfevents.*"))


def scalar_tags(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for path in event_files(folder):
        acc = EventAccumulator(str(path))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    return tags


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--help"], "Score a trained stage on its test data: --ckpt_path FILE, or last for the config's run."),
        (["fit", "--help"], "Train a stage (teacher, generators or student) from its config; --ckpt_path last resumes"),
        (["test", "--help"], "Trainer.test's own options: --ckpt_path"),
    ],
)
def test_help(args, says, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(args)
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "usage:" in out
    said = " ".join(out.split())  # argparse wraps lines
    assert says in said
    assert "never run on your" not in said  # Lightning's own line for test, cut mid-sentence


def test_print_config_of_the_shipped_teacher_config(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(["fit", "--config", str(ROOT / "configs/mnist_subset/teacher.yaml"), "--print_config"])
    assert exit_info.value.code == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["model"]["class_path"] == "kegnet_pl.modules.TeacherModule"
    assert config["model"]["init_args"]["arch"] == "lenet5"
    assert config["data"]["class_path"] == "kegnet_pl.data.MNISTSubsetDataModule"


def test_tiny_fit_writes_checkpoints_and_tensorboard_then_resumes(tmp_path):
    config = teacher_config(tmp_path)
    run(["fit", "--config", str(config)])
    last = tmp_path / "ckpt" / "last.ckpt"
    assert last.is_file()
    first = torch.load(last, map_location="cpu", weights_only=True)
    assert first["global_step"] == 4
    assert {"train/loss", "train/acc", "val/loss", "val/acc"} <= scalar_tags(tmp_path / "tb")
    saved = next((tmp_path / "tb").glob("version_*/config.yaml"))  # written atomically: whole, no temporary left
    assert yaml.safe_load(saved.read_text())["model"]["class_path"].endswith("TeacherModule")
    assert not [path for path in saved.parent.iterdir() if path.name.endswith(".tmp")]

    run(["fit", "--config", str(config), "--trainer.max_epochs", "2", "--ckpt_path", "last"])
    resumed = torch.load(last, map_location="cpu", weights_only=True)
    # continued from step 4, not restarted: 2 epochs of 4 steps in all
    assert resumed["global_step"] == 8
    assert resumed["loops"]["fit_loop"]["epoch_progress"]["total"]["completed"] == 2
    assert len(list((tmp_path / "tb").iterdir())) == 2  # the first run's logs are kept


def test_shipped_teacher_reaches_its_manifest_accuracy(tmp_path, capsys):
    entry = json.loads((ROOT / "checkpoints/manifest.json").read_text())["mnist_subset_lenet5"]
    config = teacher_config(tmp_path, **{"trainer.limit_test_batches": 1.0, "data.init_args.batch_size": 500})
    weights = str(ROOT / "checkpoints" / entry["file"])
    run(["test", "--config", str(config), "--model.init_args.weights", weights])
    out = capsys.readouterr().out
    accuracy = float(next(line.split()[1] for line in out.splitlines() if line.strip().startswith("test/acc")))
    assert accuracy == pytest.approx(entry["test_accuracy"], abs=1e-3)
    assert accuracy >= 0.96


def test_model_that_does_not_fit_the_data_exits_with_one_line(tmp_path, capsys):
    config = teacher_config(tmp_path, **{"model.init_args": {"arch": "mlp", "input_shape": [64], "num_classes": 10}})
    with pytest.raises(SystemExit) as exit_info:
        run(["fit", "--config", str(config)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("kegnet: error: TeacherModule expects input_shape=(64,) and num_classes=10, but ")
    assert "MNISTSubsetDataModule gives input_shape=(1, 32, 32)" in err[-1]
    assert "Traceback" not in "\n".join(err)


def test_bad_weights_file_exits_with_one_line(tmp_path, capsys):
    config = teacher_config(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        run(["test", "--config", str(config), "--model.init_args.weights", str(tmp_path / "missing.ckpt")])
    assert exit_info.value.code == 2
    assert "kegnet: error: checkpoint file" in capsys.readouterr().err


def test_a_fit_stopped_by_sigterm_exits_143_not_0(monkeypatch, capsys):
    """Lightning ends a fit stopped by SIGTERM with its SIGTERMException, a SystemExit of status 0."""
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    import kegnet_pl.cli

    def stopped(args):
        raise SIGTERMException

    monkeypatch.setattr(kegnet_pl.cli, "build_cli", stopped)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", "any.yaml"])
    assert exit_info.value.code == 143
    assert "kegnet: stopped by SIGTERM" in capsys.readouterr().err


def test_float32_matmul_precision_is_set_for_the_run_and_checked(tmp_path, capsys):
    from kegnet_pl.cli import build_cli

    before = torch.get_float32_matmul_precision()
    config = str(ROOT / "configs/mnist_subset/teacher.yaml")
    where = ["--trainer.default_root_dir", str(tmp_path)]
    try:
        build_cli(["--config", config, *where, "--float32_matmul_precision", "high"], run=False)
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(before)
    build_cli(["--config", config, *where], run=False)
    assert torch.get_float32_matmul_precision() == before  # not given: left as it is
    with pytest.raises(SystemExit) as exit_info:
        run(["fit", "--config", config, *where, "--float32_matmul_precision", "tf32"])
    assert exit_info.value.code == 2
    assert "float32_matmul_precision" in capsys.readouterr().err
    assert torch.get_float32_matmul_precision() == before
