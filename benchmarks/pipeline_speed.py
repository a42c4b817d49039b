"""How much sooner does ``kegnet-pipeline`` finish with ``--jobs 2`` and a stage's fit and test in one process?

Runs the same small pipeline (the shipped MNIST-subset teacher and its configs at tiny budgets: 2 generators of 20
steps, students 1 and 2, each evaluated before training, distilled from the generators and from U(-1, 1) for 20
steps: 7 stages) twice, each into a fresh folder, through the real console script:

* old: ``--jobs 1 --separate_test true``: one stage at a time, a ``kegnet fit`` and a ``kegnet test`` process each;
* new: ``--jobs 2``: two stages side by side, run by two worker processes that start up once (each stage's fit and
  test one after the other in the same process).

It prints each way's wall time and the CPU time of its processes (what start-up and work cost, whatever else runs
on the machine), the load average before and after, and checks that both wrote the same results.json accuracies.
A stage's float sums depend on its torch thread count (in the last digits; an accuracy can move with them), so
both ways run with the same ``--threads`` (default: the CPU cores // 2, what ``--jobs 2`` gives each stage) and must
agree bit for bit; ``--old_threads 0`` runs the old way with torch's own thread count instead, as before
``--jobs`` existed, and then only reports whether the accuracies agree. The last line is ``speedup=X`` (old wall
time over new); the exit status is 1 when the accuracies differ at equal thread counts.

Usage: ``python benchmarks/pipeline_speed.py [--out runs/pipeline_speed] [--jobs 2] [--old_threads 0]``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from kegnet_pl.pipeline import cpu_cores

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = {
    "generator_config": str(ROOT / "configs/mnist_subset/generator.yaml"),
    "student_config": str(ROOT / "configs/mnist_subset/student.yaml"),
    "students": ["lenet5-s1", "lenet5-s2"],
    "baselines": ["uniform"],
    "seeds": [0],
    "latency_threads": 0,  # the payoff's timing of the networks costs both ways the same; the stages are compared
    "generator_args": [
        f"--model.teacher={ROOT / 'checkpoints/mnist_subset_lenet5.ckpt'}",
        "--trainer.max_epochs=1",
        "--model.n_generators=2",
        "--data.batch_size=64",
        "--data.batches_per_epoch=20",
    ],
    "student_args": [
        "--trainer.max_epochs=1",
        "--model.pool_size=256",
        "--data.batch_size=64",
        "--data.batches_per_epoch=20",
        "--data.val_batches=2",
    ],
}


def run(folder: Path, options: list[str]) -> tuple[float, float]:
    """Run the pipeline into ``folder`` (emptied first) with ``options``: (wall seconds, CPU seconds of its
    processes). Its output goes to ``folder/pipeline.log``."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    config = folder / "pipeline.yaml"
    config.write_text(yaml.safe_dump({**PIPELINE, "out": str(folder / "run")}))
    command = [sys.executable, "-m", "kegnet_pl.pipeline", "--config", str(config), *options]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with (folder / "pipeline.log").open("w") as log:
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # every process it waited for, stages included
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed (exit {done.returncode}); see {folder / 'pipeline.log'}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def accuracies(folder: Path) -> dict[tuple, float]:
    rows = json.loads((folder / "run" / "results.json").read_text())
    return {(row["seed"], row["method"], row["student"]): row["accuracy"] for row in rows}


def main(args: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/pipeline_speed", help="a folder for both runs (emptied first)")
    parser.add_argument("--jobs", type=int, default=2, help="the new way's --jobs")
    parser.add_argument("--threads", type=int, default=None, help="both ways' --threads (default: cores // jobs)")
    parser.add_argument(
        "--old_threads", type=int, default=None, help="the old way's --threads instead; 0: torch's own thread count"
    )
    options = parser.parse_args(args)
    threads = options.threads or max(1, cpu_cores() // options.jobs)
    old_threads = threads if options.old_threads is None else options.old_threads
    out = Path(options.out)
    old = ["--jobs", "1", "--separate_test", "true", *(["--threads", str(old_threads)] if old_threads else [])]
    new = ["--jobs", str(options.jobs), "--threads", str(threads)]

    print(f"{cpu_cores()} CPU cores; load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    old_wall, old_cpu = run(out / "old", old)
    print(f"old ({' '.join(old)}): {old_wall:.1f} s wall, {old_cpu:.1f} s CPU")
    new_wall, new_cpu = run(out / "new", new)
    print(f"new ({' '.join(new)}): {new_wall:.1f} s wall, {new_cpu:.1f} s CPU")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    first, second = accuracies(out / "old"), accuracies(out / "new")
    same = first == second
    shown = ", ".join(f"{method}{student or ''} {100 * acc:.2f}" for (_, method, student), acc in first.items())
    print(f"results.json accuracies {'identical' if same else 'DIFFER'}: old {shown}")
    if not same:
        print("new " + ", ".join(f"{m}{s or ''} {100 * a:.2f}" for (_, m, s), a in second.items()))
        if old_threads != threads:
            print(f"(the old way ran {old_threads or 'torch default'} threads a stage, the new {threads})")
    print(f"speedup={old_wall / new_wall:.2f}")
    if not same and old_threads == threads:
        sys.exit(1)


if __name__ == "__main__":
    main()
