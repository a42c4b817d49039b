"""The payoff of compression: what a student saves against its teacher in parameters, arithmetic and CPU time.

For each network of a set (a teacher and the students StudentModule builds from it, :func:`build_student`):

* ``params``: :func:`kegnet_pl.compression.parameter_count`;
* ``flops``: FLOPs of a forward pass of one sample (``torch.utils.flop_counter.FlopCounterMode``: convolutions and
  matrix products, 2 per multiply-add; pooling and activations are not counted);
* ``latency_b1_ms``, ``latency_b256_ms``: median milliseconds of a forward pass in inference mode on the CPU at
  batch 1 and batch 256 (``torch.utils.benchmark.Timer.blocked_autorange``), every network in the same process with
  the same thread count, measured in turn ``rounds`` times (so a machine shared with another job slows all of them
  alike), each figure the median of its rounds;

and each as a ratio to a reference network (the teacher): the reference's figure over the network's, so above 1
the network is smaller or faster and below 1 larger or slower (``compression_ratio``, ``flops_ratio``,
``speedup_b1``, ``speedup_b256``). ``benchmarks/student_speed.py`` and ``kegnet-pipeline``'s results use it.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.benchmark import Timer
from torch.utils.flop_counter import FlopCounterMode

from kegnet_pl.compression import compress_with_report, parameter_count
from kegnet_pl.loading import load_classifier_and_spec
from kegnet_pl.nets import build_classifier, classifier_names, trust_arch

BATCHES = (1, 256)  # one request at a time, and a throughput batch
#: each figure's ratio to the reference network (the reference's figure over the network's)
RATIOS = {
    "params": "compression_ratio",
    "flops": "flops_ratio",
    **{f"latency_b{batch}_ms": f"speedup_b{batch}" for batch in BATCHES},
}
#: what a results row of ``kegnet-pipeline`` gains (its ``params`` and ``compression_ratio`` come from the stage)
ROW_KEYS = (
    "flops",
    "flops_ratio",
    *(key for batch in BATCHES for key in (f"latency_b{batch}_ms", f"speedup_b{batch}")),
)


def build_student(name: str, teacher: nn.Module, spec: Mapping[str, Any]) -> nn.Module:
    """The student ``StudentModule(student=name)`` would train, in eval mode: a registered classifier (trained from
    scratch, such as ``lenet5-half``), or a copy of the teacher compressed by the preset ``name``."""
    if name in classifier_names():
        return build_classifier(name, spec["input_shape"], spec["num_classes"]).eval()
    student, _ = compress_with_report(teacher, name)  # a copy: the teacher is left as it is
    return student.eval()


def teacher_network(
    teacher: str | Path,
    arch: str | None = None,
    input_shape: Sequence[int] | None = None,
    num_classes: int | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """The teacher from its file, in eval mode, and its spec (``arch``, ``input_shape``, ``num_classes`` describe a
    file that does not record them; an import path given as ``arch`` is trusted)."""
    if arch is not None:
        trust_arch(arch)
    net, spec = load_classifier_and_spec(teacher, arch, input_shape, num_classes)
    return net.eval(), spec


def networks(
    teacher: str | Path,
    students: Sequence[str],
    arch: str | None = None,
    input_shape: Sequence[int] | None = None,
    num_classes: int | None = None,
) -> tuple[dict[str, nn.Module], dict[str, Any]]:
    """``{"teacher": ..., <student>: ...}`` built from the teacher's file (:func:`teacher_network`), and the
    teacher's spec."""
    net, spec = teacher_network(teacher, arch, input_shape, num_classes)
    return {"teacher": net, **{name: build_student(name, net, spec) for name in students}}, spec


def flops_per_sample(net: nn.Module, input_shape: Sequence[int]) -> int:
    """FLOPs of one forward pass of one sample (``FlopCounterMode``)."""
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        net(torch.zeros(1, *input_shape))
    return int(counter.get_total_flops())


def size(net: nn.Module, input_shape: Sequence[int]) -> dict[str, int]:
    """``{"params": ..., "flops": ...}``: the network's parameter count and FLOPs per sample."""
    return {"params": parameter_count(net), "flops": flops_per_sample(net, input_shape)}


def latency(
    run: Callable[[torch.Tensor], Any], input_shape: Sequence[int], batch: int, threads: int, min_run_time: float
) -> float:
    """Median seconds of one call of ``run`` (a network, or any callable of a batch) on a batch of ``batch`` random
    inputs, in inference mode with ``threads`` torch threads (``Timer.blocked_autorange``)."""
    timer = Timer(
        stmt="with torch.inference_mode(): run(x)",
        globals={"run": run, "x": torch.randn(batch, *input_shape, generator=torch.Generator().manual_seed(0))},
        num_threads=threads,
    )
    return timer.blocked_autorange(min_run_time=min_run_time).median


def latencies(
    runs: Mapping[str, Callable[[torch.Tensor], Any]],
    input_shape: Sequence[int],
    threads: int = 1,
    rounds: int = 3,
    min_run_time: float = 0.3,
) -> dict[str, dict[str, float]]:
    """``{name: {"latency_b1_ms": ..., "latency_b256_ms": ...}}``: every callable timed in turn at each of
    :data:`BATCHES`, ``rounds`` times, each figure the median of its rounds, in milliseconds."""
    seconds: dict[tuple[str, int], list[float]] = {(name, batch): [] for name in runs for batch in BATCHES}
    for _ in range(rounds):
        for batch in BATCHES:
            for name, run in runs.items():
                seconds[name, batch].append(latency(run, input_shape, batch, threads, min_run_time))
    return {
        name: {f"latency_b{batch}_ms": round(1e3 * statistics.median(seconds[name, batch]), 4) for batch in BATCHES}
        for name in runs
    }


def with_ratios(figures: Mapping[str, Any], reference: Mapping[str, Any]) -> dict[str, Any]:
    """``figures`` and, for each figure of :data:`RATIOS` that either of them has, the reference's figure over this
    one's (3 decimals; None where either figure is missing)."""
    ratios = {}
    for key, ratio in RATIOS.items():
        if key in figures or key in reference:
            mine, theirs = figures.get(key), reference.get(key)
            ratios[ratio] = round(theirs / mine, 3) if mine and theirs is not None else None
    return {**figures, **ratios}


def measure(
    nets: Mapping[str, nn.Module],
    input_shape: Sequence[int],
    reference: str = "teacher",
    threads: int = 1,
    rounds: int = 3,
    min_run_time: float = 0.3,
) -> dict[str, dict[str, Any]]:
    """Every network's parameters, FLOPs per sample and (``threads`` > 0) CPU latencies, with their ratios to the
    network named ``reference``; with ``threads`` 0 the latencies and speed-ups are None."""
    figures: dict[str, dict[str, Any]] = {name: size(net, input_shape) for name, net in nets.items()}
    if threads > 0:
        for name, times in latencies(nets, input_shape, threads, rounds, min_run_time).items():
            figures[name].update(times)
    else:
        for name in figures:
            figures[name].update({f"latency_b{batch}_ms": None for batch in BATCHES})
    return {name: with_ratios(mine, figures[reference]) for name, mine in figures.items()}


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def table(figures: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """A Markdown table, one row per network (labelled by its key): parameters, MFLOPs per sample and the latency
    at each batch size, each followed by its ratio to the reference (``x``); the FLOPs and latency columns only where
    some network has them."""
    rows = list(figures.values())
    columns = [("params", "parameters", lambda v: f"{v:,}")]
    if any(row.get("flops") is not None for row in rows):
        columns.append(("flops", "MFLOPs", lambda v: f"{v / 1e6:.3f}"))
    for batch in BATCHES:
        if any(row.get(f"latency_b{batch}_ms") is not None for row in rows):
            columns.append(
                (f"latency_b{batch}_ms", f"batch {batch} (ms)", lambda v: f"{v:.3f}" if v < 10 else f"{v:.2f}")
            )
    header = ["network"]
    for _, title, _ in columns:
        header += [title, "x"]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for label, row in figures.items():
        cells = [label]
        for key, _, show in columns:
            value = row.get(key)
            cells += ["n/a" if value is None else show(value), _ratio(row.get(RATIOS[key]))]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def slower(figures: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One sentence per network that is slower than the reference at some batch size (below 1.00x as the table
    shows it), saying by how much."""
    sentences = []
    for label, row in figures.items():
        worse = [
            (batch, row[f"speedup_b{batch}"])
            for batch in BATCHES
            if row.get(f"speedup_b{batch}") is not None and round(row[f"speedup_b{batch}"], 2) < 1
        ]
        if worse:
            parts = [
                f"{speedup:.2f}x at batch {batch} ({100 * (1 / speedup - 1):.0f}% more time)"
                for batch, speedup in worse
            ]
            sentences.append(f"{label} is not faster than its teacher on this CPU: " + ", ".join(parts) + ".")
    return sentences


__all__ = [
    "BATCHES",
    "RATIOS",
    "ROW_KEYS",
    "build_student",
    "flops_per_sample",
    "latencies",
    "latency",
    "measure",
    "networks",
    "size",
    "slower",
    "table",
    "teacher_network",
    "with_ratios",
]
