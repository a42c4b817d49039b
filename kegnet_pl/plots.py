"""Figures of a pipeline's results, drawn off-screen as PNG bytes.

They are drawn with matplotlib (a dependency of kegnet_pl) on its Agg canvas without
``pyplot``: no window, no global figure or backend state, so a figure can be drawn anywhere, a test included.
"""

from __future__ import annotations

import io
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def accuracy_vs_size(rows: Sequence[Mapping[str, Any]], names: Mapping[str, str] | None = None) -> bytes:
    """A PNG of test accuracy (%) against parameters: a series per method (rows of ``kegnet-pipeline``'s
    results.json), a point per student at its parameter count with the mean over seeds and the standard deviation as
    an error bar, and the teacher's accuracy as a dashed horizontal line.

    ``names`` gives each method's label in the legend and the order of the series (default: the methods as they
    appear in ``rows``, by their own names). The series are shifted sideways a little so that error bars of the
    same student do not hide each other; the x ticks mark the students' exact parameter counts.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = dict(names or {method: method for method in dict.fromkeys(row["method"] for row in rows)})
    scored = [row for row in rows if row.get("accuracy") is not None]
    seeds = sorted({row["seed"] for row in scored})
    students = {row["student"]: row["params"] for row in scored if row["student"] is not None}
    methods = [
        m for m in names if m != "teacher" and any(r["method"] == m and r["student"] is not None for r in scored)
    ]

    figure = Figure(figsize=(7.5, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    step = 0.006 * max(students.values(), default=1)  # the sideways shift between two series
    for index, method in enumerate(methods):
        points = []
        for student, params in sorted(students.items(), key=lambda item: item[1]):
            accuracies = [100 * r["accuracy"] for r in scored if r["method"] == method and r["student"] == student]
            if accuracies:
                points.append((params + (index - (len(methods) - 1) / 2) * step, *_mean_std(accuracies)))
        xs, means, stds = zip(*points, strict=True)
        axes.errorbar(
            xs, means, yerr=stds, marker=MARKERS[index % len(MARKERS)], capsize=3, linewidth=1, label=names[method]
        )
    teacher = [row for row in scored if row["method"] == "teacher"]
    if teacher:
        accuracy, _ = _mean_std([100 * row["accuracy"] for row in teacher])
        label = f"{names.get('teacher', 'teacher')} ({teacher[0]['params']:,} parameters): {accuracy:.2f}"
        axes.axhline(accuracy, color="black", linestyle="--", linewidth=1, label=label)
    axes.set_xticks(
        list(students.values()), [f"student {number}\n{params:,}" for number, params in students.items()], fontsize=8
    )
    axes.set_xlabel("parameters")
    axes.set_ylabel("test accuracy (%)")
    axes.set_title(f"Test accuracy against size, mean ± std over {len(seeds)} seed(s)", fontsize=11)
    axes.grid(alpha=0.3)
    axes.legend(loc="best", fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


__all__ = ["accuracy_vs_size"]
