"""Exact mid-epoch resume: the noise loaders save and restore their position (Lightning's stateful-dataloader
protocol), so a run stopped mid-epoch and resumed with ``--ckpt_path last`` ends with the weights of a run that was
never stopped, and Lightning does not warn that the loader is not resumable."""

import warnings

import pytest
import torch
import yaml
from conftest import FIXED_RANKS, TEACHER, tiny_config
from torch.utils.data import DataLoader

from kegnet_pl.cli import main
from kegnet_pl.data import NoiseDataModule
from kegnet_pl.data.noise import ResumableLoader

NOT_RESUMABLE = "dataloader is not resumable"


def stop_at(step: int) -> str:
    return f'--trainer.callbacks+={{"class_path": "pause.StopAtStep", "init_args": {{"step": {step}}}}}'


def generator_config(folder):
    model = {"class_path": "GeneratorModule", "init_args": {"teacher": TEACHER, "n_generators": 2, "beta": 1.0}}
    data = {"class_path": "NoiseDataModule", "init_args": {"batch_size": 8, "batches_per_epoch": 3}}
    return tiny_config(folder, "generator", model=model, data=data, **{"trainer.max_epochs": 2})


@pytest.fixture(scope="module")
def generators(tmp_path_factory):
    """A generator checkpoint for the student stages (two epochs of the generator config above)."""
    folder = tmp_path_factory.mktemp("generators")
    main(["fit", "--config", str(generator_config(folder))])
    return str(folder / "ckpt" / "last.ckpt")


def student_config(folder, generators, pool_size):
    model = {
        "class_path": "StudentModule",
        "init_args": {"generators": generators, "student": FIXED_RANKS, "pool_size": pool_size},
    }
    data = {"class_path": "NoiseDataModule", "init_args": {"batch_size": 8, "batches_per_epoch": 3, "val_batches": 1}}
    return tiny_config(folder, "student", model=model, data=data, **{"trainer.max_epochs": 2})


def stop_and_resume(config, step: int, extra: list[str]) -> list[str]:
    """Fit ``config`` with a checkpoint every step, stopped (an exception) at global step ``step``, then resume it
    with ``--ckpt_path last``; the warnings of the resumed run."""
    every_step = yaml.safe_load(config.read_text())
    every_step["trainer"]["callbacks"][0]["init_args"]["every_n_train_steps"] = 1
    config.write_text(yaml.safe_dump(every_step))
    with pytest.raises(RuntimeError, match=f"stopped at step {step}"):
        main(["fit", "--config", str(config), *extra, stop_at(step)])
    stopped = torch.load(config.parent / "ckpt" / "last.ckpt", weights_only=True)
    assert stopped["global_step"] == step
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        main(["fit", "--config", str(config), *extra, "--ckpt_path", "last"])
    return [str(warning.message) for warning in caught]


def assert_same_weights(straight, resumed, steps: int) -> None:
    a = torch.load(straight / "ckpt" / "last.ckpt", weights_only=True)
    b = torch.load(resumed / "ckpt" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == steps
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key


@pytest.mark.parametrize(
    ("step", "extra", "steps"),
    [
        (4, [], 6),  # one batch into the second epoch
        (2, ["--trainer.limit_train_batches", "2"], 4),  # after the last of the batches the trainer takes an epoch
    ],
)
def test_generator_stage_resumed_mid_epoch_ends_as_an_uninterrupted_run(tmp_path, step, extra, steps):
    main(["fit", "--config", str(generator_config(tmp_path / "straight")), *extra])
    warned = stop_and_resume(generator_config(tmp_path / "resumed"), step, extra)
    assert_same_weights(tmp_path / "straight", tmp_path / "resumed", steps)
    assert not [message for message in warned if NOT_RESUMABLE in message]


@pytest.mark.parametrize("pool_size", [8, None], ids=["pool", "fresh-samples"])
def test_student_stage_resumed_mid_epoch_ends_as_an_uninterrupted_run(tmp_path, generators, pool_size):
    main(["fit", "--config", str(student_config(tmp_path / "straight", generators, pool_size))])
    warned = stop_and_resume(student_config(tmp_path / "resumed", generators, pool_size), 4, [])
    assert_same_weights(tmp_path / "straight", tmp_path / "resumed", 6)
    assert not [message for message in warned if NOT_RESUMABLE in message]


def test_the_loader_saves_its_position_and_the_next_pass_starts_there():
    loader = ResumableLoader(list(range(5)), batch_size=None)
    batches = iter(loader)
    assert [next(batches), next(batches)] == [0, 1]
    state = loader.state_dict()
    assert state == {"served": 2}

    restored = ResumableLoader(list(range(5)), batch_size=None)
    restored.load_state_dict(state)
    assert list(restored) == [2, 3, 4]  # the rest of the interrupted pass ...
    assert restored.state_dict() == {"served": 0}  # ... which is then complete
    assert list(restored) == [0, 1, 2, 3, 4]  # and the next pass is whole


def test_a_pass_the_trainer_cut_short_is_complete():
    loader = ResumableLoader(list(range(5)), batch_size=None, pass_length=lambda: 2)
    batches = iter(loader)
    next(batches)
    assert loader.state_dict() == {"served": 1}
    next(batches)
    assert loader.state_dict() == {"served": 0}  # the trainer takes 2 batches an epoch: resume at a new epoch


def test_the_noise_training_loader_is_resumable_and_the_others_need_not_be():
    data = NoiseDataModule(batch_size=4, batches_per_epoch=3, val_batches=2)
    assert isinstance(data.train_dataloader(), ResumableLoader)
    (val,) = data.val_dataloader()
    assert type(val) is DataLoader  # evaluation always runs whole: nothing to resume


def test_over_several_processes_each_rank_takes_its_share_in_a_fixed_order():
    """Not Lightning's sampler, which reshuffles every epoch: a resumed epoch would get the first epoch's order."""
    from types import SimpleNamespace

    data = NoiseDataModule(batch_size=4, batches_per_epoch=6)
    shares = []
    for rank in (0, 1):
        data.trainer = SimpleNamespace(world_size=2, global_rank=rank, num_training_batches=3)
        loader = data.train_dataloader()
        shares.append(list(loader))
        assert list(loader) == shares[-1]  # every epoch
    assert shares == [[0, 2, 4], [1, 3, 5]]


def teacher_on_csv(tmp_path, **overrides):
    rows = torch.randn(80, 6, generator=torch.Generator().manual_seed(0))
    csv = tmp_path.parent / "rows.csv"
    csv.write_text("".join(",".join(f"{v:.4f}" for v in row) + f",{i % 3}\n" for i, row in enumerate(rows.tolist())))
    model = {
        "class_path": "TeacherModule",
        "init_args": {"arch": "mlp", "input_shape": [6], "num_classes": 3, "arch_kwargs": {"dropout": 0.3}},
    }
    data = {"class_path": "CSVDataModule", "init_args": {"path": str(csv), "batch_size": 8}}
    return tiny_config(tmp_path, "teacher", model, data, **{"trainer.max_epochs": 2, **overrides})


@pytest.mark.parametrize("workers", [0, 2])
def test_teacher_resumed_after_an_epoch_ends_as_an_uninterrupted_run(tmp_path, workers):
    """The training loader's shuffling goes on from epoch to epoch and dropout draws from torch's global random
    state; a resumed run takes up both from the checkpoint, so its second epoch is neither the first epoch's order
    again nor the dropout masks of a freshly seeded run. Persistent workers (kept across epochs, made anew on
    resume) change nothing."""
    workers = {"data.init_args.num_workers": workers}
    main(["fit", "--config", str(teacher_on_csv(tmp_path / "straight", **workers))])
    config = teacher_on_csv(tmp_path / "split", **workers)
    main(["fit", "--config", str(config), "--trainer.max_epochs", "1"])
    main(["fit", "--config", str(config), "--ckpt_path", "last"])
    a = torch.load(tmp_path / "straight" / "ckpt" / "last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "split" / "ckpt" / "last.ckpt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 2
    assert torch.equal(a["CSVDataModule"]["shuffle_state"], b["CSVDataModule"]["shuffle_state"])
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
