"""A user's mistakes: each gives one clear message, a non-zero exit, and no traceback from the CLI.

Each row: an id, the ``kegnet`` arguments (a tiny config is written first, see ``make_case``), and the text the
one-line error must contain.
"""

import pathlib

import pytest
import torch
import yaml
from conftest import ROOT, TEACHER, quiet_trainer, teacher_config

from kegnet_pl.cli import main
from kegnet_pl.nets import LeNet5


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def files(tmp):
    """Bad files for the cases, written to ``tmp``."""
    (tmp / "empty.ckpt").write_bytes(b"")
    torch.save(LeNet5().state_dict(), tmp / "full.ckpt")
    (tmp / "truncated.ckpt").write_bytes((tmp / "full.ckpt").read_bytes()[:4000])
    (tmp / "notes.ckpt").write_text("not a checkpoint\n" * 20)
    torch.save({"model_state": LeNet5().state_dict(), "x": _RunsCode(tmp / "code_ran")}, tmp / "evil.ckpt")
    (tmp / "labels.csv").write_text("\n".join(f"{i},{i + 1},{i}.5" for i in range(20)) + "\n")
    return tmp


def generator_yaml(tmp, **init_args):
    config = {
        "trainer": {"max_steps": 1, "logger": False, "enable_checkpointing": False, "enable_progress_bar": False},
        "model": {"class_path": "GeneratorModule", "init_args": {"teacher": TEACHER, "n_generators": 1, **init_args}},
        "data": {"class_path": "NoiseDataModule", "init_args": {"batch_size": 4, "batches_per_epoch": 1}},
    }
    path = tmp / f"generator_{len(list(tmp.glob('generator_*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def student_yaml(tmp, **init_args):
    config = {
        "trainer": {"max_steps": 1, "logger": False, "enable_checkpointing": False, "enable_progress_bar": False},
        "model": {"class_path": "StudentModule", "init_args": init_args},
        "data": {"class_path": "NoiseDataModule", "init_args": {"batch_size": 4, "batches_per_epoch": 1}},
    }
    path = tmp / f"student_{len(list(tmp.glob('student_*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


CASES = {
    "missing teacher file": (
        lambda t: ["fit", "--config", generator_yaml(t, teacher=str(t / "nope.ckpt"))],
        "does not exist",
    ),
    "empty teacher file": (lambda t: ["fit", "--config", generator_yaml(t, teacher=str(t / "empty.ckpt"))], "is empty"),
    "truncated teacher file": (
        lambda t: [
            "fit",
            "--config",
            generator_yaml(
                t, teacher=str(t / "truncated.ckpt"), teacher_arch="lenet5", num_classes=10, input_shape=[1, 32, 32]
            ),
        ],
        "truncated/corrupt",
    ),
    "not a checkpoint": (
        lambda t: ["fit", "--config", generator_yaml(t, teacher=str(t / "notes.ckpt"))],
        "is not a PyTorch checkpoint",
    ),
    "pickle that runs code": (
        lambda t: [
            "fit",
            "--config",
            generator_yaml(
                t, teacher=str(t / "evil.ckpt"), teacher_arch="lenet5", num_classes=10, input_shape=[1, 32, 32]
            ),
        ],
        "could run code",
    ),
    "teacher file that does not record its shape": (
        lambda t: ["fit", "--config", generator_yaml(t, teacher=str(t / "full.ckpt"))],
        "does not say its arch, input_shape, num_classes; give them, for example --model.init_args.teacher_arch lenet5 "
        "--model.init_args.input_shape '[1,32,32]' --model.init_args.num_classes 10; from Python, "
        "teacher_arch='lenet5', input_shape=[1, 32, 32], num_classes=10",
    ),
    "teacher architecture differs from config": (
        lambda t: ["fit", "--config", generator_yaml(t, teacher=TEACHER, teacher_arch="resnet14")],
        "holds a classifier with arch='lenet5', but arch='resnet14'",
    ),
    "teacher class count differs from generator config": (
        lambda t: ["fit", "--config", generator_yaml(t, num_classes=7)],
        "num_classes=10, but num_classes=7",
    ),
    "weights of another network": (
        lambda t: [
            "fit",
            "--config",
            generator_yaml(
                t, teacher=str(t / "full.ckpt"), teacher_arch="resnet14", num_classes=10, input_shape=[1, 32, 32]
            ),
        ],
        "do not fit the architecture 'resnet14'",
    ),
    "generators of a different teacher": (
        lambda t: [
            "fit",
            "--config",
            student_yaml(t, generators=str(t / "gen.ckpt"), teacher=str(ROOT / "checkpoints/digits_mlp.ckpt")),
        ],
        "trained for a teacher with 10 classes and input shape (1, 32, 32), but the teacher",
    ),
    "teacher file given as generators": (
        lambda t: ["fit", "--config", student_yaml(t, generators=TEACHER)],
        "is not a GeneratorModule checkpoint",
    ),
    "unknown architecture": (
        lambda t: ["fit", "--config", str(teacher_config(t)), "--model.init_args.arch", "lenet7"],
        "unknown classifier architecture 'lenet7'",
    ),
    "unknown compression layer": (
        lambda t: ["fit", "--config", student_yaml(t, generators=str(t / "gen.ckpt"), student={"conv9": 4})],
        "'conv9'",
    ),
    "rank larger than the layer": (
        lambda t: ["fit", "--config", student_yaml(t, generators=str(t / "gen.ckpt"), student={"conv3": [500, 4]})],
        "500",
    ),
    "zero batch size": (
        lambda t: ["fit", "--config", generator_yaml(t), "--data.init_args.batch_size", "0"],
        "batch_size must be positive, got 0",
    ),
    "zero batches per epoch": (
        lambda t: ["fit", "--config", generator_yaml(t), "--data.init_args.batches_per_epoch", "0"],
        "batches_per_epoch must be positive",
    ),
    "zero generators": (
        lambda t: ["fit", "--config", generator_yaml(t, n_generators=0)],
        "n_generators must be positive, got 0",
    ),
    "negative learning rate": (
        lambda t: ["fit", "--config", generator_yaml(t, lr=-0.1)],
        "lr must be positive, got -0.1",
    ),
    "negative alpha": (lambda t: ["fit", "--config", generator_yaml(t, alpha=-1.0)], "alpha must be >= 0, got -1.0"),
    "negative beta": (lambda t: ["fit", "--config", generator_yaml(t, beta=-2.0)], "beta must be >= 0, got -2.0"),
    "negative epochs": (lambda t: ["fit", "--config", generator_yaml(t), "--trainer.max_epochs", "-3"], "max_epochs"),
    "config key that does not exist": (
        lambda t: ["fit", "--config", generator_yaml(t), "--model.init_args.alpah", "1"],
        "GeneratorModule has no option --model.init_args.alpah; did you mean --model.init_args.alpha?",
    ),
    "misspelt model option": (
        lambda t: ["fit", "--config", generator_yaml(t), "--model.init_args.n_generator", "3"],
        "did you mean --model.init_args.n_generators?",
    ),
    "misspelt data option": (
        lambda t: ["fit", "--config", generator_yaml(t), "--data.init_args.batch_sise", "3"],
        "did you mean --data.init_args.batch_size?",
    ),
    "misspelt subcommand option": (
        lambda t: ["test", "--config", generator_yaml(t), "--ckpt_pth", "last"],
        "kegnet test has no option --ckpt_pth; did you mean --ckpt_path?",
    ),
    "misspelt group": (
        lambda t: ["fit", "--config", generator_yaml(t), "--modle.init_args.lr", "0.1"],
        "did you mean --model.init_args.lr?",
    ),
    "data root without the files": (
        lambda t: [
            "fit",
            "--config",
            str(teacher_config(t, data={"class_path": "MNISTDataModule", "init_args": {"root": str(t / "nodata")}})),
        ],
        "MNIST/raw/train-images-idx3-ubyte",
    ),
    "csv with non-integer labels": (
        lambda t: [
            "fit",
            "--config",
            str(teacher_config(t, data={"class_path": "CSVDataModule", "init_args": {"path": str(t / "labels.csv")}})),
        ],
        "labels must be integers",
    ),
}


@pytest.fixture(scope="module")
def generator_checkpoint(tmp_path_factory):
    from pytorch_lightning import Trainer

    from kegnet_pl.data import NoiseDataModule
    from kegnet_pl.modules import GeneratorModule

    folder = tmp_path_factory.mktemp("gen")
    trainer = Trainer(
        max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False
    )
    model = GeneratorModule(teacher=TEACHER, n_generators=1)
    trainer.fit(model, NoiseDataModule(batch_size=4, batches_per_epoch=1, **model.noise_settings()))
    trainer.save_checkpoint(folder / "gen.ckpt")
    return folder / "gen.ckpt"


def test_the_table_has_at_least_15_cases():
    assert len(CASES) >= 15


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_gives_one_clear_error(case, tmp_path, capsys, generator_checkpoint):
    import shutil

    make_args, message = CASES[case]
    shutil.copy(generator_checkpoint, files(tmp_path) / "gen.ckpt")
    with pytest.raises(SystemExit) as exit_info:
        main(make_args(tmp_path))
    assert exit_info.value.code not in (0, None)
    err = capsys.readouterr().err
    assert message in err, err[-2000:]
    assert "Traceback" not in err
    assert len([line for line in err.splitlines() if line.strip()]) <= 12, err  # short, not a 40-line traceback
    assert not (tmp_path / "code_ran").exists()


def test_missing_real_data_of_a_student_config_names_the_options_that_reach_it(tmp_path, capsys, generator_checkpoint):
    """eval_data's root is --data.init_args.eval_data.init_args.root; the real-data figures can be left out."""
    eval_data = {"class_path": "MNISTDataModule", "init_args": {"root": str(tmp_path / "nodata")}}
    args = ["fit", "--config", student_yaml(tmp_path, generators=str(generator_checkpoint), student={"fc2": [4, 4]})]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--data.init_args.eval_data", yaml.safe_dump(eval_data, default_flow_style=True)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    line = err.strip().splitlines()[-1]
    assert "Traceback" not in err and "--data.init_args.root" not in line
    assert "point --data.init_args.eval_data.init_args.root DIR at them" in line
    assert "leave out the real-data figures with --data.init_args.eval_data null" in line
    main([*args, "--data.init_args.eval_data", "null", "--trainer.default_root_dir", str(tmp_path)])  # the advice works


def test_a_stage_given_the_other_kind_of_data_says_which_it_needs(tmp_path, generator_ckpt):
    """From Python nothing links the data to the model: the wrong DataModule is named before any step."""
    from kegnet_pl.data import MNISTSubsetDataModule, NoiseDataModule
    from kegnet_pl.errors import ConfigError
    from kegnet_pl.modules import GeneratorModule, StudentModule, TeacherModule

    student = StudentModule(generators=generator_ckpt, student="lenet5-s1", pool_size=None)
    with pytest.raises(ConfigError, match=r"StudentModule trains without data, on NoiseDataModule batches, but got "):
        quiet_trainer(tmp_path).fit(student, MNISTSubsetDataModule(batch_size=8))
    generators = GeneratorModule(teacher=TEACHER, n_generators=2)
    with pytest.raises(ConfigError, match=r"needs noise batches with streams=2, num_classes=10, noise_dim=10, but the"):
        quiet_trainer(tmp_path).fit(generators, NoiseDataModule(batch_size=8, batches_per_epoch=1))
    teacher = TeacherModule(arch="lenet5", input_shape=[1, 32, 32], num_classes=10)
    with pytest.raises(ConfigError, match=r"TeacherModule trains on real labelled data, and NoiseDataModule holds"):
        quiet_trainer(tmp_path).fit(teacher, NoiseDataModule(batch_size=8, batches_per_epoch=1))


def test_resuming_from_a_checkpoint_of_other_settings_names_them(tmp_path, generator_ckpt):
    """trainer.fit(..., ckpt_path=...) into a module built otherwise: not torch's list of missing and misfit keys."""
    from kegnet_pl.data import NoiseDataModule
    from kegnet_pl.errors import CheckpointError
    from kegnet_pl.modules import GeneratorModule, StudentModule

    def student(preset):
        return StudentModule(generators=generator_ckpt, student=preset, pool_size=None)

    def resume(module, **settings):
        data = NoiseDataModule(batch_size=4, batches_per_epoch=1, **settings)
        quiet_trainer(tmp_path, max_steps=2).fit(module, data, ckpt_path=tmp_path / "s3.ckpt")

    trainer = quiet_trainer(tmp_path, max_steps=1)
    trainer.fit(student("lenet5-paper-s3"), NoiseDataModule(batch_size=4, batches_per_epoch=1))
    trainer.save_checkpoint(tmp_path / "s3.ckpt")
    with pytest.raises(CheckpointError, match=r"do not fit this StudentModule .*written with student='lenet5-paper-s3"):
        resume(student("lenet5-paper-s1"))
    generators = GeneratorModule(teacher=TEACHER, n_generators=2)
    with pytest.raises(CheckpointError, match=r"the checkpoint is a checkpoint of a StudentModule, not of a Generator"):
        resume(generators, **generators.noise_settings())


def test_a_python_run_never_writes_its_checkpoints_among_the_shipped_teachers(tmp_path, monkeypatch):
    """Trainer(logger=False) from the repository root would write to ./checkpoints, beside manifest.json."""
    from pytorch_lightning import Trainer

    from kegnet_pl.data import NoiseDataModule
    from kegnet_pl.errors import ConfigError
    from kegnet_pl.modules import GeneratorModule

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "manifest.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    generators = GeneratorModule(teacher=TEACHER, n_generators=1)
    trainer = Trainer(max_steps=1, logger=False, enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(ConfigError, match=r"into '.*checkpoints', the folder of the shipped teachers"):
        trainer.fit(generators, NoiseDataModule(batch_size=4, batches_per_epoch=1, **generators.noise_settings()))
    assert [path.name for path in (tmp_path / "checkpoints").iterdir()] == ["manifest.json"]
