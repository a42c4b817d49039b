"""Are KegNet's compressed students faster than their teacher on a CPU? Parameters, FLOPs and latency.

For a teacher checkpoint and student presets, built as ``StudentModule`` builds them (a compression preset: the
teacher Tucker-compressed; a registered classifier such as ``lenet5-half``: that network, as DFAD and DAFL train it
from scratch), it prints a Markdown table with one row per network, measured by :mod:`kegnet_pl.payoff` (the
figures ``kegnet-pipeline`` adds to its results):

* parameters;
* FLOPs of one sample (``torch.utils.flop_counter.FlopCounterMode``: convolutions and matrix products, 2 per
  multiply-add; pooling and activations are not counted);
* CPU latency of a forward pass in inference mode at batch 1 and batch 256 (``torch.utils.benchmark.Timer``,
  ``blocked_autorange``, median), every network in the same process with the same thread count (``--threads``);
  the networks are measured in turn, ``--rounds`` times, and each figure is the median of its rounds, so a machine
  shared with another job slows all of them alike;

each also as the teacher's figure over the student's (``x``: larger is smaller / faster; below 1, the student is
slower than its teacher), then a sentence for each student slower than its teacher. With ``--onnxruntime``, the same
latencies are also measured for the ONNX file that ``kegnet export`` writes, run by an
``onnxruntime.InferenceSession`` with ``--threads`` intra-op threads. The last line is a key=value summary.

Usage: ``OMP_NUM_THREADS=1 python benchmarks/student_speed.py`` (one thread: on a machine shared with other jobs, more
threads make the latencies swing by several times from run to run)
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

import torch
from torch import nn

from kegnet_pl import payoff
from kegnet_pl.compression import PRESETS
from kegnet_pl.export import INPUT_NAME, export_network
from kegnet_pl.nets import classifier_names

TEACHER = "checkpoints/mnist_lenet5.ckpt"  # the shipped full-MNIST LeNet5 (99.31%)
STUDENTS = ("lenet5-paper-s1", "lenet5-paper-s2", "lenet5-paper-s3", "lenet5-half")  # the paper's three, DFAD/DAFL's


def onnx_runner(net: nn.Module, input_shape: Sequence[int], threads: int) -> Callable[[torch.Tensor], object]:
    """A callable ``x -> logits`` that runs ``net`` as ``kegnet export --format onnx`` writes it, in onnxruntime."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    data = export_network(net, input_shape, "onnx")
    session = onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {INPUT_NAME: x.numpy()})


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default=TEACHER, help=f"teacher checkpoint (default: {TEACHER})")
    parser.add_argument("--students", nargs="+", default=list(STUDENTS), help="presets or registered classifiers")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for every measurement (default: 1)")
    parser.add_argument("--rounds", type=int, default=3, help="measurements of every network, in turn (default: 3)")
    parser.add_argument("--onnxruntime", action="store_true", help="also time the exported ONNX files")
    parser.add_argument("--min-run-time", type=float, default=0.3, help="seconds per measurement (default: 0.3)")
    args = parser.parse_args(argv)
    unknown = [name for name in args.students if name not in PRESETS and name not in classifier_names()]
    if unknown:
        parser.error(f"unknown students {unknown}: give presets ({', '.join(PRESETS)}) or registered classifiers")
    if args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")

    torch.set_num_threads(args.threads)
    nets, spec = payoff.networks(args.teacher, args.students)
    shape = tuple(spec["input_shape"])
    sizes = {name: payoff.size(net, shape) for name, net in nets.items()}
    runs: dict[str, Callable] = dict(nets)
    if args.onnxruntime:  # the same networks, exported, timed in the same rounds
        for name, net in nets.items():
            sizes[f"{name}, onnxruntime"] = sizes[name]
            runs[f"{name}, onnxruntime"] = onnx_runner(net, shape, args.threads)
    times = payoff.latencies(runs, shape, args.threads, args.rounds, args.min_run_time)

    def teacher_of(name: str) -> str:  # a student is compared with its teacher run the same way (PyTorch or ONNX)
        return "teacher, onnxruntime" if name.endswith(", onnxruntime") else "teacher"

    measured = {name: {**sizes[name], **times[name]} for name in runs}
    figures = {name: payoff.with_ratios(measured[name], measured[teacher_of(name)]) for name in runs}
    labels = {
        name: name.replace("teacher", f"teacher ({spec['arch']})", 1) if name.startswith("teacher") else name
        for name in runs
    }
    print(f"teacher {args.teacher} ({spec['arch']}), torch {torch.__version__}, {args.threads} thread(s)")
    print("\n".join(payoff.table({labels[name]: row for name, row in figures.items()})))
    for sentence in payoff.slower({labels[name]: row for name, row in figures.items()}):
        print(sentence)

    summary: dict[str, float] = {"threads": args.threads}
    for name in [name for name in runs if not name.startswith("teacher")]:
        key = name.replace(", onnxruntime", "_onnx")
        if key == name:
            summary[f"{key}_params_x"] = figures[name]["compression_ratio"]
            summary[f"{key}_flops_x"] = figures[name]["flops_ratio"]
        for batch in payoff.BATCHES:
            summary[f"{key}_speedup_b{batch}"] = figures[name][f"speedup_b{batch}"]
    print(" ".join(f"{key}={value}" for key, value in summary.items()))
    return summary


if __name__ == "__main__":
    main()
