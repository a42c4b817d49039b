"""``kegnet export``: the student alone in ONNX and torch.export files that match the checkpoint, driven through the
real ``kegnet`` entry point."""

from __future__ import annotations

import pytest
import torch
from conftest import TEACHER, module_checkpoint

from kegnet_pl.cli import main
from kegnet_pl.export import student_class
from kegnet_pl.loading import load_classifier
from kegnet_pl.modules import StudentModule
from kegnet_pl.modules.dfad import DFADModule

BATCHES = (1, 7)  # the batch dimension is dynamic: neither is the size the network was traced at


def run_file(path, fmt):
    """A function ``x -> logits`` that runs an exported file the way a user without kegnet_pl would."""
    if fmt == "pt2":
        module = torch.export.load(str(path)).module()
        return lambda x: module(x)
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: torch.from_numpy(session.run(None, {name: x.numpy()})[0])


def refused(capsys, *args: str) -> str:
    """Run ``kegnet ARGS``, which must stop with exit status 2 (an argument error), and return what it printed on
    stderr."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def assert_same_outputs(path, fmt, net, input_shape=(1, 32, 32)):
    run = run_file(path, fmt)
    for size in BATCHES:
        x = torch.randn(size, *input_shape, generator=torch.Generator().manual_seed(size))
        with torch.no_grad():
            torch.testing.assert_close(run(x), net(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_the_exported_student_matches_the_checkpoint(tmp_path, tiny_checkpoints, fmt, capsys):
    out = tmp_path / f"student.{fmt}"
    main(["export", str(tiny_checkpoints["student"]), "--format", fmt, "--out", str(out)])
    assert "the student (LeNet5" in capsys.readouterr().out
    student = StudentModule.load_from_checkpoint(tiny_checkpoints["student"]).student.eval()
    assert_same_outputs(out, fmt, student)


def test_an_existing_file_is_kept_unless_forced(tmp_path, tiny_checkpoints, capsys):
    out = tmp_path / "student.pt2"
    out.write_bytes(b"an earlier export")
    message = refused(capsys, "export", str(tiny_checkpoints["student"]), "--format", "pt2", "--out", str(out))
    assert message.count("\n") == 1 and "--force" in message
    assert out.read_bytes() == b"an earlier export"
    main(["export", str(tiny_checkpoints["student"]), "--format", "pt2", "--out", str(out), "--force"])
    assert_same_outputs(out, "pt2", StudentModule.load_from_checkpoint(tiny_checkpoints["student"]).student.eval())
    assert sorted(path.name for path in tmp_path.iterdir()) == ["student.pt2"]  # no temporary file left


def test_an_out_named_for_the_other_format_is_refused(tmp_path, tiny_checkpoints, capsys):
    out = tmp_path / "student.onnx"
    message = refused(capsys, "export", str(tiny_checkpoints["student"]), "--format", "pt2", "--out", str(out))
    assert message.count("\n") == 1
    assert "names a .onnx file, but --format is pt2; give --format onnx, or an --out ending in .pt2" in message
    assert not out.exists()


def test_a_generator_checkpoint_holds_no_student(tmp_path, tiny_checkpoints, capsys):
    out = tmp_path / "student.onnx"
    message = refused(capsys, "export", str(tiny_checkpoints["generator"]), "--format", "onnx", "--out", str(out))
    assert message.count("\n") == 1
    assert message.startswith("kegnet export: error:") and "no student" in message and "generator.ckpt" in message
    assert not out.exists()


def test_a_teacher_checkpoint_exports_its_classifier(tmp_path, capsys):
    out = tmp_path / "teacher.pt2"
    main(["export", TEACHER, "--format", "pt2", "--out", str(out)])
    assert "the teacher (LeNet5, 61,706 parameters)" in capsys.readouterr().out
    assert_same_outputs(out, "pt2", load_classifier(TEACHER))


def test_a_dfad_checkpoint_exports_its_student(tmp_path):
    """A checkpoint written by ``kegnet fit`` names its class (``_class_path``); the student is that class's."""
    torch.manual_seed(0)
    module = DFADModule(teacher=TEACHER, noise_dim=8, generator_width=8)  # lenet5-half, trained from scratch
    path = module_checkpoint(module, tmp_path / "dfad.ckpt")
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["hyper_parameters"]["_class_path"] = "kegnet_pl.modules.dfad.DFADModule"
    torch.save(checkpoint, path)
    assert student_class("kegnet_pl.modules.dfad.DFADModule") is DFADModule
    assert student_class("DFADModule") is DFADModule and student_class("elsewhere.Module") is StudentModule
    main(["export", str(path), "--format", "pt2", "--out", str(tmp_path / "dfad.pt2")])
    assert_same_outputs(tmp_path / "dfad.pt2", "pt2", module.student.eval())


def test_missing_onnx_packages_name_the_extra(tmp_path, tiny_checkpoints, monkeypatch, capsys):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "onnxscript" else find_spec(name))
    out = str(tmp_path / "s.onnx")
    message = refused(capsys, "export", str(tiny_checkpoints["student"]), "--format", "onnx", "--out", out)
    assert "onnxscript" in message and "pip install 'kegnet-pl[export]'" in message


def test_a_missing_format_is_a_one_line_error(tiny_checkpoints, capsys):
    message = refused(capsys, "export", str(tiny_checkpoints["student"]))
    assert message.count("\n") == 1 and "--format" in message


def test_kegnet_help_names_the_export_subcommand(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0 and "kegnet export CHECKPOINT" in " ".join(capsys.readouterr().out.split())


def test_predict_is_one_line_that_points_at_test_and_export(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = refused(capsys, "predict", "--config", "student.yaml", "--ckpt_path", "last")
    assert err.count("\n") == 1
    assert "predict is not a kegnet subcommand" in err and "kegnet test" in err and "kegnet export" in err
    assert list(tmp_path.iterdir()) == []  # no empty TensorBoard folder left behind
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "{fit,validate,test}" in capsys.readouterr().out
