"""Run variants of the data-free recipe over seeds and students, side by side, and print mean +- std per variant.

Drives ``benchmarks/recipe_mnist.py``: first the KegNet generators of every seed (seed ``s`` trains generators
``5s .. 5s+4``, so seeds share nothing) for every generator budget the variants ask for, then one ``distill`` per
variant, student and seed, ``--jobs`` processes at a time. A variant is ``NAME=ARGS``: ``recipe_mnist.py distill``
arguments; its ``--gen-steps`` picks which generators it reads (the first of ``--gen-steps`` when absent)::

    python benchmarks/recipe_sweep.py --device cuda --jobs 12 --seeds 0 1 2 --gen-steps 1200 \\
        --students lenet5-paper-s2 lenet5-paper-s3 \\
        --variants "mix=--source mix" "mix+mixup=--source mix --mixup 1" "uniform=--source uniform"

The table's ``val`` is the accuracy on the 5,000 held-out training images (what a recipe is chosen by), ``test``
the accuracy on the 10,000 test images (the score only). Every run's JSON line is in ``<out>/results.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

RECIPE = str(Path(__file__).with_name("recipe_mnist.py"))


def run_all(commands: list[list[str]], jobs: int, logs: Path) -> None:
    """Run ``commands`` ``jobs`` at a time, each one's output in ``logs/<index>.log``; stop at the first failure."""
    logs.mkdir(parents=True, exist_ok=True)

    def one(item: tuple[int, list[str]]) -> None:
        index, command = item
        with open(logs / f"{index}.log", "w") as log:
            code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode
        if code:
            raise SystemExit(f"failed ({code}): {shlex.join(command)}; see {logs / f'{index}.log'}")

    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(one, enumerate(commands)))


def table(lines: list[dict]) -> str:
    """Mean +- std of ``val`` and ``test`` (percent) per variant and student, with the number of seeds."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for line in lines:
        groups[(line["tag"], line["student"])].append(line)

    def stat(values: list[float]) -> str:
        mean = 100 * statistics.mean(values)
        return f"{mean:.2f} +- {100 * statistics.stdev(values):.2f}" if len(values) > 1 else f"{mean:.2f}"

    rows = ["| variant | student | seeds | val | test |", "|---|---|---|---|---|"]
    for (tag, student), group in sorted(groups.items()):
        val, test = stat([g["val"] for g in group]), stat([g["acc"] for g in group])
        rows.append(f"| {tag} | {student} | {len(group)} | {val} | {test} |")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variants", nargs="+", required=True, help="NAME=ARGS of recipe_mnist.py distill")
    p.add_argument("--students", nargs="+", default=["lenet5-paper-s3"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--gen-steps", nargs="+", type=int, default=[1200])
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="runs/recipe_sweep")
    a = p.parse_args()
    out = Path(a.out)
    variants = {}
    for spec in a.variants:
        name, sep, args = spec.partition("=")
        if not sep:
            p.error(f"a variant is NAME=ARGS, got {spec!r}")
        variants[name] = shlex.split(args)
    base = [sys.executable, RECIPE, "--device", a.device]

    def gen_steps(args: list[str]) -> int:
        return int(args[args.index("--gen-steps") + 1]) if "--gen-steps" in args else a.gen_steps[0]

    def gens(steps: int, seed: int) -> Path:
        return out / "gens" / f"g{steps}_s{seed}.pt"

    start = time.time()
    needed = sorted({gen_steps(args) for args in variants.values()} | set(a.gen_steps))
    ids = {seed: ",".join(str(5 * seed + i) for i in range(5)) for seed in a.seeds}
    todo = [
        [*base, "gen", "--gen-steps", str(steps), "--gen-ids", ids[seed], "--gens", str(gens(steps, seed))]
        for steps in needed
        for seed in a.seeds
        if not gens(steps, seed).exists()
    ]
    run_all(todo, a.jobs, out / "logs" / "gen")
    print(f"generators: {len(todo)} sets in {time.time() - start:.0f} s", flush=True)
    results = out / "results.jsonl"
    results.unlink(missing_ok=True)
    runs = [
        [*base, "distill", *args, "--gens", str(gens(gen_steps(args), seed)), "--student", student]
        + ["--seed", str(seed), "--tag", name, "--out", str(results)]
        for name, args in variants.items()
        for student in a.students
        for seed in a.seeds
    ]
    run_all(runs, a.jobs, out / "logs" / "distill")
    print(f"distillation: {len(runs)} runs, {time.time() - start:.0f} s in all", flush=True)
    print(table([json.loads(line) for line in results.read_text().splitlines()]))


if __name__ == "__main__":
    main()
