"""Are KegNet's compressed students faster than their teacher on a CPU? Parameters, FLOPs and latency.

For a teacher checkpoint and student presets, built as ``StudentModule`` builds them (a compression preset: the
teacher Tucker-compressed by :func:`kegnet_pl.compression.compress_with_report`; a registered classifier such as
``lenet5-half``: that network, as DFAD and DAFL train it from scratch), it prints one row per network:

* parameters (:func:`kegnet_pl.compression.parameter_count`);
* FLOPs of one sample (``torch.utils.flop_counter.FlopCounterMode``: convolutions and matrix products, 2 per
  multiply-add; pooling and activations are not counted);
* CPU latency of a forward pass in inference mode at batch 1 and batch 256 (``torch.utils.benchmark.Timer``,
  ``blocked_autorange``, median), every network in the same process with the same thread count (``--threads``);
  the networks are measured in turn, ``--rounds`` times, and each figure is the median of its rounds, so a machine
  shared with another job slows all of them alike;

each also as the teacher's figure over the student's (``x``: larger is smaller / faster; below 1, the student is
slower than its teacher). With ``--onnxruntime``, the same latencies are also measured for the ONNX file that
``kegnet export`` writes, run by an ``onnxruntime.InferenceSession`` with ``--threads`` intra-op threads. The last
line is a key=value summary.

Usage: ``OMP_NUM_THREADS=2 python benchmarks/student_speed.py --threads 2``
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.benchmark import Timer
from torch.utils.flop_counter import FlopCounterMode

from kegnet_pl.compression import PRESETS, compress_with_report, parameter_count
from kegnet_pl.export import INPUT_NAME, export_network
from kegnet_pl.loading import load_classifier_and_spec
from kegnet_pl.nets import build_classifier, classifier_names

TEACHER = "checkpoints/mnist_lenet5.ckpt"  # the shipped full-MNIST LeNet5 (99.31%)
STUDENTS = ("lenet5-paper-s1", "lenet5-paper-s2", "lenet5-paper-s3", "lenet5-half")  # the paper's three, DFAD/DAFL's
BATCHES = (1, 256)  # one request at a time, and a throughput batch


def build_student(name: str, teacher: nn.Module, spec: dict) -> nn.Module:
    """The student ``StudentModule(student=name)`` would train: a registered classifier, or the compressed teacher."""
    if name in classifier_names():
        return build_classifier(name, spec["input_shape"], spec["num_classes"]).eval()
    student, _ = compress_with_report(teacher, name)  # a copy: the teacher is left as it is
    return student.eval()


def flops_per_sample(net: nn.Module, input_shape: Sequence[int]) -> int:
    """FLOPs of one forward pass of one sample (``FlopCounterMode``)."""
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        net(torch.zeros(1, *input_shape))
    return counter.get_total_flops()


def latency(net: nn.Module, input_shape: Sequence[int], batch: int, threads: int, min_run_time: float) -> float:
    """Median seconds of one forward pass at ``batch`` (``Timer.blocked_autorange``)."""
    timer = Timer(
        stmt="with torch.inference_mode(): net(x)",
        globals={"net": net, "x": torch.randn(batch, *input_shape, generator=torch.Generator().manual_seed(0))},
        num_threads=threads,
    )
    return timer.blocked_autorange(min_run_time=min_run_time).median


def onnx_runner(net: nn.Module, input_shape: Sequence[int], threads: int) -> nn.Module:
    """A callable ``x -> logits`` that runs ``net`` as ``kegnet export --format onnx`` writes it, in onnxruntime."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    data = export_network(net, input_shape, "onnx")
    session = onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {INPUT_NAME: x.numpy()})


def ratio(teacher: float, student: float) -> str:
    return f"{teacher / student:.2f}x"


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default=TEACHER, help=f"teacher checkpoint (default: {TEACHER})")
    parser.add_argument("--students", nargs="+", default=list(STUDENTS), help="presets or registered classifiers")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for every measurement (default: 2)")
    parser.add_argument("--rounds", type=int, default=3, help="measurements of every network, in turn (default: 3)")
    parser.add_argument("--onnxruntime", action="store_true", help="also time the exported ONNX files")
    parser.add_argument("--min-run-time", type=float, default=0.3, help="seconds per measurement (default: 0.3)")
    args = parser.parse_args(argv)
    unknown = [name for name in args.students if name not in PRESETS and name not in classifier_names()]
    if unknown:
        parser.error(f"unknown students {unknown}: give presets ({', '.join(PRESETS)}) or registered classifiers")

    torch.set_num_threads(args.threads)
    teacher, spec = load_classifier_and_spec(args.teacher)
    shape = tuple(spec["input_shape"])
    nets = {"teacher": teacher.eval(), **{name: build_student(name, teacher, spec) for name in args.students}}
    params = {name: parameter_count(net) for name, net in nets.items()}
    flops = {name: flops_per_sample(net, shape) for name, net in nets.items()}
    if args.onnxruntime:  # the same networks, exported
        params.update({f"{name} (onnx)": params[name] for name in nets})
        flops.update({f"{name} (onnx)": flops[name] for name in nets})
        nets.update({f"{name} (onnx)": onnx_runner(net, shape, args.threads) for name, net in list(nets.items())})
    rounds: dict[tuple[str, int], list[float]] = {(name, batch): [] for name in nets for batch in BATCHES}
    for _ in range(args.rounds):
        for batch in BATCHES:
            for name, net in nets.items():
                rounds[name, batch].append(latency(net, shape, batch, args.threads, args.min_run_time))
    seconds = {key: statistics.median(values) for key, values in rounds.items()}

    def teacher_of(name: str) -> str:  # a student is compared with its teacher run the same way (PyTorch or ONNX)
        return "teacher (onnx)" if name.endswith("(onnx)") else "teacher"

    print(f"teacher {args.teacher} ({spec['arch']}), torch {torch.__version__}, {args.threads} thread(s)")
    header = ["network", "params", "x", "MFLOPs", "x", "batch 1 (us)", "x", "batch 256 (ms)", "x"]
    rows = [header, ["-" * len(cell) for cell in header]]
    for name in nets:
        one, many = seconds[name, 1], seconds[name, 256]
        rows.append(
            [
                name,
                f"{params[name]:,}",
                ratio(params[teacher_of(name)], params[name]),
                f"{flops[name] / 1e6:.3f}",
                ratio(flops[teacher_of(name)], flops[name]),
                f"{one * 1e6:.1f}",
                ratio(seconds[teacher_of(name), 1], one),
                f"{many * 1e3:.2f}",
                ratio(seconds[teacher_of(name), 256], many),
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:  # names left-aligned, figures right-aligned
        print(
            "  ".join(
                [row[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
            )
        )

    summary: dict[str, float] = {"threads": args.threads}
    for name in [*args.students, *(f"{name} (onnx)" for name in args.students if args.onnxruntime)]:
        key = name.replace(" (onnx)", "_onnx")
        if key == name:
            summary[f"{key}_params_x"] = round(params["teacher"] / params[name], 3)
            summary[f"{key}_flops_x"] = round(flops["teacher"] / flops[name], 3)
        for batch in BATCHES:
            summary[f"{key}_speedup_b{batch}"] = round(seconds[teacher_of(name), batch] / seconds[name, batch], 3)
    print(" ".join(f"{key}={value}" for key, value in summary.items()))
    return summary


if __name__ == "__main__":
    main()
