"""Run the paper's protocol for one data set and print our numbers next to the paper's table.

    python benchmarks/reproduce.py mnist --teacher pretrained/mnist.pth.tar --data-root data --seeds 0 1 2
    python benchmarks/reproduce.py mnist_subset --seeds 0 1 2            # offline, the shipped teacher
    python benchmarks/reproduce.py svhn --teacher runs/svhn/teacher/checkpoints/last.ckpt --dry-run

It runs ``kegnet-pipeline`` on ``configs/<set>/generator.yaml`` and ``student.yaml`` (the paper's settings: full
epochs, 5 generators, fixed pools of 6,400 samples per generator, students 1-3 and both noise baselines),
with the teacher file and the real test data given here, then prints a table: our test accuracy (mean ± std
over seeds) and the paper's, per method and student. ``--epochs-scale 0.05`` shortens every stage for a quick
look. A teacher file that does not record its architecture (the authors' ``.pth.tar``) is read with the set's
architecture. The last line is ``results: <path of results.json>``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import yaml

from kegnet_pl.pipeline import NAMES  # the row names of the pipeline's own table

ROOT = Path(__file__).resolve().parents[1]

# The paper's test accuracy (%) for students 1-3 (Table of ../shared/PAPER.md): method -> (s1, s2, s3).
PAPER = {
    "mnist": {
        "teacher": (98.90, 98.90, 98.90),
        "tucker": (85.18, 67.35, 50.01),
        "uniform": (95.48, 88.27, 69.89),
        "normal": (95.45, 87.70, 71.76),
        "kegnet": (96.32, 90.89, 89.94),
    },
    "svhn": {
        "teacher": (93.23, 93.23, 93.23),
        "tucker": (19.31, 11.02, 11.07),
        "uniform": (33.08, 63.08, 23.83),
        "normal": (26.58, 60.22, 21.49),
        "kegnet": (69.89, 87.26, 63.40),
    },
    "fashion": {
        "teacher": (92.50, 92.50, 92.50),
        "tucker": (65.09, 75.80, 46.55),
        "uniform": (None, None, None),  # the paper: below Tucker only
        "normal": (None, None, None),
        "kegnet": (85.23, 87.80, 79.95),
    },
}
PAPER["mnist_subset"] = PAPER["mnist"]  # a different test set: the same teacher and students, for orientation
ARCH = {
    "mnist": ("lenet5", [1, 32, 32]),
    "mnist_subset": ("lenet5", [1, 32, 32]),
    "fashion": ("resnet14", [1, 32, 32]),
    "svhn": ("resnet14", [3, 32, 32]),
}


def pipeline_options(args: argparse.Namespace) -> dict:
    """The ``kegnet-pipeline`` options of the paper's protocol for ``args.dataset``."""
    arch, shape = ARCH[args.dataset]
    folder = ROOT / "configs" / args.dataset
    generator_args, student_args = [], []
    if args.teacher:
        generator_args += [f"--model.teacher={args.teacher}"]
        if not args.teacher.endswith(".ckpt"):  # a file that does not record its architecture
            generator_args += [f"--model.teacher_arch={arch}", f"--model.input_shape={shape}", "--model.num_classes=10"]
    if args.data_root:
        student_args += [f"--data.init_args.eval_data.init_args.root={args.data_root}"]
    generator_epochs, student_epochs = 200, 400  # the paper's
    if args.dataset == "mnist_subset":  # its shipped configs are CPU-sized: set the paper's protocol
        generator_args += ["--model.n_generators=5"]
        student_args += ["--model.pool_size=6400", "--data.batches_per_epoch=500"]
    generator_args += [f"--trainer.max_epochs={max(1, math.ceil(generator_epochs * args.epochs_scale))}"]
    student_args += [f"--trainer.max_epochs={max(1, math.ceil(student_epochs * args.epochs_scale))}"]
    if args.epochs_scale < 1:
        student_args += ["--trainer.min_epochs=0"]
    options = {
        "generator_config": str(folder / "generator.yaml"),
        "student_config": str(folder / "student.yaml"),
        "out": str(args.out or ROOT / "runs" / "reproduce" / args.dataset),
        "students": [f"{arch}-s1", f"{arch}-s2", f"{arch}-s3"],
        "seeds": list(args.seeds),
        "generator_args": generator_args,
        "student_args": student_args,
    }
    if args.trainer_config:
        options["trainer_config"] = args.trainer_config
    return options


def comparison(rows: list[dict], dataset: str) -> str:
    """Our accuracy (mean ± std over seeds) beside the paper's, per method and student."""
    lines = [f"{'method':<12} " + " ".join(f"{'student ' + str(n) + ' ours / paper':>28}" for n in (1, 2, 3))]
    for method, paper in PAPER[dataset].items():
        cells = []
        for number in (1, 2, 3):
            values = [100 * r["accuracy"] for r in rows if r["method"] == method and r["student"] in (number, None)]
            ours = "n/a" if not values else f"{statistics.mean(values):.2f}"
            if len(values) > 1:
                ours += f" ± {statistics.stdev(values):.2f}"
            cells.append(f"{ours} / {'n/a' if paper[number - 1] is None else f'{paper[number - 1]:.2f}'}")
        lines.append(f"{NAMES[method]:<12} " + " ".join(f"{cell:>28}" for cell in cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=sorted(ARCH))
    parser.add_argument("--teacher", help="teacher weights (default: the generator config's teacher)")
    parser.add_argument("--data-root", help="folder of the real data set in torchvision's layout")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", help="run folder (default: runs/reproduce/<dataset>)")
    parser.add_argument("--trainer-config", help="a trainer preset, e.g. configs/trainer/ddp.yaml")
    parser.add_argument("--epochs-scale", type=float, default=1.0, help="multiply every stage's epochs (quick looks)")
    parser.add_argument("--dry-run", action="store_true", help="print the kegnet-pipeline command and stop")
    args = parser.parse_args(argv)
    options = pipeline_options(args)
    print("# the pipeline config of this run (kegnet-pipeline --config FILE runs it):")
    print(yaml.safe_dump(options, sort_keys=False))
    if args.dry_run:
        return
    from kegnet_pl.pipeline import run_pipeline

    results = run_pipeline(**options)
    print()
    print(comparison(json.loads(results.read_text()), args.dataset))
    print(f"results: {results}")


if __name__ == "__main__":
    sys.exit(main())
