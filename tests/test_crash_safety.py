"""Crashes, failed writes, NaN losses and reused folders never cost a good checkpoint."""

import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from conftest import teacher_config

from kegnet_pl.cli import main


def last_step(folder):
    return torch.load(folder / "ckpt" / "last.ckpt", weights_only=True)["global_step"]


def test_sigkill_mid_epoch_then_resume_from_the_last_complete_checkpoint(tmp_path):
    config = teacher_config(tmp_path, **{"trainer.max_epochs": 3, "trainer.limit_train_batches": 40})
    paused = tmp_path / "paused_at_step_50"
    pause = {"class_path": "pause.PauseAtStep", "init_args": {"step": 50, "signal_file": str(paused)}}
    with_pause = yaml.safe_load(config.read_text())
    with_pause["trainer"]["callbacks"].append(pause)  # the child stops mid-epoch 2 (step 50 of 40..80) and waits
    config_with_pause = tmp_path / "with_pause.yaml"
    config_with_pause.write_text(yaml.safe_dump(with_pause))
    command = [sys.executable, "-m", "kegnet_pl.cli", "fit", "--config", str(config_with_pause)]
    tests = str(pathlib.Path(__file__).parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")]))}
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=env
    )
    deadline = time.time() + 300
    while not paused.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert paused.exists(), "the child reached step 50"
    assert last_step(tmp_path) == 40, "the first epoch's checkpoint is complete"

    main(["fit", "--config", str(config), "--ckpt_path", "last"])
    assert last_step(tmp_path) == 120
    for path in (tmp_path / "ckpt").glob("*.ckpt"):
        torch.load(path, weights_only=True)  # every checkpoint on disk is whole


def test_a_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    config = teacher_config(tmp_path)
    main(["fit", "--config", str(config)])
    before = (tmp_path / "ckpt" / "last.ckpt").read_bytes()

    real_save = torch.save

    def save_then_fail(obj, handle, *args, **kwargs):
        real_save(obj, handle, *args, **kwargs)
        handle.truncate(1000)  # part of the file made it to disk, then the disk filled up
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("kegnet_pl.checkpointing.torch.save", save_then_fail)
    with pytest.raises(OSError, match="No space left on device"):
        main(["fit", "--config", str(config), "--trainer.max_epochs", "2", "--ckpt_path", "last"])
    assert (tmp_path / "ckpt" / "last.ckpt").read_bytes() == before
    assert not [p for p in (tmp_path / "ckpt").iterdir() if p.name.endswith(".tmp")]

    monkeypatch.undo()
    main(["fit", "--config", str(config), "--trainer.max_epochs", "2", "--ckpt_path", "last"])
    assert last_step(tmp_path) == 8


def test_nan_loss_stops_naming_stage_step_and_term_and_keeps_the_checkpoint(tmp_path, monkeypatch, capsys):
    config = teacher_config(tmp_path)
    main(["fit", "--config", str(config)])
    before = (tmp_path / "ckpt" / "last.ckpt").read_bytes()

    import kegnet_pl.modules.teacher as teacher_module

    cross_entropy = torch.nn.functional.cross_entropy

    def nan_cross_entropy(logits, target):
        return cross_entropy(logits, target) * float("nan")

    monkeypatch.setattr(teacher_module.F, "cross_entropy", nan_cross_entropy)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--trainer.max_epochs", "2", "--ckpt_path", "last"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "teacher stage: the loss term loss_ce is nan at step 4 (epoch 1)" in err
    assert (tmp_path / "ckpt" / "last.ckpt").read_bytes() == before


def test_nan_in_a_generator_loss_term(tmp_path, monkeypatch, capsys):
    from test_generator_module import generator_config

    import kegnet_pl.modules.generator as generator_module

    monkeypatch.setattr(generator_module, "decoder_loss", lambda z_hat, z: (z_hat - z).pow(2).mean() / 0.0 * 0.0)
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(generator_config(tmp_path))])
    assert "generator stage (generator 0): the loss term loss_dec is nan at step 0 (epoch 0)" in capsys.readouterr().err
    assert not (tmp_path / "ckpt" / "last.ckpt").exists()


def test_a_new_run_refuses_a_folder_with_another_runs_checkpoints(tmp_path, capsys):
    config = teacher_config(tmp_path)
    main(["fit", "--config", str(config)])
    before = (tmp_path / "ckpt" / "last.ckpt").read_bytes()
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert (
        "already holds checkpoints of another run (" in err and "--ckpt_path last" in err and "--overwrite true" in err
    )
    assert (tmp_path / "ckpt" / "last.ckpt").read_bytes() == before
    main(["fit", "--config", str(config), "--overwrite", "true"])
    assert (tmp_path / "ckpt" / "last.ckpt").read_bytes() == before  # nothing is deleted: the new run's
    assert (tmp_path / "ckpt" / "last-v1.ckpt").is_file()  # files get a version suffix


def test_one_check_for_all_generators_names_the_first_bad_term():
    from kegnet_pl.errors import NumericalError
    from kegnet_pl.modules.checks import all_finite, check_finite_groups

    good = {"loss_cls": torch.tensor(1.0), "loss_dec": torch.tensor(0.5)}
    check_finite_groups(3, 0, {"generator stage (generator 0)": good, "generator stage (generator 1)": good})
    assert all_finite([]) and not all_finite([torch.tensor(1.0), torch.tensor([0.0, float("inf")])])
    bad = {"loss_cls": torch.tensor(1.0), "loss_dec": torch.tensor(float("inf"))}
    named = r"^generator stage \(generator 1\): the loss term loss_dec is inf at step 3"
    with pytest.raises(NumericalError, match=named):
        check_finite_groups(3, 0, {"generator stage (generator 0)": good, "generator stage (generator 1)": bad})


def _check_on_two_processes(rank: int, port: int, folder: str) -> None:
    import torch.distributed as dist

    from kegnet_pl.errors import NumericalError
    from kegnet_pl.modules.checks import check_finite

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    loss = torch.tensor(float("nan") if rank == 1 else 1.0)
    try:
        check_finite("student stage", 7, 0, {"loss_kd": loss})
        said = "went on"
    except NumericalError as err:
        said = str(err)
    (pathlib.Path(folder) / f"rank{rank}.txt").write_text(said)
    dist.destroy_process_group()


def test_a_loss_not_finite_on_one_process_stops_every_process(tmp_path):
    """Under DDP the process whose loss is NaN stops; the others must stop too, not wait for it in the gradients'
    all-reduce until the collective times out."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.start_processes(_check_on_two_processes, args=(port, str(tmp_path)), nprocs=2, start_method="spawn")
    said = {rank: (tmp_path / f"rank{rank}.txt").read_text() for rank in (0, 1)}
    assert said[1].startswith("student stage: the loss term loss_kd is nan at step 7")
    assert said[0].startswith("student stage: a loss is not finite on another process at step 7")
