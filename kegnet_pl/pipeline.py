"""``kegnet-pipeline``: the whole data-free pipeline in one command, built on the ``kegnet`` stages.

For every seed it trains the generators, then every requested student from the generators' samples (``kegnet``)
and from the noise baselines (``uniform``, ``normal``), evaluates each on real test data, and writes into one
run folder::

    <out>/seed<S>/<stage>/config.yaml      the stage's full config: `kegnet fit --config` reruns it exactly
    <out>/seed<S>/<stage>/stage.log        what the stage printed
    <out>/seed<S>/<stage>/result.json      written when the stage finished (a finished stage is skipped)
    <out>/results.json, results.md         accuracy, parameters, compression ratio and wall time per stage
    <out>/samples.png                      the generators' image grid

Each stage is an ordinary ``kegnet fit`` / ``kegnet test`` process, so every trainer option (devices, DDP,
nodes) applies. Run the same command again after an interruption: finished stages are skipped and an
interrupted one resumes from its ``last.ckpt``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from kegnet_pl.atomic import atomic_write, atomic_write_text
from kegnet_pl.errors import ConfigError, KegnetError, parser_message

RESULT = "result.json"
METRICS = "metrics.json"
METHODS = ("teacher", "tucker", "uniform", "normal", "kegnet")


def read_config(path: str | Path) -> dict[str, Any]:
    """A ``kegnet`` YAML config as a dictionary, with an error that names the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {' '.join(str(err).split())}") from err
    if not isinstance(config, dict) or "model" not in config:
        raise ConfigError(f"config file {str(path)!r} is not a kegnet config (it has no 'model' section)")
    return config


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def stage_config(
    base: dict[str, Any],
    folder: Path,
    seed: int,
    model_args: dict[str, Any] | None = None,
    trainer_preset: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``base`` with every output inside ``folder``, the seed set everywhere, and the test metrics saved."""
    config = _merge(base, trainer_preset or {})
    config["seed_everything"] = seed
    trainer = config.setdefault("trainer", {})
    trainer["default_root_dir"] = str(folder)
    trainer["enable_progress_bar"] = False  # the stage's output goes to stage.log
    trainer["logger"] = {
        "class_path": "pytorch_lightning.loggers.TensorBoardLogger",
        "init_args": {"save_dir": str(folder), "name": "tensorboard"},
    }
    callbacks = [dict(cb) for cb in trainer.get("callbacks") or [] if "MetricsToJSON" not in cb.get("class_path", "")]
    checkpoints = [cb for cb in callbacks if cb.get("class_path", "").endswith("ModelCheckpoint")]
    if not checkpoints:
        checkpoints = [{"class_path": "pytorch_lightning.callbacks.ModelCheckpoint", "init_args": {}}]
        callbacks += checkpoints
    for callback in checkpoints:
        callback["init_args"] = {
            **callback.get("init_args", {}),
            "dirpath": str(folder / "checkpoints"),
            "save_last": True,
        }
    callbacks.append({"class_path": "kegnet_pl.callbacks.MetricsToJSON", "init_args": {"path": str(folder / METRICS)}})
    trainer["callbacks"] = callbacks
    model = config["model"].setdefault("init_args", {})
    model.update(model_args or {})
    model["seed"] = seed
    config.setdefault("data", {}).setdefault("init_args", {})["seed"] = seed
    return config


class Pipeline:
    """Runs the stages of one pipeline folder; see the module docstring."""

    def __init__(
        self,
        generator_config: str,
        student_config: str,
        out: str,
        students: Sequence[str],
        baselines: Sequence[str],
        seeds: Sequence[int],
        generator_args: Sequence[str],
        student_args: Sequence[str],
        trainer_config: str | None,
        echo=print,
        teacher: dict[str, Any] | None = None,
    ) -> None:
        self.generator_base = read_config(generator_config)
        self.teacher = {key: value for key, value in (teacher or {}).items() if value is not None}
        self.student_base = read_config(student_config)
        self.trainer_preset = read_trainer_preset(trainer_config) if trainer_config else None
        self.out = Path(out)
        self.students = list(students)
        self.baselines = list(baselines)
        self.seeds = list(seeds)
        self.generator_args = list(generator_args)
        self.student_args = list(student_args)
        self.echo = echo
        unknown = sorted(set(self.baselines) - {"uniform", "normal"})
        if unknown:
            raise ConfigError(f"unknown baselines {unknown}; choose from uniform, normal")
        if not self.students:
            raise ConfigError("give at least one student (e.g. students: [lenet5-s1])")

    # --- running one stage -------------------------------------------------------------------------
    def _kegnet(self, folder: Path, args: list[str]) -> None:
        command = [sys.executable, "-m", "kegnet_pl.cli", *args]
        with (folder / "stage.log").open("a") as log:
            log.write(f"$ {' '.join(command)}\n")
            log.flush()
            done = subprocess.run(
                command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
            )
        if done.returncode != 0:
            tail = [line for line in (folder / "stage.log").read_text().splitlines() if line.strip()][-5:]
            raise KegnetError(
                f"stage {folder} failed (exit {done.returncode}); its log {folder / 'stage.log'} ends with:\n  "
                + "\n  ".join(tail)
            )

    def run_stage(self, folder: Path, config: dict[str, Any], extra: list[str], train: bool) -> dict[str, Any]:
        """Fit (resuming an interrupted run) and test one stage, or return its recorded result."""
        result_path = folder / RESULT
        if result_path.is_file():
            result = json.loads(result_path.read_text())
            self.echo(f"  {folder.relative_to(self.out)}: finished before, skipped")
            return result
        folder.mkdir(parents=True, exist_ok=True)
        config_path = folder / "config.yaml"
        atomic_write_text(config_path, yaml.safe_dump(config, sort_keys=False))
        start = time.perf_counter()
        last = folder / "checkpoints" / "last.ckpt"
        if train:
            resume = ["--ckpt_path", str(last)] if last.is_file() else []
            action = "resuming" if resume else "training"
            self.echo(f"  {folder.relative_to(self.out)}: {action} (log: {folder / 'stage.log'})")
            self._kegnet(folder, ["fit", "--config", str(config_path), *extra, *resume])
        else:
            self.echo(f"  {folder.relative_to(self.out)}: evaluating (log: {folder / 'stage.log'})")
        test_ckpt = ["--ckpt_path", str(last)] if train else []
        self._kegnet(folder, ["test", "--config", str(config_path), *extra, *test_ckpt])
        result = json.loads((folder / METRICS).read_text())
        result["seconds"] = round(time.perf_counter() - start, 1)
        atomic_write_text(result_path, json.dumps(result, indent=2, sort_keys=True) + "\n")
        return result

    # --- the whole pipeline ------------------------------------------------------------------------
    def run(self) -> Path:
        rows: list[dict[str, Any]] = []
        stages: list[dict[str, Any]] = []
        for seed in self.seeds:
            self.echo(f"seed {seed}")
            root = self.out / f"seed{seed}"
            folder = root / "generator"
            config = stage_config(self.generator_base, folder, seed, self.teacher, self.trainer_preset)
            config["data"]["init_args"].setdefault("val_batches", 4)
            result = self.run_stage(folder, config, self.generator_args, train=True)
            stages.append({"stage": "generator", "seed": seed, **result})
            generators = str(folder / "checkpoints" / "last.ckpt")
            for number, preset in enumerate(self.students, start=1):
                common = {"generators": generators, "student": preset}
                for source in ("tucker", "kegnet", *self.baselines):
                    folder = root / f"student{number}-{source}"
                    args = {**common, "source": "kegnet" if source == "tucker" else source}
                    config = stage_config(self.student_base, folder, seed, args, self.trainer_preset)
                    result = self.run_stage(folder, config, self.student_args, train=source != "tucker")
                    stages.append({"stage": folder.name, "seed": seed, **result})
                    if source == "tucker" and number == 1:
                        rows.append(self._row("teacher", None, seed, result, teacher=True))
                    rows.append(self._row(source, number, seed, result))
        return self._write(rows, stages)

    @staticmethod
    def _row(method: str, student: int | None, seed: int, result: dict[str, Any], teacher: bool = False) -> dict:
        if teacher:
            return {
                "method": "teacher",
                "student": None,
                "seed": seed,
                "accuracy": result.get("test/teacher_acc"),
                "params": int(result["teacher_params"]),
                "compression_ratio": 1.0,
                "seconds": 0.0,
            }
        return {
            "method": method,
            "student": student,
            "seed": seed,
            "accuracy": result.get("test/acc"),
            "params": int(result["params"]),
            "compression_ratio": round(result["compression_ratio"], 3),
            "seconds": result["seconds"],
        }

    def _write(self, rows: list[dict[str, Any]], stages: list[dict[str, Any]]) -> Path:
        self.out.mkdir(parents=True, exist_ok=True)
        results = self.out / "results.json"
        atomic_write_text(results, json.dumps(rows, indent=2) + "\n")
        atomic_write_text(self.out / "stages.json", json.dumps(stages, indent=2) + "\n")
        table = results_table(rows, self.students, stages)
        atomic_write_text(self.out / "results.md", table + "\n")
        grids = sorted((self.out / f"seed{self.seeds[0]}" / "generator" / "checkpoints").glob("samples_gen*.png"))
        if grids:
            with atomic_write(self.out / "samples.png", "wb") as handle:
                handle.write(grids[0].read_bytes())
        self.echo("")
        self.echo(table)
        return results


def _mean_std(values: list[float | None], scale: float = 100.0, digits: int = 2) -> str:
    """``mean ± std`` of the values present, times ``scale`` (accuracy in %); "n/a" when there are none."""
    values = [scale * v for v in values if v is not None]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def results_table(rows: list[dict[str, Any]], students: Sequence[str], stages: list[dict[str, Any]]) -> str:
    """The paper's table: test accuracy (%) per method and student (mean ± std over seeds), then sizes and times."""
    seeds = sorted({row["seed"] for row in rows})
    names = {
        "teacher": "Teacher",
        "tucker": "Tucker only",
        "uniform": "+Uniform",
        "normal": "+Gaussian",
        "kegnet": "+KegNet",
    }
    header = "| method | " + " | ".join(f"student {n} ({preset})" for n, preset in enumerate(students, 1)) + " |"
    lines = [f"Test accuracy (%) on real held-out data, {len(seeds)} seed(s): {', '.join(map(str, seeds))}", "", header]
    lines.append("|---" * (len(students) + 1) + "|")
    for method in METHODS:
        cells = []
        for number in range(1, len(students) + 1):
            picked = [r["accuracy"] for r in rows if r["method"] == method and (r["student"] in (number, None))]
            cells.append(_mean_std(picked))
        if any(cell != "n/a" for cell in cells):
            lines.append(f"| {names[method]} | " + " | ".join(cells) + " |")
    lines += _fidelity_table(stages, students, names)
    lines += ["", "| student | parameters | compression | seconds (kegnet / uniform / normal) |", "|---|---|---|---|"]
    for number, preset in enumerate(students, 1):
        kegnet = [r for r in rows if r["method"] == "kegnet" and r["student"] == number]
        if not kegnet:
            continue
        seconds = " / ".join(
            f"{statistics.mean(r['seconds'] for r in rows if r['method'] == m and r['student'] == number):.0f}"
            for m in ("kegnet", "uniform", "normal")
            if any(r["method"] == m and r["student"] == number for r in rows)
        )
        lines.append(
            f"| {number} ({preset}) | {kegnet[0]['params']:,} | {kegnet[0]['compression_ratio']:.2f}x | {seconds} |"
        )
    generator = [s["seconds"] for s in stages if s["stage"] == "generator"]
    if generator:
        lines += ["", f"Generator training: {statistics.mean(generator):.0f} s per seed."]
    return "\n".join(lines)


def _fidelity_table(stages: list[dict[str, Any]], students: Sequence[str], names: dict[str, str]) -> list[str]:
    """KL divergence from the teacher on the real test data per method and student, from the stages' results.

    Finer than accuracy where the student is close to the teacher: a few test images decide an accuracy gap of
    0.1 points, while the KL measures how the student follows the teacher on every image.
    """
    rows = []
    for method in METHODS[1:]:  # the teacher is the reference
        cells = [
            _mean_std([s.get("test/real_kl") for s in stages if s["stage"] == f"student{n}-{method}"], 1.0, 4)
            for n in range(1, len(students) + 1)
        ]
        if any(cell != "n/a" for cell in cells):
            rows.append(f"| {names[method]} | " + " | ".join(cells) + " |")
    if not rows:  # stages recorded before the fidelity figures existed
        return []
    header = "| method | " + " | ".join(f"student {n}" for n in range(1, len(students) + 1)) + " |"
    title = "KL divergence from the teacher on real held-out data (lower: closer to the teacher)"
    return ["", title, "", header, "|---" * (len(students) + 1) + "|", *rows]


def read_trainer_preset(path: str) -> dict[str, Any]:
    """A ``configs/trainer/*.yaml`` preset (a ``trainer:`` section only)."""
    path_ = Path(path)
    if not path_.is_file():
        raise ConfigError(f"trainer preset {path!r} does not exist (see configs/trainer/)")
    try:
        preset = yaml.safe_load(path_.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"trainer preset {path!r} is not valid YAML: {' '.join(str(err).split())}") from err
    if not isinstance(preset, dict) or set(preset) - {"trainer"}:
        raise ConfigError(f"trainer preset {path!r} may only hold a 'trainer:' section, it has {list(preset)[:8]}")
    return preset


def run_pipeline(
    generator_config: str,
    student_config: str,
    out: str,
    students: list[str],
    baselines: list[str] = ["uniform", "normal"],  # noqa: B006 (jsonargparse needs a literal default)
    seeds: list[int] = [0],  # noqa: B006
    generator_args: list[str] = [],  # noqa: B006
    student_args: list[str] = [],  # noqa: B006
    trainer_config: str | None = None,
    teacher: str | None = None,
    teacher_arch: str | None = None,
    input_shape: list[int] | None = None,
    num_classes: int | None = None,
) -> Path:
    """Run the KegNet pipeline: generators, then students and noise baselines, evaluated on real test data.

    Args:
        generator_config: the generator stage's kegnet config (e.g. configs/mnist_subset/generator.yaml).
        student_config: the student stage's kegnet config; its data must carry real eval_data for accuracy.
        out: the run folder; everything is written inside it.
        students: student presets, numbered 1, 2, 3 in this order (e.g. [lenet5-s1, lenet5-s2, lenet5-s3]).
        baselines: noise baselines trained like the KegNet students: uniform U(-1,1), normal N(0,1).
        seeds: one full pipeline per seed; the table gives mean ± std over seeds.
        generator_args: extra ``kegnet fit`` arguments of the generator stage (e.g. [--trainer.max_epochs, "3"]).
        student_args: extra ``kegnet fit`` arguments of every student stage.
        trainer_config: a trainer preset merged into every stage (e.g. configs/trainer/ddp_cpu2.yaml).
        teacher: the teacher's weights file, instead of the generator config's (any format ``kegnet`` reads).
        teacher_arch: its architecture, for a file that does not record it (a registered name, or an import path
            that this option then trusts).
        input_shape: its input shape, for a file that does not record it (e.g. [1,32,32]).
        num_classes: its class count, for a file that does not record it.
    """
    own_teacher = {"teacher": teacher, "teacher_arch": teacher_arch, "input_shape": input_shape}
    own_teacher["num_classes"] = num_classes
    pipeline = Pipeline(
        generator_config,
        student_config,
        out,
        students,
        baselines,
        seeds,
        generator_args,
        student_args,
        trainer_config,
        teacher=own_teacher,
    )
    return pipeline.run()


def main(args: list[str] | None = None) -> None:
    """The ``kegnet-pipeline`` command; its last line is ``results: <path of results.json>``."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(
        prog="kegnet-pipeline", description="Run the whole data-free KegNet pipeline.", exit_on_error=False
    )
    parser.add_argument(
        "--config", action=ActionConfigFile, help="a pipeline YAML, e.g. configs/mnist_subset/pipeline.yaml"
    )
    parser.add_function_arguments(run_pipeline)
    try:
        config = parser.parse_args(args)
    except argparse.ArgumentError as err:
        print(f"kegnet-pipeline: error: {parser_message(err)} (see 'kegnet-pipeline --help')", file=sys.stderr)
        sys.exit(2)
    options = {key: value for key, value in vars(config).items() if key != "config" and not key.startswith("__")}
    try:
        results = run_pipeline(**options)
    except KegnetError as err:
        print(f"kegnet-pipeline: error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"results: {results}")


if __name__ == "__main__":  # pragma: no cover
    main()
