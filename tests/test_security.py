"""A file never chooses code: crafted checkpoints that name code to import are refused by every reader, in one line.

Each crafted file names either ``torch.hub:load`` on a local folder whose ``hubconf.py`` creates a marker file, or
a module that creates a marker file when imported (on the import path of the reader). No marker may appear.
"""

import os
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import CRAFTED_MODULE, ROOT, TEACHER, craft

from kegnet_pl.compression.cli import main as compress_main
from kegnet_pl.errors import CheckpointError, ConfigError
from kegnet_pl.loading import load_classifier
from kegnet_pl.modules import GeneratorModule, StudentModule, TeacherModule
from kegnet_pl.nets import build_classifier, trust_arch
from kegnet_pl.nets.registry import validate_spec

PAYLOADS = ["torch.hub:load", "import side effect"]


def crafted(kind, payload, code_site, tiny_checkpoints, tmp_path):
    """A crafted file of ``kind`` (teacher, generator or student checkpoint) carrying ``payload``."""
    spec = code_site["payloads"][payload]
    if kind == "teacher":
        return craft(TEACHER, tmp_path / "teacher.ckpt", None, spec)
    return craft(tiny_checkpoints[kind], tmp_path / f"{kind}.ckpt", "teacher_spec", spec)


def assert_refused_in_one_line(message, path, payload, code_site):
    asked = code_site["payloads"][payload]["arch"]
    assert "\n" not in message, message
    assert str(path) in message and asked in message and "KEGNET_TRUST_ARCH" in message, message
    assert not any(marker.exists() for marker in code_site["markers"]), "the crafted file ran code"
    assert CRAFTED_MODULE not in sys.modules


PYTHON_READERS = {
    "load_classifier": ("teacher", lambda path: load_classifier(path)),
    "TeacherModule.load_from_checkpoint": ("teacher", lambda path: TeacherModule.load_from_checkpoint(path)),
    "GeneratorModule.load_from_checkpoint": ("generator", lambda path: GeneratorModule.load_from_checkpoint(path)),
    "StudentModule.load_from_checkpoint": ("student", lambda path: StudentModule.load_from_checkpoint(path)),
    "StudentModule(generators=...)": ("generator", lambda path: StudentModule(generators=str(path))),
    "StudentModule(teacher=...)": (
        "teacher",
        lambda path: StudentModule(generators=str(GENERATOR[0]), teacher=str(path)),
    ),
    "GeneratorModule(teacher=...)": ("teacher", lambda path: GeneratorModule(teacher=str(path), n_generators=1)),
}
GENERATOR = []  # the clean generator checkpoint, for the reader that takes another teacher


@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize("reader", sorted(PYTHON_READERS))
def test_python_readers_refuse_a_file_that_names_code(
    reader, payload, code_site, tiny_checkpoints, tmp_path, monkeypatch
):
    monkeypatch.syspath_prepend(str(code_site["folder"]))
    GENERATOR[:] = [tiny_checkpoints["generator"]]
    kind, read = PYTHON_READERS[reader]
    path = crafted(kind, payload, code_site, tiny_checkpoints, tmp_path)
    with pytest.raises(CheckpointError) as refused:
        read(path)
    assert_refused_in_one_line(str(refused.value), path, payload, code_site)


TRUST_ENV = "KEGNET_TRUST_ARCH"


def console_cases(tmp_path, path, kind, tiny_checkpoints):
    """The command line that feeds ``path`` (a crafted file of ``kind``) to a console script."""
    student = {
        "trainer": {"max_steps": 1, "logger": False, "enable_checkpointing": False, "enable_progress_bar": False},
        "model": {"class_path": "StudentModule", "init_args": {"generators": str(tiny_checkpoints["generator"])}},
        "data": {"class_path": "NoiseDataModule", "init_args": {"batch_size": 4, "batches_per_epoch": 1}},
    }
    config = tmp_path / "student.yaml"
    config.write_text(yaml.safe_dump(student))
    return {
        "kegnet fit --model.generators": [
            "kegnet_pl.cli",
            "fit",
            "--config",
            str(config),
            "--model.generators",
            str(path),
        ],
        "kegnet fit --model.teacher": ["kegnet_pl.cli", "fit", "--config", str(config), "--model.teacher", str(path)],
        "kegnet fit --ckpt_path": ["kegnet_pl.cli", "fit", "--config", str(config), "--ckpt_path", str(path)],
        "kegnet-compress": ["kegnet_pl.compression.cli", str(path), "--preset", "lenet5-s1"],
    }


CONSOLE_READERS = {
    "kegnet fit --model.generators": "generator",
    "kegnet fit --model.teacher": "teacher",
    "kegnet fit --ckpt_path": "student",
    "kegnet-compress": "teacher",
}


def test_console_scripts_refuse_a_file_that_names_code(code_site, tiny_checkpoints, tmp_path):
    """Every (console reader, payload) pair, run as child processes side by side."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(code_site["folder"]), str(ROOT)])}
    env.pop(TRUST_ENV, None)
    runs = {}
    for reader, kind in CONSOLE_READERS.items():
        for payload in PAYLOADS:
            folder = tmp_path / f"{reader}-{payload}".replace(" ", "_")
            folder.mkdir()
            path = crafted(kind, payload, code_site, tiny_checkpoints, folder)
            args = console_cases(folder, path, kind, tiny_checkpoints)[reader]
            child = subprocess.Popen(
                [sys.executable, "-m", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
            )
            runs[reader, payload] = (path, child)
    for (reader, payload), (path, child) in runs.items():
        _, stderr = child.communicate(timeout=300)
        assert child.returncode == 2, (reader, payload, stderr[-3000:])
        prog = "kegnet-compress" if reader == "kegnet-compress" else "kegnet"
        lines = [line for line in stderr.splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith(f"{prog}: error: ")]
        assert len(errors) == 1 and "Traceback" not in stderr and len(lines) <= 3, (reader, payload, stderr[-3000:])
        assert_refused_in_one_line(errors[0], path, payload, code_site)


def test_the_user_can_allow_an_architecture_by_name(code_site, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(code_site["folder"]))
    path = craft(TEACHER, tmp_path / "teacher.ckpt", None, code_site["payloads"]["import side effect"])
    trust_arch(f"{CRAFTED_MODULE}:Net")
    net = load_classifier(path)
    assert type(net).__name__ == "LeNet5" and code_site["markers"][0].exists()  # allowed, so its code ran


def test_the_environment_variable_allows_an_architecture(code_site, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(code_site["folder"]))
    path = craft(TEACHER, tmp_path / "teacher.ckpt", None, code_site["payloads"]["import side effect"])
    monkeypatch.setenv(TRUST_ENV, f"other.mod:Net, {CRAFTED_MODULE}.Net")
    assert type(load_classifier(path)).__name__ == "LeNet5"


def test_an_arch_typed_on_the_command_line_is_trusted(code_site, tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(code_site["folder"]))
    path = craft(TEACHER, tmp_path / "teacher.ckpt", None, code_site["payloads"]["import side effect"])
    with pytest.raises(SystemExit):
        compress_main([str(path), "--preset", "lenet5-s1"])
    assert "refused to import" in capsys.readouterr().err and not code_site["markers"][0].exists()
    assert compress_main([str(path), "--preset", "lenet5-s1", "--arch", f"{CRAFTED_MODULE}:Net"]) == 0
    assert "ratio=" in capsys.readouterr().out


def test_an_arch_in_the_kegnet_config_is_trusted(tmp_path):
    from conftest import teacher_config

    from kegnet_pl.cli import build_cli

    config = teacher_config(tmp_path, **{"model.init_args.arch": "kegnet_pl.nets.classifiers:LeNet5"})
    cli = build_cli(["--config", str(config)], run=False)
    assert type(cli.model.net).__name__ == "LeNet5"


def test_missing_shape_in_kegnet_compress_speaks_in_its_flags(tmp_path, capsys):
    from kegnet_pl.nets import LeNet5

    torch.save(LeNet5().state_dict(), tmp_path / "w.pt")
    with pytest.raises(SystemExit) as exit_info:
        compress_main([str(tmp_path / "w.pt"), "--preset", "lenet5-s1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "give them on the command line, for example --arch lenet5 --input-shape 1 32 32 --num-classes 10" in err
    with pytest.raises(SystemExit):
        compress_main([str(tmp_path / "w.pt"), "--preset", "lenet5-s1", "--arch", "lenet5", "--num-classes", "10"])
    assert "does not say its input_shape; give it on the command line, for example --input-shape 1 32 32" in (
        capsys.readouterr().err
    )


SPEC = {"arch": "mlp", "input_shape": [64], "num_classes": 10, "arch_kwargs": {"units": 20, "dropout": 0.1}}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"arch_kwargs": {"units": 20, "activation": "relu"}}, "the argument 'activation', which it does not declare"),
        ({"arch_kwargs": {"units": {"class_path": "os.system"}}}, "values from a file must be plain"),
        ({"arch_kwargs": {"units": 10**12}}, "values from a file must be plain"),
        ({"arch_kwargs": ["units", 20]}, "it must be a dictionary"),
        ({"input_shape": [10**6, 10**6]}, "input_shape=[1000000, 1000000]"),
        ({"input_shape": [64.0]}, "input_shape=[64.0]"),
        ({"input_shape": "64"}, "input_shape='64'"),
        ({"num_classes": 1}, "num_classes=1; it must be an integer from 2"),
        ({"num_classes": True}, "num_classes=True"),
        ({"arch": "lenet7"}, "'lenet7', which is not registered"),
        ({"arch": 5}, "records no architecture name"),
        ({"arch": "os:system"}, "refused to import 'os:system'"),
    ],
)
def test_a_spec_from_a_file_is_checked(change, message):
    with pytest.raises(CheckpointError, match="'f.ckpt'") as refused:
        validate_spec({**SPEC, **change}, "'f.ckpt'")
    assert message in str(refused.value)
    assert validate_spec(SPEC, "'f.ckpt'")["arch_kwargs"] == SPEC["arch_kwargs"]


def test_an_untrusted_path_is_never_imported_from_python_either(monkeypatch, code_site):
    monkeypatch.syspath_prepend(str(code_site["folder"]))
    with pytest.raises(ConfigError, match="import path that you have not trusted"):
        build_classifier(f"{CRAFTED_MODULE}:Net", (1, 32, 32), 10)
    assert CRAFTED_MODULE not in sys.modules and not code_site["markers"][0].exists()


def test_trust_arch_option_of_kegnet_allows_a_file_to_name_that_path(code_site, tmp_path, monkeypatch):
    from kegnet_pl.cli import build_cli, user_error

    monkeypatch.syspath_prepend(str(code_site["folder"]))
    path = craft(TEACHER, tmp_path / "teacher.ckpt", None, code_site["payloads"]["import side effect"])
    config = tmp_path / "generator.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "trainer": {"logger": False, "enable_checkpointing": False},
                "model": {"class_path": "GeneratorModule", "init_args": {"teacher": str(path), "n_generators": 1}},
                "data": {"class_path": "NoiseDataModule", "init_args": {"batch_size": 4, "batches_per_epoch": 1}},
            }
        )
    )
    with pytest.raises(Exception) as refused:  # the parser wraps the error raised while instantiating
        build_cli(["--config", str(config)], run=False)
    assert isinstance(user_error(refused.value), CheckpointError) and "refused to import" in str(refused.value)
    assert not code_site["markers"][0].exists()
    cli = build_cli(["--config", str(config), "--trust_arch", f"{CRAFTED_MODULE}:Net"], run=False)
    assert type(cli.model.teacher.net).__name__ == "LeNet5" and code_site["markers"][0].exists()
