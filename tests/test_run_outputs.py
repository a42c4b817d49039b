"""What ``kegnet fit`` tells the user at the end, and where ``kegnet test`` / ``validate`` of its checkpoints log."""

import shlex

import pytest
import torch
import yaml
from conftest import teacher_config
from pytorch_lightning import Callback
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from kegnet_pl.cli import main
from kegnet_pl.runs import RUN_KEY, recorded_run


def summary(text, head="kegnet fit done"):
    """The closing summary's entries (``{'best checkpoint': ..., 'resume': ...}``) from a command's stdout."""
    lines = text[text.index(head) :].splitlines()
    return {line[2:19].strip(): line[19:].strip() for line in lines[1:] if line.startswith("  ")}


def tags(folder, kind="scalars"):
    found = set()
    for path in folder.glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(path))
        acc.Reload()
        found |= set(acc.Tags()[kind])
    return found


def test_fit_ends_with_its_outputs_and_the_commands_that_resume_and_test_it(tmp_path, capsys):
    config = teacher_config(tmp_path)
    main(["fit", "--config", str(config), "--trainer.limit_train_batches", "3"])
    out = capsys.readouterr().out
    assert "kegnet fit done: 1 epoch, 3 steps" in out
    entries = summary(out)
    best, why = entries["best checkpoint"].split("  ")
    assert best == str(next((tmp_path / "ckpt").glob("epoch=0-step=3.ckpt"))) and why.startswith("(val/acc = ")
    assert entries["last checkpoint"] == str(tmp_path / "ckpt" / "last.ckpt")
    assert entries["TensorBoard"] == f"{tmp_path / 'tb' / 'version_0'}  (tensorboard --logdir {tmp_path / 'tb'})"
    assert "images" not in entries  # a teacher draws none
    same = ["--config", str(config), "--trainer.limit_train_batches", "3"]
    assert shlex.split(entries["resume"]) == ["kegnet", "fit", *same, "--ckpt_path", "last"]
    assert shlex.split(entries["test"]) == ["kegnet", "test", *same, "--ckpt_path", best]

    # the printed commands run as printed: the test logs into the fit's run, the resume continues the run
    main(shlex.split(entries["test"])[1:])
    assert [path.name for path in (tmp_path / "tb").iterdir()] == ["version_0"]
    main([*shlex.split(entries["resume"])[1:], "--trainer.max_epochs", "2"])
    assert torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)["global_step"] == 6
    assert "nothing trained" not in capsys.readouterr().out

    # resumed once more at the same budget: nothing to train, and the summary says what to raise
    main([*shlex.split(entries["resume"])[1:], "--trainer.max_epochs", "2"])
    out = capsys.readouterr().out
    assert "  nothing trained: " in out and "had already reached the run's end (2 epochs, 6 steps)" in out
    assert "raise --trainer.max_epochs" in out


class CtrlC(Callback):
    """Presses Ctrl+C after training step ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            raise KeyboardInterrupt


def ctrl_c(step):
    return f'--trainer.callbacks+={{"class_path": "test_run_outputs.CtrlC", "init_args": {{"step": {step}}}}}'


def test_an_interrupted_fit_still_says_how_to_resume(tmp_path, capsys):
    config = teacher_config(tmp_path / "first_epoch")
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(config), ctrl_c(2)])
    entries = summary(capsys.readouterr().out, "kegnet fit interrupted: 0 epochs, 2 steps")
    assert entries["checkpoints"] == "none written yet" and "resume" not in entries

    config = teacher_config(tmp_path / "second_epoch", **{"trainer.max_epochs": 2})
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(config), ctrl_c(6)])
    entries = summary(capsys.readouterr().out, "kegnet fit interrupted: 1 epoch, 6 steps")
    assert entries["last checkpoint"] == str(tmp_path / "second_epoch" / "ckpt" / "last.ckpt")  # the first epoch's
    assert shlex.split(entries["resume"]) == [
        "kegnet",
        "fit",
        "--config",
        str(config),
        ctrl_c(6),
        "--ckpt_path",
        "last",
    ]


def test_the_resume_command_names_the_file_when_last_would_not_find_it(tmp_path, capsys):
    """Without a ModelCheckpoint dirpath in the config, ``--ckpt_path last`` finds nothing: the summary names the
    file instead, and that command resumes."""
    checkpoint = {"class_path": "ModelCheckpoint", "init_args": {"save_last": True}}
    config = teacher_config(tmp_path, **{"trainer.callbacks": [checkpoint]})
    main(["fit", "--config", str(config)])
    entries = summary(capsys.readouterr().out)
    folder = tmp_path / "tb" / "version_0" / "checkpoints"  # Lightning's default, under the logs
    assert entries["best checkpoint"] == f"{folder / 'epoch=0-step=4.ckpt'}  (no monitor: the newest)"
    assert entries["last checkpoint"] == str(folder / "last.ckpt")
    resume = shlex.split(entries["resume"])
    assert resume[-2:] == ["--ckpt_path", str(folder / "last.ckpt")]
    main([*resume[1:], "--trainer.max_epochs", "2"])
    resumed = tmp_path / "tb" / "version_1" / "checkpoints" / "last.ckpt"  # Lightning's default: a new version
    assert torch.load(resumed, weights_only=True)["global_step"] == 8


def test_test_and_validate_of_a_checkpoint_log_into_the_fits_tensorboard_run(tmp_path):
    config = teacher_config(tmp_path)
    main(["fit", "--config", str(config)])
    run = tmp_path / "tb" / "version_0"
    fit_config = (run / "config.yaml").read_text()
    checkpoint = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert recorded_run(checkpoint) == ((tmp_path / "tb").resolve(), 0)
    assert "hp_metric" not in tags(run)  # no placeholder hyper-parameter metric

    main(["test", "--config", str(config), "--ckpt_path", "last"])
    main(["validate", "--config", str(config), "--ckpt_path", str(next((tmp_path / "ckpt").glob("epoch=*.ckpt")))])
    assert sorted(path.name for path in (tmp_path / "tb").iterdir()) == ["version_0"]
    assert len(list(run.glob("events.out.tfevents.*"))) == 3  # fit, test, validate: one run
    assert {"train/loss", "val/acc", "test/acc"} <= tags(run)
    assert (run / "config.yaml").read_text() == fit_config  # the fit's own config is kept
    assert yaml.safe_load((run / "config_test.yaml").read_text())["ckpt_path"] == str(tmp_path / "ckpt" / "last.ckpt")
    assert (run / "config_validate.yaml").is_file()

    # without a checkpoint of this run, a test is a run of its own
    main(["test", "--config", str(config)])
    assert sorted(path.name for path in (tmp_path / "tb").iterdir()) == ["version_0", "version_1"]


def test_a_checkpoint_cannot_send_logs_outside_its_run(tmp_path):
    """A recorded run is reused only as ``version_<N>`` under the logger's own folder: any other value is ignored."""
    root = str(tmp_path.resolve())
    assert recorded_run({RUN_KEY: {"root_dir": root, "version": 3}}) == (tmp_path.resolve(), 3)
    for bad in ("../../elsewhere", -1, True, 1.0, None):
        assert recorded_run({RUN_KEY: {"root_dir": root, "version": bad}}) is None
    assert recorded_run({RUN_KEY: "version_0"}) is None and recorded_run({}) is None

    config = teacher_config(tmp_path)
    main(["fit", "--config", str(config)])
    last = tmp_path / "ckpt" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    checkpoint[RUN_KEY]["version"] = "../../escaped"
    torch.save(checkpoint, last)
    main(["test", "--config", str(config), "--ckpt_path", str(last)])
    assert sorted(path.name for path in (tmp_path / "tb").iterdir()) == ["version_0", "version_1"]
    assert not (tmp_path / "escaped").exists()
