"""Every stage with 2 CPU processes (ddp_spawn): outputs are written once and the ranks draw different data."""

import importlib.util

import pytest
import torch
from conftest import ROOT, TEACHER, tiny_config
from pytorch_lightning import Callback

from kegnet_pl.cli import main

DDP = str(ROOT / "configs" / "trainer" / "ddp_cpu2.yaml")


class RecordBatches(Callback):
    """Saves what each rank trained on in its first step."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0 and trainer.current_epoch == 0:
            torch.save({k: v.cpu() for k, v in batch.items()}, f"{self.folder}/batch_rank{trainer.global_rank}.pt")


def recorder(folder):
    return f'--trainer.callbacks+={{"class_path": "test_ddp.RecordBatches", "init_args": {{"folder": "{folder}"}}}}'


def outputs_written_once(folder):
    checkpoints = sorted(path.name for path in (folder / "ckpt").glob("*.ckpt"))
    events = list((folder / "tb").rglob("events.out.tfevents.*"))
    return checkpoints, events


def test_generator_and_student_stages_under_ddp_spawn(tmp_path, capfd):
    gen_dir = tmp_path / "generator"
    generator = tiny_config(
        gen_dir,
        "generator",
        model={"class_path": "GeneratorModule", "init_args": {"teacher": TEACHER, "n_generators": 2}},
        data={"class_path": "NoiseDataModule", "init_args": {"batch_size": 8, "batches_per_epoch": 4}},
    )
    images = '--trainer.callbacks+={"class_path": "kegnet_pl.images.SampleImages"}'
    main(["fit", "--config", str(generator), "--config", DDP, recorder(gen_dir), images])
    checkpoints, events = outputs_written_once(gen_dir)
    assert checkpoints == ["epoch=0-step=2.ckpt", "last.ckpt"]  # 4 batches over 2 ranks: 2 steps, saved once
    assert len(events) == 1
    pngs = sorted(p.name for p in (gen_dir / "ckpt").glob("*.png"))
    assert pngs == ["samples_gen-all.png", "samples_gen0.png", "samples_gen1.png"]
    rank0, rank1 = (torch.load(gen_dir / f"batch_rank{r}.pt") for r in (0, 1))
    assert not torch.allclose(rank0["noise"], rank1["noise"])

    student_dir = tmp_path / "student"
    student = tiny_config(
        student_dir,
        "student",
        model={
            "class_path": "StudentModule",
            "init_args": {"generators": str(gen_dir / "ckpt" / "last.ckpt"), "pool_size": 32, "source": "kegnet"},
        },
        data={
            "class_path": "NoiseDataModule",
            "init_args": {"batch_size": 8, "batches_per_epoch": 4, "val_batches": 2},
        },
        checkpoint={"monitor": "val/agreement", "mode": "max"},
    )
    capfd.readouterr()
    main(["fit", "--config", str(student), "--config", DDP, recorder(student_dir)])
    captured = capfd.readouterr()
    checkpoints, events = outputs_written_once(student_dir)
    assert checkpoints == ["epoch=0-step=2.ckpt", "last.ckpt"] and len(events) == 1
    state = torch.load(student_dir / "ckpt" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 2
    rank0, rank1 = (torch.load(student_dir / f"batch_rank{r}.pt") for r in (0, 1))
    assert int(rank0["seed"]) != int(rank1["seed"])  # each rank draws its inputs, and its pool, from its own seed
    assert "sync_dist" not in captured.err  # epoch metrics are reduced across ranks, no warning
    for said in ("drawing a fixed pool of 64 samples", "pool of 64 samples drawn in", "kegnet fit done"):
        assert captured.out.count(said) == 1, said  # rank 0 speaks (32 per generator); each rank draws its pool


def test_the_two_rank_check_refuses_an_existing_folder_and_an_odd_batch_count(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("ddp_two_ranks", ROOT / "scripts" / "ddp_two_ranks.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    kept = tmp_path / "kept.txt"
    kept.write_text("an earlier run")
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--accelerator", "cpu", "--out", str(tmp_path)])
    assert exit_info.value.code == 2 and "exists; give a new folder" in capsys.readouterr().err
    assert kept.read_text() == "an earlier run"
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--accelerator", "cpu", "--out", str(tmp_path / "new"), "--batches", "7"])
    assert exit_info.value.code == 2 and "give an even number" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


class RecordDraws(Callback):
    """Saves, per rank, what torch's global random state (dropout's) draws at the first step of each epoch."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0:
            draws = torch.rand(4)
            torch.save(draws, f"{self.folder}/draws_rank{trainer.global_rank}_epoch{trainer.current_epoch}.pt")


def test_each_rank_draws_dropout_from_a_stream_of_its_own(tmp_path):
    rows = torch.randn(64, 6, generator=torch.Generator().manual_seed(0))
    (tmp_path / "rows.csv").write_text(
        "".join(",".join(f"{v:.4f}" for v in r) + f",{i % 3}\n" for i, r in enumerate(rows.tolist()))
    )
    model = {
        "class_path": "TeacherModule",
        "init_args": {"arch": "mlp", "input_shape": [6], "num_classes": 3, "arch_kwargs": {"dropout": 0.3}},
    }
    data = {"class_path": "CSVDataModule", "init_args": {"path": str(tmp_path / "rows.csv"), "batch_size": 8}}
    config = tiny_config(tmp_path, "teacher", model, data, **{"trainer.max_epochs": 2})
    record = f'--trainer.callbacks+={{"class_path": "test_ddp.RecordDraws", "init_args": {{"folder": "{tmp_path}"}}}}'
    main(["fit", "--config", str(config), "--config", DDP, record])
    draws = {(r, e): torch.load(tmp_path / f"draws_rank{r}_epoch{e}.pt") for r in (0, 1) for e in (0, 1)}
    assert not torch.equal(draws[0, 0], draws[1, 0]) and not torch.equal(draws[0, 1], draws[1, 1])
    assert not torch.equal(draws[0, 0], draws[0, 1])  # and a new stretch of it every epoch
