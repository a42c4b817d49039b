"""``--ckpt_path``: a checkpoint rebuilds its own networks whatever the config's preset says, and ``last`` with
nothing to resume or test is a one-line error."""

import pytest
import torch
from conftest import FIXED_RANKS, TEACHER, craft, teacher_config, tiny_config

from kegnet_pl.cli import main


def student_config(tmp_path, generators, student, **model_args):
    return tiny_config(
        tmp_path,
        "student",
        model={
            "class_path": "StudentModule",
            "init_args": {"generators": str(generators), "student": student, "pool_size": 8, **model_args},
        },
        data={
            "class_path": "NoiseDataModule",
            "init_args": {"batch_size": 4, "batches_per_epoch": 1, "val_batches": 1},
        },
    )


def generator_config(tmp_path, n_generators):
    return tiny_config(
        tmp_path,
        "generator",
        model={"class_path": "GeneratorModule", "init_args": {"teacher": TEACHER, "n_generators": n_generators}},
        data={
            "class_path": "NoiseDataModule",
            "init_args": {"batch_size": 4, "batches_per_epoch": 1, "val_batches": 1},
        },
    )


def one_line_error(capsys, args):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err)
    return err[-1]


@pytest.mark.parametrize("subcommand", ["test", "validate"])
def test_a_student_is_rebuilt_from_its_checkpoint_not_from_the_configs_preset(tmp_path, tiny_checkpoints, subcommand):
    """Trained with other ranks than the config's preset, and with the generator file gone: ``--ckpt_path last``
    and ``--ckpt_path FILE`` both rebuild the student the checkpoint holds."""
    generators = tmp_path / "generators.ckpt"
    generators.write_bytes(tiny_checkpoints["generator"].read_bytes())
    trained = {"conv2": [3, 3], "fc2": [4, 4]}
    main(["fit", "--config", str(student_config(tmp_path, generators, FIXED_RANKS)), "--model.student", str(trained)])
    generators.unlink()  # the checkpoint alone rebuilds teacher, source and student
    source = {"class_path": "KegnetGenerators", "init_args": {"checkpoint": str(generators)}}
    config = student_config(tmp_path, generators, "lenet5-s1", source=source)
    last = tmp_path / "ckpt" / "last.ckpt"
    for ckpt_path in ("last", str(last)):
        main([subcommand, "--config", str(config), "--ckpt_path", ckpt_path])
    assert torch.load(last, weights_only=True)["hyper_parameters"]["student_ranks"] == trained


def test_a_teacher_and_generators_are_rebuilt_from_their_checkpoints(tmp_path):
    other = {"arch": "mlp", "input_shape": [1024], "num_classes": 10}  # and starting weights that are not there
    config = teacher_config(tmp_path / "teacher", model={"class_path": "TeacherModule", "init_args": other})
    main(["test", "--config", str(config), "--ckpt_path", TEACHER, "--model.init_args.weights", str(tmp_path / "no")])

    main(["fit", "--config", str(generator_config(tmp_path / "generator", n_generators=1))])
    main(["test", "--config", str(generator_config(tmp_path / "generator", n_generators=3)), "--ckpt_path", "last"])


def test_a_checkpoint_of_another_module_is_one_line_naming_both(tmp_path, capsys, tiny_checkpoints):
    main(["fit", "--config", str(generator_config(tmp_path, n_generators=1))])
    config = student_config(tmp_path, tiny_checkpoints["generator"], FIXED_RANKS)
    line = one_line_error(capsys, ["test", "--config", str(config), "--ckpt_path", "last"])
    assert "holds a GeneratorModule but the config's model is a StudentModule" in line


def test_a_checkpoint_that_names_code_is_refused_by_test(tmp_path, capsys, tiny_checkpoints, code_site):
    crafted = craft(
        tiny_checkpoints["student"],
        tmp_path / "crafted.ckpt",
        "teacher_spec",
        code_site["payloads"]["import side effect"],
    )
    config = student_config(tmp_path, tiny_checkpoints["generator"], FIXED_RANKS)
    line = one_line_error(capsys, ["test", "--config", str(config), "--ckpt_path", str(crafted)])
    assert str(crafted) in line
    assert not any(marker.exists() for marker in code_site["markers"])


@pytest.mark.parametrize(
    ("subcommand", "fix"), [("fit", "drop --ckpt_path to start a new run"), ("test", "train first")]
)
def test_last_with_nothing_there_is_one_line(tmp_path, capsys, subcommand, fix):
    config = teacher_config(tmp_path)
    line = one_line_error(capsys, [subcommand, "--config", str(config), "--ckpt_path", "last"])
    assert f"no last.ckpt in {str(tmp_path / 'ckpt')!r}" in line and fix in line
    assert not (tmp_path / "ckpt").exists()  # nothing was trained


def test_last_without_a_checkpoint_folder_is_one_line(tmp_path, capsys):
    config = teacher_config(tmp_path, **{"trainer.callbacks": []})
    line = one_line_error(capsys, ["fit", "--config", str(config), "--ckpt_path", "last"])
    assert "dirpath of the config's ModelCheckpoint" in line and "drop --ckpt_path" in line


def test_a_python_made_checkpoint_of_another_module_is_named_by_the_command(tmp_path, capsys, tiny_checkpoints):
    """A checkpoint saved from Python records its class only in ``kegnet_pl_module`` (no ``_class_path``): the
    command names it and the ``--model`` to use before building anything, as for its own checkpoints."""
    assert "_class_path" not in torch.load(tiny_checkpoints["generator"], weights_only=True)["hyper_parameters"]
    config = student_config(tmp_path, tiny_checkpoints["generator"], FIXED_RANKS)
    line = one_line_error(capsys, ["test", "--config", str(config), "--ckpt_path", str(tiny_checkpoints["generator"])])
    assert "holds a GeneratorModule but the config's model is a StudentModule" in line
    assert "--model GeneratorModule" in line
