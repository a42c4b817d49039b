"""``kegnet-pipeline``: the whole data-free pipeline in one command, built on the ``kegnet`` stages.

For every seed it trains the generators, then every requested student from the generators' samples (``kegnet``)
and from the baselines (``uniform``, ``normal``, ``strokes``, ``no-generators``), evaluates each on real test data,
and writes into one run folder. Other data-free methods run beside KegNet as stages of their own
(``methods: [kegnet, dafl, dfad]``): each is a ``kegnet`` config (``method_configs``) whose model is a StudentModule
that trains its own inputs (DAFL, DFAD), given the pipeline's teacher, seed and student preset; the generator stage
runs only for ``kegnet``::

    <out>/seed<S>/<stage>/config.yaml      the stage's full config: `kegnet fit --config` reruns it exactly
    <out>/seed<S>/<stage>/args.json        the arguments it was given after the config (``--student_args`` ...)
    <out>/seed<S>/<stage>/stage.log        what the stage printed
    <out>/seed<S>/<stage>/result.json      written when the stage finished (a finished stage is skipped)
    <out>/results.json, results.md         accuracy, parameters, compression ratio and wall time per stage, the
                                           payoff of compression (FLOPs and CPU latency against the teacher), and
                                           the student of each size chosen without data (kegnet_pl.selection)
    <out>/payoff.json                      those figures of the teacher and each student preset, measured once
    <out>/accuracy_vs_size.png             test accuracy against parameters, a series per method
    <out>/samples.png                      the generators' image grid, a row per class

Each stage is an ordinary ``kegnet fit`` then ``kegnet test``, so every trainer option (devices, DDP, nodes)
applies: ``python -m kegnet_pl.stage fit ARGS``, run by a worker process that starts up once and runs stage after
stage (:mod:`kegnet_pl.stage`), or with ``--separate_test true`` a ``kegnet fit`` and a ``kegnet test`` process.
``--jobs N`` runs up to N stages side by side (a seed's students once its generators are trained), each with CPU
cores // N torch threads. It prints stage k of n, the time elapsed and an estimate of the time left as stages start
and finish. Run the same command again after an interruption: finished stages are skipped and an interrupted one
resumes from its ``last.ckpt``; a stage whose folder was run with other settings (teacher, student, budget,
arguments) is refused before anything starts, rather than reported under the new settings. SIGTERM (``kill``,
``timeout``, a cluster's scheduler) or Ctrl-C (SIGINT) stops the running stages at their next batch and starts no
other; the command then exits with status 143 (130) and the same command resumes.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import queue
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kegnet_pl.atomic import atomic_write, atomic_write_text
from kegnet_pl.errors import FROM_PYTHON, ConfigError, KegnetError, parser_message, run_folder_hint

RESULT = "result.json"
#: the stage's command-line arguments after its config (``--student_args`` and the like), beside its config.yaml
ARGS = "args.json"
CHECKPOINT = Path("checkpoints") / "last.ckpt"
METRICS = "metrics.json"
PAYOFF = "payoff.json"
#: seconds per latency measurement (3 rounds, 2 batch sizes): the teacher and 3 LeNet5 students took 10 to 12 s on
#: 2 busy CPU cores, mostly Timer's calibration (a shorter time saved nothing)
PAYOFF_MIN_RUN_TIME = 0.1
BASELINES = ("uniform", "normal", "strokes", "no-generators")
#: the table's names of the rows; a method without one is shown as ``+<name>``
NAMES = {
    "teacher": "Teacher",
    "tucker": "Tucker only",
    "uniform": "+Uniform",
    "normal": "+Gaussian",
    "strokes": "+Strokes",
    "no-generators": "+KegNet without generators",
    "kegnet": "+KegNet",
    "dafl": "+DAFL",
    "dfad": "+DFAD",
}


def arg_value(args: Sequence[str], key: str) -> Any:
    """The value that ``kegnet`` command-line ``args`` give the dotted ``key`` (``model.teacher``; an ``init_args``
    part may be present or not, ``--k=v`` or ``--k v``), the last one winning, read as YAML; None when absent."""

    def plain(name: str) -> str:
        return ".".join(part for part in name.removeprefix("--").split(".") if part != "init_args")

    found = None
    for index, arg in enumerate(args):
        name, sep, value = arg.partition("=")
        if not name.startswith("--") or plain(name) != key:
            continue
        if not sep:
            if index + 1 >= len(args):
                continue
            value = args[index + 1]
        found = yaml.safe_load(value)
    return found


def read_config(path: str | Path) -> dict[str, Any]:
    """A ``kegnet`` YAML config as a dictionary, with an error that names the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist{run_folder_hint(path)}")
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


def _placeholders(value: Any, paths: dict[str, str]) -> Any:
    """``value`` (a config) with every occurrence of the ``paths`` (text -> placeholder) replaced, longest first."""
    if isinstance(value, dict):
        return {key: _placeholders(item, paths) for key, item in value.items()}
    if isinstance(value, list):
        return [_placeholders(item, paths) for item in value]
    if isinstance(value, str):
        for text in sorted(paths, key=len, reverse=True):
            value = value.replace(text, paths[text])
    return value


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        return {key: item for name, sub in value.items() for key, item in _flat(sub, f"{prefix}{name}.").items()}
    return {prefix.rstrip("."): value}


def settings_changed(stage: Stage, out: Path) -> list[str]:
    """How the settings of ``stage`` differ from those its folder was run with (``key: was -> now``); empty when the
    folder holds no run, or one with the same settings. Paths inside the run folder are compared as placeholders,
    so a folder copied into another run (the generators of an earlier run, say) compares equal."""
    saved_path = stage.folder / "config.yaml"
    if not saved_path.is_file():
        return []
    try:
        saved = yaml.safe_load(saved_path.read_text())
    except yaml.YAMLError:
        return []  # an unreadable config is written again when the stage runs
    if not isinstance(saved, dict):
        return []
    was_root = Path(str(saved.get("trainer", {}).get("default_root_dir", stage.folder)))
    was = _placeholders(saved, {str(was_root): "<stage>", str(was_root.parent.parent): "<run>"})
    now = _placeholders(stage.config, {str(stage.folder): "<stage>", str(out): "<run>"})
    before, after = _flat(was), _flat(now)
    changes = [
        f"{key}: {before.get(key, '(not set)')!r} -> {after.get(key, '(not set)')!r}"
        for key in sorted(set(before) | set(after))
        if before.get(key) != after.get(key)
    ]
    args_path = stage.folder / ARGS
    if args_path.is_file():
        try:
            args = json.loads(args_path.read_text())
        except json.JSONDecodeError:
            args = None
        if isinstance(args, list) and args != list(stage.extra):
            changes.append(f"arguments: {shlex.join(args) or '(none)'} -> {shlex.join(stage.extra) or '(none)'}")
    return changes


def check_settings_unchanged(plan: Sequence[Stage], out: Path) -> None:
    """Refuse, before any stage starts, to skip or resume a stage whose folder was run with other settings (another
    teacher, student, budget or argument): its result would enter the table under the new settings' names."""
    for stage in plan:
        if not ((stage.folder / RESULT).is_file() or (stage.folder / CHECKPOINT).is_file()):
            continue
        changes = settings_changed(stage, out)
        if changes:
            shown = "; ".join(changes[:3]) + (f"; and {len(changes) - 3} more" if len(changes) > 3 else "")
            raise ConfigError(
                f"{stage.folder} was run with other settings than this command gives it ({shown}); its result "
                f"would be reported under these settings. Give another --out for a new run, or delete "
                f"{stage.folder} to run that stage again with these settings"
            )


def check_stage_arguments(plan: Sequence[Stage], out: Path) -> None:
    """Parse the config and arguments of each kind of stage still to run as its ``kegnet fit`` will (nothing is built
    or run: ``--print_config``), so that a misspelt or ill-typed option (``--student_args+=--model.lrr=0.1``) fails
    now, in a line, rather than once the generators have trained."""
    import contextlib
    import io
    import tempfile

    from kegnet_pl.cli import main as kegnet

    seen: set[tuple[Any, ...]] = set()
    with tempfile.TemporaryDirectory() as folder:
        for stage in plan:
            kind = (stage.config.get("model", {}).get("class_path"), tuple(stage.extra))
            if not stage.train or kind in seen or (stage.folder / RESULT).is_file():
                continue
            seen.add(kind)
            path = Path(folder) / f"{len(seen)}.yaml"
            path.write_text(yaml.safe_dump(stage.config, sort_keys=False))
            said = io.StringIO()
            try:
                with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(said):
                    kegnet(["fit", "--config", str(path), *stage.extra, "--print_config"])
            except SystemExit as exit_info:
                if exit_info.code in (0, None):
                    continue
                lines = [line for line in said.getvalue().splitlines() if line.strip()]
                why = lines[-1].removeprefix("kegnet: error: ") if lines else f"exit status {exit_info.code}"
                name = stage.folder.relative_to(out) if stage.folder.is_relative_to(out) else stage.folder
                raise ConfigError(f"{name} would not start: {why}") from None


def check_methods(
    methods: Sequence[str], method_configs: dict[str, str], method_args: dict[str, Sequence[str]]
) -> None:
    """One-line errors for a method list that cannot run: unknown names, repeats, stray configs or arguments."""
    known = ["kegnet", *sorted(name for name in method_configs if name != "kegnet")]
    if not methods:
        raise ConfigError(f"give at least one method (methods: [{', '.join(known)}])")
    unknown = [name for name in methods if name not in known]
    if unknown:
        raise ConfigError(
            f"unknown methods {unknown}; known: {', '.join(known)} (kegnet, or a method that method_configs gives a "
            f"config for, e.g. method_configs: {{{unknown[0]}: configs/mnist/{unknown[0]}.yaml}})"
        )
    repeated = sorted({name for name in methods if list(methods).count(name) > 1})
    if repeated:
        raise ConfigError(f"methods {list(methods)} name {repeated} more than once")
    if "kegnet" in method_configs or "kegnet" in method_args:
        raise ConfigError(
            "kegnet takes no method_configs or method_args entry: its stages use generator_config / generator_args "
            "and student_config / student_args"
        )
    stray = sorted(set(method_args) - set(known))  # a method listed in method_configs but not run may keep its args
    if stray:
        raise ConfigError(
            f"method_args names {stray}, which method_configs gives no config for (known: {', '.join(known)})"
        )


def cpu_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, where the system has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


@dataclass
class Stage:
    """One stage of a run: its folder, config and extra ``kegnet`` arguments, whether it trains (else it is only
    evaluated), its seed and table row (``method``: ``generator``, ``tucker``, a baseline or a method; ``student``:
    its number), and ``after``, the folder of the stage it needs finished first (its seed's generators), if any."""

    folder: Path
    config: dict[str, Any]
    extra: list[str]
    train: bool
    seed: int
    method: str
    student: int | None = None
    after: Path | None = None

    @property
    def kind(self) -> str:
        """Stages of one kind take about as long as each other: the generators, an evaluation, or a method's."""
        return self.method if self.train else "evaluation"


def clock(seconds: float) -> str:
    """A duration as ``m:ss``, or ``h:mm:ss`` from an hour on."""
    hours, rest = divmod(round(seconds), 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    """Where a run stands, printed as stages start and finish: stage k of n, the time elapsed, and the time left,
    estimated from the stages run so far: each stage still to finish takes the mean time of those of its kind (else
    the time recorded by stages of its kind that finished in an earlier run, else the mean of all), less what it ran
    already, the sum shared out over the stages that run side by side."""

    def __init__(
        self,
        kinds: dict[Path, str],
        jobs: int,
        threads: int | None,
        echo: Callable[[str], Any] = print,
        now: Callable[[], float] = time.monotonic,
        alone_threads: int | None = None,
    ) -> None:
        self.kinds, self.jobs, self.threads, self.echo, self.now = kinds, jobs, threads, echo, now
        self.alone_threads = alone_threads
        self.begin = now()
        self.numbers: dict[Path, int] = {}  # stage k of n, in the order they started
        self.running: dict[Path, float] = {}  # when each stage running began
        self.took: list[tuple[str, float]] = []  # (kind, seconds) of the stages that ran
        self.recorded: list[tuple[str, float]] = []  # (kind, seconds) that skipped stages took when they ran
        self.finished_before = 0

    def started(self, folder: Path, text: str) -> None:
        self.numbers[folder] = len(self.numbers) + 1
        self.running[folder] = self.now()
        self.echo(f"[{self.numbers[folder]}/{len(self.kinds)}] {text}  ({self.times()})")

    def finished(self, folder: Path, name: str, result: dict[str, Any], skipped: bool = False) -> None:
        seconds = self.now() - self.running.pop(folder)
        if skipped:  # its start line said so; the time its result records is a hint for stages of its kind
            self.finished_before += 1
            if isinstance(result.get("seconds"), int | float):
                self.recorded.append((self.kinds[folder], float(result["seconds"])))
            return
        self.took.append((self.kinds[folder], seconds))
        accuracy = result.get("test/acc")
        score = "" if accuracy is None else f", test/acc {100 * accuracy:.2f}%"
        done = len(self.took) + self.finished_before
        self.echo(
            f"[{self.numbers[folder]}/{len(self.kinds)}] {name}: done in {clock(seconds)}{score}; "
            f"{done} of {len(self.kinds)} finished  ({self.times()})"
        )

    def left(self) -> float | None:
        """Seconds left, estimated; None before any stage has run or recorded its time."""
        if not self.took and not self.recorded:
            return None
        overall = statistics.mean(seconds for _, seconds in (self.took or self.recorded))
        mean = {}
        for times in (self.recorded, self.took):  # this run's own times of a kind replace those recorded
            by_kind: dict[str, list[float]] = {}
            for kind, seconds in times:
                by_kind.setdefault(kind, []).append(seconds)
            mean.update({kind: statistics.mean(values) for kind, values in by_kind.items()})
        now = self.now()
        todo = [folder for folder in self.kinds if folder not in self.numbers or folder in self.running]
        work = sum(max(0.0, mean.get(self.kinds[f], overall) - (now - self.running.get(f, now))) for f in todo)
        return work / max(1, min(self.jobs, len(todo)))

    def times(self) -> str:
        left = self.left()
        return f"{clock(self.now() - self.begin)} elapsed" + ("" if left is None else f", about {clock(left)} left")

    def summary(self) -> str:
        """One line: how many stages, in how long, how many side by side."""
        ran = f"{len(self.kinds)} stages in {clock(self.now() - self.begin)}"
        if self.finished_before:
            ran += f" ({self.finished_before} finished before)"
        threads = "" if self.threads is None else f" of {self.threads} torch thread(s)"
        if self.threads is not None and self.alone_threads not in (None, self.threads):
            threads += f" ({self.alone_threads} for a stage that ran alone)"
        return f"done: {ran}, up to {self.jobs} at a time{threads}"


class Stopped(KegnetError):
    """The pipeline was sent a signal (SIGTERM, SIGINT) and stopped its stages."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(
            f"stopped by {signal.Signals(signum).name}: the running stages stopped at their next batch and no other "
            "started; finished stages and checkpoints are kept: run the same command again to resume"
        )


class Worker:
    """A ``python -m kegnet_pl.stage --worker`` process: it starts up once (Python, torch, Lightning: seconds of CPU)
    and runs stage after stage, each as its own ``python -m kegnet_pl.stage`` command would."""

    def __init__(self, env: dict[str, str]) -> None:
        command = [sys.executable, "-m", "kegnet_pl.stage", "--worker"]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)

    def run(self, args: list[str], log: Path, threads: int | None = None) -> tuple[int, bool]:
        """Run ``python -m kegnet_pl.stage <args>``, its output appended to ``log``, on ``threads`` torch threads
        (``None``: the worker's own count): its exit status, and whether this worker can run another stage."""
        assert self.process.stdin is not None and self.process.stdout is not None
        try:
            self.process.stdin.write(json.dumps({"args": args, "log": str(log), "threads": threads}) + "\n")
            self.process.stdin.flush()
            reply = self.process.stdout.readline()
        except BrokenPipeError:
            reply = ""
        if not reply:  # it died: killed, or crashed (the stage's log holds what it printed)
            return self.process.wait() or 1, False
        answer = json.loads(reply)
        return answer["exit"], not answer["retired"]

    def close(self) -> None:
        """End it (it is idle, or done)."""
        if self.process.poll() is None:
            self.process.terminate()
        self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()


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
        methods: Sequence[str] = ("kegnet",),
        method_configs: dict[str, str] | None = None,
        method_args: dict[str, Sequence[str]] | None = None,
        latency_threads: int = 1,
        jobs: int = 1,
        separate_test: bool = False,
        threads: int | None = None,
        scratch_args: Sequence[str] = (),
    ) -> None:
        if latency_threads < 0:
            raise ConfigError(f"latency_threads must be 0 (no latency) or more, got {latency_threads}")
        self.latency_threads = latency_threads
        if jobs < 1:
            raise ConfigError(f"--jobs must be at least 1, got {jobs} (--jobs 1 runs one stage at a time)")
        if threads is not None and threads < 1:
            raise ConfigError(f"--threads must be at least 1, got {threads} (leave it out for CPU cores // jobs)")
        self.jobs = jobs
        self.separate_test = separate_test
        self._idle: queue.SimpleQueue[Worker] = queue.SimpleQueue()  # workers waiting for a stage
        self._workers: list[Worker] = []
        self._processes: set[subprocess.Popen] = set()  # every stage process alive (workers included)
        self._lock = threading.RLock()  # re-entrant: the SIGTERM handler may interrupt the main thread holding it
        self._stopped: int | None = None  # the signal that stopped the run
        self.threads = threads if threads is not None else (max(1, cpu_cores() // jobs) if jobs > 1 else None)
        # A stage that starts when nothing runs and nothing else can start stays alone until it ends (others wait for
        # it): it gets every core, unless the user fixed the thread count (--threads).
        self.alone_threads = cpu_cores() if threads is None and jobs > 1 else self.threads
        self.methods = list(methods)
        method_configs, method_args = dict(method_configs or {}), dict(method_args or {})
        check_methods(self.methods, method_configs, method_args)
        self.method_bases = {}
        for method in self.methods:
            if method != "kegnet":
                try:
                    self.method_bases[method] = read_config(method_configs[method])
                except ConfigError as err:
                    raise ConfigError(f"method_configs.{method}: {err}") from err
        self.method_args = {method: list(method_args.get(method, [])) for method in self.methods}
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
        self.scratch_args = list(scratch_args)
        self.echo = echo
        unknown = sorted(set(self.baselines) - set(BASELINES))
        if unknown:
            raise ConfigError(f"unknown baselines {unknown}; choose from {', '.join(BASELINES)}")
        if not self.students:
            raise ConfigError("give at least one student (e.g. students: [lenet5-s1])")
        if not self.seeds:
            raise ConfigError("give at least one seed (e.g. seeds: [0])")
        if self.out.exists() and not self.out.is_dir():
            raise ConfigError(f"--out {str(self.out)!r} is a file; give a folder for the run (it is made if missing)")
        self.teacher_args = {**self.teacher, "teacher": self._teacher_file()}
        self._networks: tuple[dict[str, Any], dict[str, Any]] | None = None  # the teacher and students, once built

    def _teacher_file(self) -> str | None:
        """The teacher every stage uses: the ``teacher`` option, else the generator stage's (its args, then its
        config). The methods other than KegNet get this file; KegNet's students take it from the generators."""
        if "teacher" in self.teacher:
            return self.teacher["teacher"]
        given = arg_value(self.generator_args, "model.teacher")
        teacher = given if given is not None else self.generator_base["model"].get("init_args", {}).get("teacher")
        if teacher is None and self.methods != ["kegnet"]:
            raise ConfigError(
                f"methods {self.methods} need the teacher's file: give teacher: PATH (or --teacher PATH), or set "
                "model.init_args.teacher in the generator config"
            )
        return teacher

    # --- running one stage -------------------------------------------------------------------------
    def _env(self, threads: int | None) -> dict[str, str]:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if threads is not None:  # torch's intra-op threads: N jobs side by side share the cores
            env["OMP_NUM_THREADS"] = str(threads)
        return env

    def _kegnet(self, folder: Path, module: str, args: list[str], threads: int | None = None) -> None:
        """``python -m <module> <args>`` (``kegnet_pl.cli``: the ``kegnet`` command, a process of its own;
        ``kegnet_pl.stage``: fit then test, or test, run by a :class:`Worker`), its output appended to the stage's log
        after a ``$`` line that reruns it exactly."""
        command = [sys.executable, "-m", module, *args]
        shown = shlex.join(command) if threads is None else f"OMP_NUM_THREADS={threads} {shlex.join(command)}"
        log = folder / "stage.log"
        with log.open("a") as handle:
            handle.write(f"$ {shown}\n")
        if module == "kegnet_pl.stage":
            status = self._in_worker(args, log, threads)
        else:
            with log.open("a") as handle:
                process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=self._env(threads))
                with self._lock:
                    self._processes.add(process)
                status = process.wait()
                with self._lock:
                    self._processes.discard(process)
        if status != 0:
            tail = [line for line in log.read_text().splitlines() if line.strip()][-5:]
            ends = "\n  ".join(tail)
            raise KegnetError(f"stage {folder} failed (exit {status}); its log {log} ends with:\n  {ends}")

    def _in_worker(self, args: list[str], log: Path, threads: int | None) -> int:
        """Run ``python -m kegnet_pl.stage <args>`` in an idle worker (a new one if none is idle); its exit status."""
        try:
            worker = self._idle.get_nowait()
        except queue.Empty:
            worker = self._start_worker()
        if worker.process.poll() is not None:  # it died while idle
            worker = self._start_worker()
        status, reusable = worker.run(args, log, threads)
        if reusable and status == 0:
            self._idle.put(worker)
        else:
            worker.close()
        return status

    def _start_worker(self) -> Worker:
        with self._lock:
            worker = Worker(self._env(self.threads))
            self._workers.append(worker)
            self._processes.add(worker.process)
        return worker

    def _stop(self, signum: int, frame: Any) -> None:
        """The SIGTERM and SIGINT (Ctrl-C) handler: send SIGTERM to every stage process (Lightning stops a fit at its
        next batch) and start no other stage; :meth:`_schedule` then raises :class:`Stopped` (it prints nothing: the
        main thread may be printing)."""
        self._stopped = signum
        with self._lock:
            alive = [process for process in self._processes if process.poll() is None]
        for process in alive:  # SIGTERM: Lightning stops at the next batch and the stage keeps its checkpoints
            process.send_signal(signal.SIGTERM)

    @staticmethod
    def action(folder: Path, train: bool) -> str:
        """What :meth:`run_stage` will do in ``folder``: skip it, resume it, train it, or evaluate it."""
        if (folder / RESULT).is_file():
            return "finished before, skipped"
        if not train:
            return "evaluating"
        return "resuming" if (folder / "checkpoints" / "last.ckpt").is_file() else "training"

    def run_stage(
        self, folder: Path, config: dict[str, Any], extra: list[str], train: bool, threads: int | None = None
    ) -> dict[str, Any]:
        """Fit (resuming an interrupted run) and test one stage on ``threads`` torch threads (``None``: torch's
        default), or return its recorded result. A :class:`Worker` runs it (``kegnet_pl.stage``: fit and test in one
        process that ran other stages before); with ``separate_test``, a ``kegnet fit`` and a ``kegnet test`` process
        of its own, as before."""
        result_path = folder / RESULT
        if result_path.is_file():
            return json.loads(result_path.read_text())
        folder.mkdir(parents=True, exist_ok=True)
        config_path = folder / "config.yaml"
        atomic_write_text(config_path, yaml.safe_dump(config, sort_keys=False))
        atomic_write_text(folder / ARGS, json.dumps(list(extra)) + "\n")
        start = time.perf_counter()
        last = folder / "checkpoints" / "last.ckpt"
        args = ["--config", str(config_path), *extra]
        fit = ["fit", *args, *(["--ckpt_path", str(last)] if last.is_file() else [])]
        if not self.separate_test:
            self._kegnet(folder, "kegnet_pl.stage", fit if train else ["test", *args], threads)
        elif train:
            self._kegnet(folder, "kegnet_pl.cli", fit, threads)
            self._kegnet(folder, "kegnet_pl.cli", ["test", *args, "--ckpt_path", str(last)], threads)
        else:
            self._kegnet(folder, "kegnet_pl.cli", ["test", *args], threads)
        result = json.loads((folder / METRICS).read_text())
        result["seconds"] = round(time.perf_counter() - start, 1)
        if train:
            result.update(training_done(last, config, extra))
        atomic_write_text(result_path, json.dumps(result, indent=2, sort_keys=True) + "\n")
        return result

    # --- the whole pipeline ------------------------------------------------------------------------
    def plan(self) -> list[Stage]:
        """Every stage of the run, in the order of the table: per seed, the generators, then per student its
        Tucker start, each method and each baseline. A stage that samples the generators waits for them."""
        plan = []
        for seed in self.seeds:
            root = self.out / f"seed{seed}"
            generators = None
            if "kegnet" in self.methods:
                folder = root / "generator"
                config = stage_config(self.generator_base, folder, seed, self.teacher, self.trainer_preset)
                config["data"]["init_args"].setdefault("val_batches", 4)
                plan.append(Stage(folder, config, self.generator_args, True, seed, "generator"))
                generators = str(folder / "checkpoints" / "last.ckpt")
            for number, preset in enumerate(self.students, start=1):
                for source, base, model_args, extra in self._student_stages(preset, generators):
                    folder = root / f"student{number}-{source}"
                    config = stage_config(base, folder, seed, model_args, self.trainer_preset)
                    after = root / "generator" if model_args.get("generators") else None
                    plan.append(Stage(folder, config, extra, source != "tucker", seed, source, number, after))
        return plan

    def run(self) -> Path:
        plan = self.plan()
        check_settings_unchanged(plan, self.out)
        check_stage_arguments(plan, self.out)
        self._check_students_fit_teacher()
        kinds = {stage.folder: stage.kind for stage in plan}
        progress = Progress(kinds, self.jobs, self.threads, self.echo, alone_threads=self.alone_threads)
        results = self._run_all(plan, progress)
        rows: list[dict[str, Any]] = []
        stages: list[dict[str, Any]] = []
        for stage in plan:
            result = results[stage.folder]
            stages.append({"stage": stage.folder.name, "seed": stage.seed, **result})
            if stage.method == "generator":
                continue
            if not any(row["seed"] == stage.seed for row in rows):  # every stage tests the same teacher
                rows.append(self._row("teacher", None, stage.seed, result, teacher=True))
            rows.append(self._row(stage.method, stage.student, stage.seed, result))
        rows = self._choose(plan, rows)
        path = self._write(rows, stages)
        self.echo(progress.summary())
        return path

    def _run_all(self, plan: list[Stage], progress: Progress) -> dict[Path, dict[str, Any]]:
        """Run the stages, up to ``jobs`` at a time, each once the stage it waits for has finished, starting them in
        the order of ``plan``; their results by folder. After a failure no stage starts: those running finish (as
        ``make`` does, so their work is kept) and the first error is raised."""
        results: dict[Path, dict[str, Any]] = {}
        handles = threading.current_thread() is threading.main_thread()  # signal handlers live in the main thread
        before = signal.signal(signal.SIGTERM, self._stop) if handles else None
        before_int = signal.signal(signal.SIGINT, self._stop) if handles else None  # Ctrl-C: the same clean stop
        self._stopped = None
        try:
            if not self.separate_test:  # they start up while the first stages run
                todo = [stage for stage in plan if not (stage.folder / RESULT).is_file()]
                for _ in range(min(self.jobs, len(todo))):
                    self._idle.put(self._start_worker())
            self._schedule(plan, progress, results)
        finally:
            for worker in self._workers:
                worker.close()
            self._workers, self._idle, self._processes = [], queue.SimpleQueue(), set()
            if handles:
                signal.signal(signal.SIGTERM, before)
                signal.signal(signal.SIGINT, before_int)
        return results

    def _schedule(self, plan: list[Stage], progress: Progress, results: dict[Path, dict[str, Any]]) -> None:
        pending, running = list(plan), {}
        failure: BaseException | None = None
        announced = False
        with ThreadPoolExecutor(max_workers=self.jobs) as pool:
            while pending or running:
                if self._stopped is not None and not announced and running:
                    announced = True
                    name = signal.Signals(self._stopped).name
                    self.echo(f"{name}: waiting for the {len(running)} stage(s) still running to stop at a batch")
                ready = [stage for stage in pending if stage.after is None or stage.after in results]
                alone = not running and len(ready) == 1  # nothing can start beside it before it ends
                threads = self.alone_threads if alone else self.threads
                for stage in ready[: self.jobs - len(running)] if failure is None and self._stopped is None else []:
                    pending.remove(stage)
                    action = self.action(stage.folder, stage.train)
                    log = "" if action.startswith("finished") else f" (log: {stage.folder / 'stage.log'})"
                    progress.started(stage.folder, f"{self._name(stage)}: {action}{log}")
                    job = pool.submit(
                        self.run_stage, stage.folder, stage.config, stage.extra, stage.train, threads=threads
                    )
                    running[job] = (stage, action.startswith("finished"))
                if not running:
                    break
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for job in finished:
                    stage, skipped = running.pop(job)
                    try:
                        results[stage.folder] = job.result()
                    except Exception as err:  # the others finish first; then the first error is raised
                        failure = failure or err
                        if running and self._stopped is None:
                            self.echo(f"{self._name(stage)} failed; waiting for the {len(running)} stage(s) running")
                        continue
                    progress.finished(stage.folder, self._name(stage), results[stage.folder], skipped)
        if self._stopped is not None:
            raise Stopped(self._stopped)
        if failure is not None:
            raise failure

    def _name(self, stage: Stage) -> str:
        return str(stage.folder.relative_to(self.out))

    def _student_stages(
        self, preset: str, generators: str | None
    ) -> list[tuple[str, dict[str, Any], dict[str, Any], list[str]]]:
        """``(name, base config, model args, extra args)`` of one student's stages: its Tucker start evaluated (not
        for a student trained from scratch), each method, each noise baseline."""
        from kegnet_pl.nets import classifier_names

        def student(source: str) -> dict[str, Any]:
            args = {"student": preset, "source": source}
            if generators is not None:  # the teacher comes with the generators
                return {"generators": generators, **args}
            return {"generators": None, **self.teacher_args, **args}

        stages = []
        scratch = preset in classifier_names()
        extra = self.student_args + (self.scratch_args if scratch else [])
        if not scratch:  # evaluation only: no sample of its source trains it
            stages.append(("tucker", self.student_base, student("kegnet" if generators else "uniform"), extra))
        for method in self.methods:
            if method == "kegnet":
                stages.append(("kegnet", self.student_base, student("kegnet"), extra))
            else:
                args = {**self.teacher_args, "student": preset}
                stages.append((method, self.method_bases[method], args, self.method_args[method]))
        stages += [(source, self.student_base, student(source), extra) for source in self.baselines]
        return stages

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

    # --- choosing a student without data ------------------------------------------------------------
    def _choose(self, plan: list[Stage], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The rows with each trained student's data-free score (``probe_agreement``, ``probe_kl``) and, per seed and
        student, ``chosen: true`` on the one that scores best (:mod:`kegnet_pl.selection`); unchanged, with a line
        saying why, when the students cannot be scored in this process."""
        from kegnet_pl import selection

        started = time.perf_counter()
        scores: dict[tuple[int, int], dict[str, selection.Score]] = {}  # (seed, student) -> method -> score
        try:
            for seed in self.seeds:
                loaded = {
                    (stage.student, stage.method): selection.load_stage(stage.folder / CHECKPOINT)
                    for stage in plan
                    if stage.seed == seed and stage.student is not None and (stage.folder / CHECKPOINT).is_file()
                }
                if not loaded:
                    continue
                generators = self.out / f"seed{seed}" / "generator" / CHECKPOINT
                probes, found = selection.score_students(
                    loaded, seed, str(generators) if generators.is_file() else None
                )
                self.echo(f"seed {seed}: students scored on {probes.describe()} the teacher is sure of")
                for (student, method), value in found.items():
                    scores.setdefault((seed, student), {})[method] = value
        except (KegnetError, OSError, RuntimeError) as err:
            self.echo(f"no student chosen without data: {err}")
            return rows
        chosen = {pair: selection.choose(methods) for pair, methods in scores.items()}
        done = []
        for row in rows:
            value = scores.get((row["seed"], row["student"]), {}).get(row["method"])
            if value is not None:
                row = {
                    **row,
                    "probe_agreement": value.agreement,
                    "probe_kl": value.kl,
                    "chosen": chosen[row["seed"], row["student"]] == row["method"],
                }
            done.append(row)
        if scores:
            count = sum(len(methods) for methods in scores.values())
            students = "student" if count == 1 else "students"
            self.echo(f"{count} {students} scored without data in {time.perf_counter() - started:.1f} s")
        return done

    def _write(self, rows: list[dict[str, Any]], stages: list[dict[str, Any]]) -> Path:
        rows = with_payoff(rows, self.students, self._payoff())
        grids = sorted((self.out / f"seed{self.seeds[0]}" / "generator" / "checkpoints").glob("samples_gen*.png"))
        table = write_results(self.out, rows, stages, self.students, grids[0] if grids else None, self.latency_threads)
        self.echo("")
        self.echo(table)
        return self.out / "results.json"

    # --- the payoff of compression -----------------------------------------------------------------
    def _teacher_option(self, key: str) -> Any:
        """``teacher_arch`` / ``input_shape`` / ``num_classes`` of the teacher, where they are given as the teacher's
        file is (the pipeline's option, the generator stage's args, then its config); None when none gives it."""
        if key in self.teacher:
            return self.teacher[key]
        given = arg_value(self.generator_args, f"model.{key}")
        return given if given is not None else self.generator_base["model"].get("init_args", {}).get(key)

    def _check_students_fit_teacher(self) -> None:
        """Build the teacher and every student preset from it now (seconds), so that a teacher the config's students
        do not fit (an MLP given to the LeNet5 presets) is one line before the generators train, not after; the
        networks are kept for :meth:`_payoff`."""
        from kegnet_pl import payoff

        teacher = self.teacher_args["teacher"]
        if teacher is None:
            return
        options = {key: self._teacher_option(key) for key in ("input_shape", "num_classes")}
        try:
            net, spec = payoff.teacher_network(teacher, self._teacher_option("teacher_arch"), **options)
        except KegnetError:  # the generator stage says what is wrong with the file, in the options it takes
            return
        nets = {"teacher": net}
        for name in dict.fromkeys(self.students):
            try:
                nets[name] = payoff.build_student(name, net, spec)
            except KegnetError as err:
                raise ConfigError(
                    f"student {name!r} cannot be built from the teacher {teacher!r} ({spec['arch']}, input shape "
                    f"{list(spec['input_shape'])}): {err}"
                ) from err
        self._networks = nets, spec

    def _payoff(self) -> dict[str, dict[str, Any]] | None:
        """Parameters, FLOPs and CPU latency of the teacher and of each student preset (:mod:`kegnet_pl.payoff`),
        measured once per run folder and kept in payoff.json; None, with a line saying why, when the teacher cannot
        be loaded in this process."""
        wanted = ["teacher", *dict.fromkeys(self.students)]
        path = self.out / PAYOFF
        if path.is_file():
            saved = json.loads(path.read_text())
            if saved.get("latency_threads") == self.latency_threads and sorted(saved["networks"]) == sorted(wanted):
                return saved["networks"]
        teacher = self.teacher_args["teacher"]
        if teacher is None:
            self.echo("payoff not measured: no teacher file is known to the pipeline (give teacher: PATH)")
            return None
        import torch

        from kegnet_pl import payoff

        started = time.perf_counter()
        try:
            options = {key: self._teacher_option(key) for key in ("input_shape", "num_classes")}
            built = self._networks  # by the check before the stages ran
            nets, spec = built or payoff.networks(
                teacher, self.students, self._teacher_option("teacher_arch"), **options
            )
        except KegnetError as err:
            self.echo(f"payoff not measured: {err}")
            return None
        figures = payoff.measure(
            nets, spec["input_shape"], threads=self.latency_threads, rounds=3, min_run_time=PAYOFF_MIN_RUN_TIME
        )
        record = {"latency_threads": self.latency_threads, "torch": torch.__version__, "networks": figures}
        atomic_write_text(path, json.dumps(record, indent=2) + "\n")
        self.echo(f"payoff of {len(wanted)} networks measured in {time.perf_counter() - started:.1f} s ({path})")
        return figures


def with_payoff(
    rows: list[dict[str, Any]], students: Sequence[str], payoff: dict[str, dict[str, Any]] | None
) -> list[dict[str, Any]]:
    """The rows with the payoff figures of their network (the teacher's, or their student preset's; see
    :data:`kegnet_pl.payoff.ROW_KEYS`); unchanged without payoff figures."""
    if not payoff:
        return rows
    from kegnet_pl.payoff import ROW_KEYS

    done = []
    for row in rows:
        network = "teacher" if row["student"] is None else students[row["student"] - 1]
        done.append({**row, **{key: payoff[network].get(key) for key in ROW_KEYS}})
    return done


def write_results(
    out: Path,
    rows: list[dict[str, Any]],
    stages: list[dict[str, Any]],
    students: Sequence[str],
    samples: Path | None = None,
    latency_threads: int | None = None,
) -> str:
    """Write the run folder's results.json, stages.json, results.md, accuracy_vs_size.png and (a copy of the
    generators' image grid ``samples``) samples.png; return the table of results.md."""
    from kegnet_pl.plots import accuracy_vs_size

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "results.json", json.dumps(rows, indent=2) + "\n")
    atomic_write_text(out / "stages.json", json.dumps(stages, indent=2) + "\n")
    table = results_table(rows, students, stages, latency_threads)
    atomic_write_text(out / "results.md", table + "\n")
    with atomic_write(out / "accuracy_vs_size.png", "wb") as handle:
        handle.write(accuracy_vs_size(rows, {method: _name(method) for method in _row_order(rows)}))
    if samples is not None:
        with atomic_write(out / "samples.png", "wb") as handle:
            handle.write(samples.read_bytes())
    return table


def training_done(checkpoint: Path, config: dict[str, Any], extra: Sequence[str]) -> dict[str, int]:
    """What a stage trained, for the table's budget: the training batches its checkpoint's loops completed
    (``train_batches``), its optimizer steps (``optimizer_steps``: Lightning's ``global_step``, which counts every
    optimizer of a manually optimised method) and the batch size its config and ``extra`` args give."""
    from kegnet_pl.loading import read_checkpoint

    state = read_checkpoint(checkpoint)
    done = {"optimizer_steps": int(state.get("global_step", 0))}
    try:
        done["train_batches"] = int(state["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["completed"])
    except (KeyError, TypeError):  # a checkpoint without Lightning's loop state
        pass
    batch_size = arg_value(extra, "data.batch_size")
    if batch_size is None:
        batch_size = config.get("data", {}).get("init_args", {}).get("batch_size")
    if isinstance(batch_size, int):
        done["batch_size"] = batch_size
    return done


def _mean_std(values: list[float | None], scale: float = 100.0, digits: int = 2) -> str:
    """``mean ± std`` of the values present, times ``scale`` (accuracy in %); "n/a" when there are none."""
    values = [scale * v for v in values if v is not None]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _row_order(rows: list[dict[str, Any]]) -> list[str]:
    """The table's rows: teacher, Tucker only, the noise baselines, then the methods in the order they ran."""
    ran = list(dict.fromkeys(row["method"] for row in rows))
    fixed = ["teacher", "tucker", *BASELINES]  # "tucker" also says which students were trained from scratch
    return [name for name in fixed if name in ran or name == "tucker"] + [name for name in ran if name not in fixed]


def _name(method: str) -> str:
    return NAMES.get(method, f"+{method}")


def _budget(stages: list[dict[str, Any]]) -> str:
    """``batches x batch size (optimizer steps), seconds`` of a stage over seeds (the first seed's counts)."""
    first = stages[0]
    seconds = f"{statistics.mean(s['seconds'] for s in stages):.0f} s"
    if "train_batches" not in first and "optimizer_steps" not in first:
        return f"evaluation, {seconds}" if first["stage"].endswith("-tucker") else seconds
    batches = first.get("train_batches", "?")
    return f"{batches} x {first.get('batch_size', '?')} ({first.get('optimizer_steps', '?')} steps), {seconds}"


def results_table(
    rows: list[dict[str, Any]],
    students: Sequence[str],
    stages: list[dict[str, Any]],
    latency_threads: int | None = None,
) -> str:
    """The paper's table: test accuracy (%) per method and student (mean ± std over seeds), then fidelity, the
    payoff of compression (sizes, FLOPs and CPU latency against the teacher, measured with ``latency_threads``
    threads), and the training budget and wall time of every stage."""
    seeds = sorted({row["seed"] for row in rows})
    order = _row_order(rows)
    numbers = range(1, len(students) + 1)
    trained = [s for s in stages if s["stage"] != "generator" and "train_batches" in s]
    budgets = {(s.get("train_batches"), s.get("batch_size"), s.get("optimizer_steps")) for s in trained}
    if len(budgets) == 1:
        ((batches, size, steps),) = budgets
        budget = f"every method and baseline trained equal steps ({batches} batches of {size}, {steps} optimizer steps)"
    else:
        budget = "every method trained the budget its config and arguments give (table below)"
    header = "| method | " + " | ".join(f"student {n} ({preset})" for n, preset in enumerate(students, 1)) + " |"
    title = f"Test accuracy (%) on real held-out data, {len(seeds)} seed(s): {', '.join(map(str, seeds))}"
    lines = [f"{title}; {budget}." if trained else f"{title}.", "", header, "|---" * (len(students) + 1) + "|"]
    scratch = False
    for method in order:
        cells = []
        for number in numbers:
            picked = [r for r in rows if r["method"] == method and (r["student"] in (number, None))]
            if method == "tucker" and not picked and any(r["student"] == number for r in rows):
                cells.append("from scratch")  # a registered classifier, not a compressed teacher: nothing to test
                scratch = True
                continue
            cells.append(_mean_std([r["accuracy"] for r in picked]))
        if any(cell != "n/a" for cell in cells):
            lines.append(f"| {_name(method)} | " + " | ".join(cells) + " |")
    lines += _chosen_rows(rows, numbers)
    if scratch:
        lines += [
            "",
            "from scratch: the student is a registered classifier trained from random weights (no Tucker start).",
        ]
    lines += _probe_table(rows, numbers, order)
    lines += _fidelity_table(stages, students, order)
    lines += _payoff_table(rows, students, latency_threads)
    lines += [
        "",
        "Training per stage: batches x batch size (optimizer steps), then wall time (mean over seeds)",
        "",
        "| method | " + " | ".join(f"student {n}" for n in numbers) + " |",
        "|---" * (len(students) + 1) + "|",
    ]
    for method in order[1:]:
        cells = []
        for number in numbers:
            mine = [s for s in stages if s["stage"] == f"student{number}-{method}"]
            cells.append(_budget(mine) if mine else "n/a")
        if any(cell != "n/a" for cell in cells):
            lines.append(f"| {_name(method)} | " + " | ".join(cells) + " |")
    generator = [s for s in stages if s["stage"] == "generator"]
    if generator:
        lines += ["", f"Generator training: {_budget(generator)} per seed, shared by the KegNet students."]
    return "\n".join(lines)


def _chosen_rows(rows: list[dict[str, Any]], numbers: Sequence[int]) -> list[str]:
    """The accuracy of the student chosen without data for each student (mean ± std over seeds), then which method
    was chosen on which seed; nothing when no row was scored."""
    chosen = [row for row in rows if row.get("chosen")]
    if not chosen:
        return []
    cells = [_mean_std([r["accuracy"] for r in chosen if r["student"] == number]) for number in numbers]
    picks = []
    for number in numbers:
        by_method: dict[str, list[int]] = {}
        for row in sorted(chosen, key=lambda r: r["seed"]):
            if row["student"] == number:
                by_method.setdefault(row["method"], []).append(row["seed"])
        if by_method:
            said = ", ".join(
                f"{_name(method)} (seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))})"
                for method, seeds in by_method.items()
            )
            picks.append(f"student {number}: {said}")
    return [
        "| **Chosen without data** (best probe agreement, below) | " + " | ".join(cells) + " |",
        "",
        "Chosen without data (the student of each seed that agrees most with the teacher on the artificial probes it "
        "is sure of; no real data): " + "; ".join(picks) + ".",
    ]


def _probe_table(rows: list[dict[str, Any]], numbers: Sequence[int], order: Sequence[str]) -> list[str]:
    """Each trained student's data-free score: agreement (%) with the teacher on the probes it is sure of."""
    from kegnet_pl.selection import CONFIDENCE

    lines = []
    for method in order:
        values = [
            [r.get("probe_agreement") for r in rows if r["method"] == method and r["student"] == n] for n in numbers
        ]
        if any(v is not None for cell in values for v in cell):
            lines.append(f"| {_name(method)} | " + " | ".join(_mean_std(cell) for cell in values) + " |")
    if not lines:
        return []
    header = "| method | " + " | ".join(f"student {n}" for n in numbers) + " |"
    title = (
        "Agreement (%) with the teacher on the artificial probes that it calls with probability >= "
        f"{CONFIDENCE} (images shifted and turned, so that no student trained on them): the data-free score that "
        "chooses (kegnet_pl.selection)"
    )
    return ["", title, "", header, "|---" * (len(numbers) + 1) + "|", *lines]


def _payoff_table(rows: list[dict[str, Any]], students: Sequence[str], latency_threads: int | None) -> list[str]:
    """The teacher and each student: parameters, and where the rows have them FLOPs and CPU latency, each with its
    ratio to the teacher; then a sentence for each student slower than its teacher."""
    from kegnet_pl.payoff import ROW_KEYS, slower, table

    figures = {}
    for number, preset in enumerate([None, *students]):
        mine = [r for r in rows if r["student"] == (number or None)]
        if mine:
            label = "teacher" if preset is None else f"{number} ({preset})"
            figures[label] = {key: mine[0].get(key) for key in ("params", "compression_ratio", *ROW_KEYS)}
    if not figures:
        return []
    lines = [""]
    if any(row.get("flops") is not None for row in figures.values()):
        timed = any(row.get("latency_b1_ms") is not None for row in figures.values())
        threads = f", {latency_threads} thread(s)" if latency_threads else ""
        latency = (
            f", and the median CPU latency of that pass at batch 1 and 256 (this machine{threads})" if timed else ""
        )
        lines += [
            f"What compression buys: parameters, FLOPs of a forward pass of one input{latency}; x: the teacher's "
            "figure over the network's (below 1.00x: larger or slower than the teacher).",
            "",
        ]
    lines += table(figures)
    sentences = slower(figures)
    return lines + (["", *sentences] if sentences else [])


def _fidelity_table(stages: list[dict[str, Any]], students: Sequence[str], order: Sequence[str]) -> list[str]:
    """KL divergence from the teacher on the real test data per method and student, from the stages' results.

    Finer than accuracy where the student is close to the teacher: a few test images decide an accuracy gap of
    0.1 points, while the KL measures how the student follows the teacher on every image.
    """
    rows = []
    for method in order:
        if method == "teacher":  # the reference
            continue
        cells = [
            _mean_std([s.get("test/real_kl") for s in stages if s["stage"] == f"student{n}-{method}"], 1.0, 4)
            for n in range(1, len(students) + 1)
        ]
        if any(cell != "n/a" for cell in cells):
            rows.append(f"| {_name(method)} | " + " | ".join(cells) + " |")
    if not rows:  # stages recorded before the fidelity figures existed
        return []
    header = "| method | " + " | ".join(f"student {n}" for n in range(1, len(students) + 1)) + " |"
    title = "KL divergence from the teacher on real held-out data (lower: closer to the teacher)"
    return ["", title, "", header, "|---" * (len(students) + 1) + "|", *rows]


def read_trainer_preset(path: str) -> dict[str, Any]:
    """A ``configs/trainer/*.yaml`` preset (a ``trainer:`` section only)."""
    path_ = Path(path)
    if not path_.is_file():
        raise ConfigError(f"trainer preset {path!r} does not exist{run_folder_hint(path)} (see configs/trainer/)")
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
    scratch_args: list[str] = [],  # noqa: B006
    methods: list[str] = ["kegnet"],  # noqa: B006
    method_configs: dict[str, str] = {},  # noqa: B006
    method_args: dict[str, list[str]] = {},  # noqa: B006
    trainer_config: str | None = None,
    teacher: str | None = None,
    teacher_arch: str | None = None,
    input_shape: list[int] | None = None,
    num_classes: int | None = None,
    latency_threads: int = 1,
    jobs: int = 1,
    threads: int | None = None,
    separate_test: bool = False,
) -> Path:
    """Run the KegNet pipeline: generators, students, baselines and other methods, scored on real test data.

    Args:
        generator_config: the generator stage's kegnet config (e.g. configs/mnist_subset/generator.yaml).
        student_config: the student stage's kegnet config; its data must carry real eval_data for accuracy.
        out: the run folder; everything is written inside it.
        students: student presets, numbered 1, 2, 3 in this order (e.g. [lenet5-s1, lenet5-s2, lenet5-s3]).
        baselines: noise baselines trained like the KegNet students: uniform U(-1,1), normal N(0,1), strokes (random
            pen strokes on blank paper; the student config sets ``model.init_args.strokes``), no-generators (the
            KegNet students' batches with U(-1,1) noise in the generators' place: what the generators add).
        seeds: one full pipeline per seed; the table gives mean ± std over seeds.
        generator_args: extra ``kegnet fit`` arguments of the generator stage (e.g. [--trainer.max_epochs, "3"]).
        student_args: extra ``kegnet fit`` arguments of every student stage of KegNet, Tucker only and the baselines.
        scratch_args: more ``kegnet fit`` arguments, after ``student_args``, of those stages of a student trained
            from scratch (a registered classifier such as ``lenet5-half``), e.g. DFAD's recipe [--model.loss=l1,
            --model.optimizer=sgd, --model.lr=0.01, --model.lr_schedule=constant, --model.weight_decay=0.0001].
        methods: the data-free methods to compare, each a stage per seed and student: ``kegnet`` (the generator
            stage, then students distilled from its samples; it alone runs the generator stage), or any name that
            ``method_configs`` gives a config for (e.g. [kegnet, dafl, dfad]).
        method_configs: each method's ``kegnet`` config but kegnet's, by name (e.g. {dafl: configs/mnist/dafl.yaml,
            dfad: configs/mnist/dfad.yaml}); its model is given the pipeline's teacher (model.init_args.teacher and
            the three options below), the seed and the student preset (model.init_args.student).
        method_args: extra ``kegnet fit`` arguments of a method's stages, by name (e.g. {dfad:
            [--trainer.max_epochs=2]}).
        trainer_config: a trainer preset merged into every stage (e.g. configs/trainer/ddp_cpu2.yaml).
        teacher: the teacher's weights file, instead of the generator config's (any format ``kegnet`` reads).
        teacher_arch: its architecture, for a file that does not record it (a registered name, or an import path
            that this option then trusts).
        input_shape: its input shape, for a file that does not record it (e.g. [1,32,32]).
        num_classes: its class count, for a file that does not record it.
        latency_threads: torch threads for the CPU latency of the teacher and each student in the results (0: do
            not measure latency; parameters and FLOPs are still given).
        jobs: stages run side by side, at most (a seed's students once its generators are trained, other methods'
            stages, other seeds); 1 runs one at a time, in the table's order.
        threads: torch threads of each stage (OMP_NUM_THREADS); default: the CPU cores // jobs, and with jobs 1
            torch's own default. Results are bit-identical only at the same thread count.
        separate_test: test a trained stage in a ``kegnet test`` process of its own after its ``kegnet fit``
            process, as before both ran in one process (the same metrics, a few seconds more per stage).
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
        methods=methods,
        method_configs=method_configs,
        method_args=method_args,
        latency_threads=latency_threads,
        jobs=jobs,
        separate_test=separate_test,
        threads=threads,
        scratch_args=scratch_args,
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
    except Stopped as err:
        print(f"kegnet-pipeline: {err}", file=sys.stderr)
        sys.exit(128 + err.signum)
    except KegnetError as err:
        print(f"kegnet-pipeline: error: {pipeline_flags(str(err))}", file=sys.stderr)
        sys.exit(2)
    command = shlex.join(["kegnet-pipeline", *(sys.argv[1:] if args is None else args)])
    print("\n".join(where(results, command)))
    print(f"results: {results}")


#: the ``kegnet`` options that describe a teacher file, and the pipeline's own names for them
TEACHER_OPTIONS = {f"--model.init_args.{name}": f"--{name}" for name in ("teacher_arch", "input_shape", "num_classes")}


def pipeline_flags(message: str) -> str:
    """A stage's message with the teacher options it suggests in ``kegnet``'s spelling put in the pipeline's (and
    without their spelling as Python arguments)."""
    message = message.split(FROM_PYTHON)[0]
    for option, ours in TEACHER_OPTIONS.items():
        message = message.replace(option, ours)
    return message


def where(results: Path, command: str) -> list[str]:
    """Where a finished run put everything, and the command that reruns it."""
    out = results.parent
    images = sorted(str(path) for path in out.glob("*.png"))
    figures = ", ".join(sorted(path.name for path in out.glob("*.json")))
    lines = [
        f"table:   {out / 'results.md'} (figures: {figures})",
        f"images:  {', '.join(images)}" if images else "images:  none (no generator stage)",
        f"stages:  {out}/seed<S>/<stage>/ (config.yaml, stage.log, result.json, checkpoints/, tensorboard/)",
        f"logs:    tensorboard --logdir {out}",
        f"rerun:   {command}  (from {Path.cwd()}: finished stages are skipped, an interrupted one resumes)",
    ]
    return lines


if __name__ == "__main__":  # pragma: no cover
    main()
