"""Every shipped config parses through the real ``kegnet`` entry point (``--print_config`` instantiates nothing,
so the teacher, generator and data files the configs name need not exist)."""

import pytest
import yaml
from conftest import ROOT

from kegnet_pl.cli import main
from kegnet_pl.pipeline import check_methods

STAGE_CONFIGS = sorted(
    path for path in ROOT.glob("configs/*/*.yaml") if "model" in (yaml.safe_load(path.read_text()) or {})
)
TRAINER_PRESETS = sorted((ROOT / "configs/trainer").glob("*.yaml"))
BASE = ROOT / "configs/mnist_subset/generator.yaml"


def print_config(capsys, *args):
    """The config ``kegnet fit ... --print_config`` prints, as a dictionary."""
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *args, "--print_config"])
    captured = capsys.readouterr()
    assert exit_info.value.code == 0, captured.err
    return yaml.safe_load(captured.out)


def test_the_sweep_finds_the_configs():
    names = {str(path.relative_to(ROOT)) for path in STAGE_CONFIGS}
    assert {"configs/mnist_subset/teacher.yaml", "configs/mnist/generator.yaml", "configs/digits/student.yaml"} <= names
    assert {path.stem for path in TRAINER_PRESETS} >= {"cpu", "gpu", "ddp", "ddp_cpu2"}


@pytest.mark.parametrize("path", STAGE_CONFIGS, ids=lambda path: str(path.relative_to(ROOT / "configs")))
def test_stage_config_parses(path, capsys):
    config = print_config(capsys, "--config", str(path))
    assert config["model"]["class_path"].startswith("kegnet_pl.modules.")
    assert config["data"]["class_path"].startswith("kegnet_pl.data.")
    eval_data = config["data"]["init_args"].get("eval_data")
    if eval_data is not None:
        assert eval_data["class_path"].startswith("kegnet_pl.data.")


@pytest.mark.parametrize("path", STAGE_CONFIGS, ids=lambda path: str(path.relative_to(ROOT / "configs")))
def test_stage_config_states_its_output_folder_once(path):
    """Only ``trainer.default_root_dir``: no logger save_dir or checkpoint dirpath that would stay behind when
    ``--trainer.default_root_dir`` moves the run."""
    trainer = yaml.safe_load(path.read_text())["trainer"]
    assert trainer["default_root_dir"] == f"runs/{path.parent.name}/{path.stem}"
    assert "logger" not in trainer
    assert not [callback for callback in trainer.get("callbacks") or [] if "dirpath" in callback.get("init_args", {})]


@pytest.mark.parametrize("path", TRAINER_PRESETS, ids=lambda path: path.stem)
def test_trainer_preset_combines_with_a_stage_config(path, capsys):
    preset = yaml.safe_load(path.read_text())
    assert set(preset) == {"trainer"}, "a trainer preset holds only a trainer section"
    config = print_config(capsys, "--config", str(BASE), "--config", str(path))
    for key, value in preset["trainer"].items():
        assert config["trainer"][key] == value, key
    base = yaml.safe_load(BASE.read_text())
    assert config["trainer"]["max_epochs"] == base["trainer"]["max_epochs"]  # the stage config's own settings stay
    assert config["model"]["class_path"] == "kegnet_pl.modules.GeneratorModule"


PIPELINES = sorted(
    [*ROOT.glob("configs/*/pipeline.yaml"), *ROOT.glob("configs/*/demo.yaml"), *ROOT.glob("configs/*/compare*.yaml")]
)


@pytest.mark.parametrize("path", PIPELINES, ids=lambda path: f"{path.parent.name}/{path.stem}")
def test_pipeline_config_stage_arguments_parse(path, capsys):
    """A typo in a pipeline's generator_args, student_args or method_args fails here, not minutes into a run."""
    pipeline = yaml.safe_load(path.read_text())
    check_methods(
        pipeline.get("methods", ["kegnet"]), pipeline.get("method_configs", {}), pipeline.get("method_args", {})
    )
    stages = [(pipeline[f"{stage}_config"], pipeline.get(f"{stage}_args", [])) for stage in ("generator", "student")]
    if pipeline.get("scratch_args"):  # a student from scratch: the student stage's arguments, then these
        stages.append((pipeline["student_config"], [*pipeline.get("student_args", []), *pipeline["scratch_args"]]))
    for method in pipeline.get("methods", ["kegnet"]):
        if method != "kegnet":
            stages.append((pipeline["method_configs"][method], pipeline.get("method_args", {}).get(method, [])))
    for stage_config, args in stages:
        config = print_config(capsys, "--config", str(ROOT / stage_config), *args)
        last = dict(arg.removeprefix("--").split("=", 1) for arg in args)  # a later argument overrides an earlier
        for key, value in last.items():
            arg = f"--{key}={value}"
            section, *rest = key.split(".")
            node = config[section]
            for part in rest:
                node = node["init_args"][part] if "init_args" in node and part not in node else node[part]
            assert node == yaml.safe_load(value), arg  # as YAML reads the value: null, numbers, strings
