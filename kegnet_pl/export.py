"""``kegnet export``: the network of a checkpoint alone, in a file that runs without kegnet_pl.

    kegnet export runs/student/last.ckpt --format onnx --out student.onnx
    kegnet export runs/student/last.ckpt --format pt2  --out student.pt2

What is exported is the classifier the checkpoint exists for: the student of a StudentModule, DFADModule or DAFLModule
checkpoint (``module.student``: no teacher, no generators, no sample source), or the classifier of a TeacherModule
checkpoint (a file written by :func:`kegnet_pl.loading.save_classifier`, such as ``checkpoints/*.ckpt``), so that a
student and its teacher can be deployed and timed the same way. A generator checkpoint holds no classifier of its own
and is refused. Checkpoints are read through :mod:`kegnet_pl.loading` (``weights_only``, no code named by the file).

Both formats come from one ``torch.export`` trace of the network in eval mode, with a dynamic batch dimension:
``.pt2`` is that ExportedProgram (``torch.export.save``); ``.onnx`` is its translation by ``torch.onnx.export``
(``dynamo=True``, the exporter PyTorch maintains; it needs ``onnxscript``). Before the file takes its name, it is
loaded back (``torch.export.load`` / ``onnxruntime``) and run at two batch sizes, and its outputs must match the
checkpoint's network to :data:`TOLERANCE`. An existing file is never replaced unless ``--force`` is given.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

import kegnet_pl.modules.dafl  # noqa: F401  (a checkpoint's _class_path may name DAFLModule: imported, so allowed)
import kegnet_pl.modules.dfad  # noqa: F401  (and DFADModule)
from kegnet_pl.atomic import atomic_write
from kegnet_pl.compression import parameter_count
from kegnet_pl.errors import CheckpointError, ConfigError, KegnetError, OneLineParser
from kegnet_pl.loading import NET_PREFIX, load_classifier_and_spec, read_checkpoint, recorded_module
from kegnet_pl.modules.student import StudentModule
from kegnet_pl.nets.registry import TRUST_ENV

PROG = "kegnet export"
FORMATS = ("onnx", "pt2")
#: largest difference allowed between the exported file's outputs and the checkpoint's network (absolute and relative)
TOLERANCE = 1e-5
#: batch sizes at which the exported file is checked (1 and another: the batch dimension is dynamic)
CHECK_BATCHES = (1, 5)
#: names of the ONNX graph's input, output and batch dimension
INPUT_NAME, OUTPUT_NAME, BATCH_NAME = "input", "logits", "batch"
#: what each format needs beyond torch (module name -> package name), installed by ``pip install kegnet-pl[export]``
FORMAT_PACKAGES = {"onnx": {"onnx": "onnx", "onnxscript": "onnxscript", "onnxruntime": "onnxruntime"}, "pt2": {}}


@dataclass(frozen=True)
class Exported:
    """What :func:`export_checkpoint` wrote: the file, the network's role and class, its size and the largest
    difference measured between the file's outputs and the checkpoint's network."""

    path: Path
    role: str
    network: str
    params: int
    input_shape: tuple[int, ...]
    max_difference: float

    def line(self) -> str:
        shape = ", ".join(map(str, self.input_shape))
        batches = " and ".join(map(str, CHECK_BATCHES))
        return (
            f"wrote {str(self.path)!r}: the {self.role} ({self.network}, {self.params:,} parameters), input "
            f"[batch, {shape}]; largest difference to the checkpoint at batch {batches}: {self.max_difference:.1e}"
        )


def network_of_checkpoint(path: str | Path) -> tuple[nn.Module, str, tuple[int, ...]]:
    """The network a checkpoint exists for, in eval mode on the CPU, with its role (``student`` / ``teacher``) and its
    input shape; a :class:`CheckpointError` for a checkpoint that holds neither."""
    obj = read_checkpoint(path)
    state = obj.get("state_dict")
    keys = [key for key in state if isinstance(key, str)] if isinstance(state, Mapping) else []
    hparams = obj.get("hyper_parameters") or {}
    if any(key.startswith("student.") for key in keys):
        module = student_class(recorded_module(obj)).load_from_checkpoint(str(path), map_location="cpu")
        return module.student.eval(), "student", tuple(module.input_shape)
    if any(key.startswith(NET_PREFIX) for key in keys) and hparams.get("arch") is not None:
        net, spec = load_classifier_and_spec(path)
        return net.eval(), "teacher", tuple(int(size) for size in spec["input_shape"])
    if any(key.startswith("generators.") for key in keys):
        held = "generators and the teacher they were trained against, no student"
    elif keys:
        held = f"no student (its weights are {', '.join(sorted({key.split('.')[0] + '.*' for key in keys})[:4])})"
    else:
        held = "no Lightning state_dict"
    raise CheckpointError(
        f"{str(path)!r} holds {held}; export the checkpoint of a student stage (StudentModule, DFADModule, "
        "DAFLModule) or of a teacher (TeacherModule)"
    )


def student_class(class_path: Any) -> type[StudentModule]:
    """The imported StudentModule subclass that a checkpoint names (:func:`kegnet_pl.loading.recorded_module`), in
    full or by its short name; StudentModule itself for any other value (the student network is built the same way)."""
    found, todo = {}, [StudentModule]
    while todo:
        cls = todo.pop()
        found.update({f"{cls.__module__}.{cls.__name__}": cls, cls.__name__: cls})
        todo.extend(cls.__subclasses__())
    return found.get(class_path, StudentModule) if isinstance(class_path, str) else StudentModule


def missing_packages(fmt: str) -> list[str]:
    """The packages that exporting to ``fmt`` needs and that are not installed."""
    return [package for module, package in FORMAT_PACKAGES[fmt].items() if importlib.util.find_spec(module) is None]


def export_network(net: nn.Module, input_shape: Sequence[int], fmt: str) -> bytes:
    """The bytes of ``net`` (in eval mode) exported to ``fmt`` with a dynamic batch dimension."""
    example = (torch.zeros(2, *input_shape),)  # 2, not 1: torch.export specialises a size-1 dimension
    batch = torch.export.Dim(BATCH_NAME, min=1)
    with torch.no_grad():
        program = torch.export.export(net, example, dynamic_shapes=({0: batch},))
    if fmt == "pt2":
        buffer = io.BytesIO()
        torch.export.save(program, buffer)
        return buffer.getvalue()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # onnxscript's notices about its own versions; the result is checked below
        onnx_program = torch.onnx.export(
            program,
            example,
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: BATCH_NAME},),
            verbose=False,
        )
    return onnx_program.model_proto.SerializeToString()


def run_exported(data: bytes, fmt: str) -> Any:
    """A function ``x -> logits`` that runs exported bytes as a user without kegnet_pl would."""
    if fmt == "pt2":
        module = torch.export.load(io.BytesIO(data)).module()
        return lambda x: module(x).detach()
    import onnxruntime

    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0])


def largest_difference(data: bytes, fmt: str, net: nn.Module, input_shape: Sequence[int], seed: int = 0) -> float:
    """Run the exported bytes and ``net`` on the same N(0, 1) inputs at :data:`CHECK_BATCHES`; a
    :class:`ConfigError` if they differ by more than :data:`TOLERANCE`, else the largest absolute difference."""
    run = run_exported(data, fmt)
    generator = torch.Generator().manual_seed(seed)
    worst = 0.0
    for size in CHECK_BATCHES:
        x = torch.randn(size, *input_shape, generator=generator)
        with torch.no_grad():
            expected, got = net(x), run(x)
        if got.shape != expected.shape or not torch.allclose(got, expected, rtol=TOLERANCE, atol=TOLERANCE):
            diff = (got - expected).abs().max().item() if got.shape == expected.shape else float("nan")
            raise ConfigError(
                f"the {fmt} export does not reproduce the network at batch {size} (shape {tuple(got.shape)} vs "
                f"{tuple(expected.shape)}, largest difference {diff:.2e} > {TOLERANCE}); nothing was written"
            )
        worst = max(worst, (got - expected).abs().max().item())
    return worst


def export_checkpoint(checkpoint: str | Path, fmt: str, out: str | Path | None = None, force: bool = False) -> Exported:
    """Export the network of ``checkpoint`` (see the module docstring) to ``out`` (default: beside the checkpoint,
    with the format as suffix), checked, written atomically, never over an existing file unless ``force``."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    missing = missing_packages(fmt)
    if missing:
        raise ConfigError(
            f"exporting to {fmt} needs {' and '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not "
            "installed; pip install 'kegnet-pl[export]'"
        )
    out = Path(out) if out is not None else Path(checkpoint).with_suffix(f".{fmt}")
    other = out.suffix.lower().lstrip(".")
    if other in FORMATS and other != fmt:  # a serving stack reads the file by its suffix
        raise ConfigError(
            f"--out {str(out)!r} names a .{other} file, but --format is {fmt}; give --format {other}, or an --out "
            f"ending in .{fmt}"
        )
    if out.exists() and not force:
        raise ConfigError(f"{str(out)!r} exists; choose another --out, or give --force to replace it")
    if out.is_dir():
        raise ConfigError(f"{str(out)!r} is a directory; give --out a file name")
    net, role, input_shape = network_of_checkpoint(checkpoint)
    data = export_network(net, input_shape, fmt)
    difference = largest_difference(data, fmt, net, input_shape)
    with atomic_write(out, "wb") as handle:
        handle.write(data)
    return Exported(out, role, type(net).__name__, parameter_count(net), input_shape, difference)


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser of ``kegnet export``."""
    parser = OneLineParser(
        prog=PROG,
        description="Write the student of a checkpoint alone (no teacher, no generators) as ONNX or as a "
        "torch.export program (.pt2), with a dynamic batch dimension, checked against the checkpoint. A TeacherModule "
        "checkpoint exports its classifier. Architectures given by import path must be trusted: "
        f"{TRUST_ENV}=my_pkg.nets:MyNet.",
    )
    parser.add_argument(
        "checkpoint", metavar="CHECKPOINT", help="a StudentModule, DFADModule, DAFLModule or TeacherModule checkpoint"
    )
    parser.add_argument(
        "--format",
        required=True,
        choices=FORMATS,
        help="onnx (run with onnxruntime; needs pip install 'kegnet-pl[export]') or pt2 (torch.export.load)",
    )
    parser.add_argument("--out", metavar="FILE", help="the file to write (default: the checkpoint's name, .onnx/.pt2)")
    parser.add_argument("--force", action="store_true", help="replace FILE if it exists (default: refuse)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``kegnet export`` with ``argv`` (the arguments after ``export``); return 0 or exit with status 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        exported = export_checkpoint(args.checkpoint, args.format, args.out, args.force)
    except KegnetError as err:
        parser.exit(2, f"{PROG}: error: {' '.join(str(err).split())}\n")
    print(exported.line())
    return 0


__all__ = ["FORMATS", "TOLERANCE", "Exported", "export_checkpoint", "export_network", "main", "network_of_checkpoint"]
