"""Where a run's outputs are, read from the trainer at run time, and the commands that follow a run.

:class:`RunRecord` (the ``kegnet`` command adds it to every trainer) writes into each checkpoint the TensorBoard run
that made it, so that ``kegnet test`` / ``kegnet validate`` with ``--ckpt_path`` log into that run
(:func:`continue_run`) instead of opening a new version; and at the end of ``kegnet fit`` rank 0 prints where the
checkpoints, logs and images went and the exact commands that resume and test the run (:func:`fit_summary`).
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pytorch_lightning import Callback, LightningModule, Trainer
from pytorch_lightning.loggers import TensorBoardLogger

from kegnet_pl.images import SampleImages
from kegnet_pl.stage import without_ckpt_path

#: the checkpoint key that names the TensorBoard run a checkpoint belongs to: ``{"root_dir": ..., "version": N}``
RUN_KEY = "tensorboard_run"


def tensorboard_logger(trainer: Trainer) -> TensorBoardLogger | None:
    """The trainer's first TensorBoard logger, if any."""
    return next((logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)), None)


def no_hp_metric(trainer: Trainer) -> None:
    """No ``hp_metric = -1`` placeholder in TensorBoard: every TensorBoard logger of ``trainer``, whether a config
    named it or Lightning made it, as if built with ``default_hp_metric=False`` (nothing here logs an hp_metric)."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger._default_hp_metric = False  # the constructor's argument; TensorBoardLogger has no setter


def recorded_run(checkpoint: dict[str, Any]) -> tuple[Path, int] | None:
    """The TensorBoard run (``root_dir``, version number) a checkpoint records, if it records a well-formed one."""
    run = checkpoint.get(RUN_KEY)
    if not isinstance(run, dict):
        return None
    root, version = run.get("root_dir"), run.get("version")
    if not isinstance(root, str) or type(version) is not int or version < 0:
        return None  # a version that is a string could name any folder: only version_<N> is ever reused
    return Path(root), version


def continue_run(trainer: Trainer, run: tuple[Path, int] | None) -> Path | None:
    """Point the trainer's TensorBoard logger at ``run`` (:func:`recorded_run`: the run that wrote a checkpoint) and
    return its ``version_<N>`` folder; ``None``, and a new version as usual, when there is no run, when the logger's
    version was chosen, or when the logger writes elsewhere than that run (another config, a moved folder)."""
    logger = tensorboard_logger(trainer)
    if logger is None or run is None or logger._version is not None:  # _version: the constructor's `version`
        return None
    root, version = run
    folder = Path(logger.root_dir) / f"version_{version}"
    if Path(logger.root_dir).resolve() != root or not folder.is_dir():
        return None
    logger._version = version
    return folder


def shown(path: str | os.PathLike) -> str:
    """``path`` relative to the working folder when it lies inside it (shorter to read and to type), else as is."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _options(args: Sequence[str]) -> list[str]:
    """The command line of a ``kegnet fit`` without its subcommand and its ``--ckpt_path``."""
    words = list(args)
    if "fit" in words:
        words.remove("fit")
    return without_ckpt_path(words)


def fit_summary(
    trainer: Trainer,
    args: Sequence[str] | None,
    resumes_last: Callable[[], Path | None] | None = None,
    interrupted: bool = False,
) -> str:
    """What a ``kegnet fit`` leaves behind, read from ``trainer``: its best and last checkpoint, its TensorBoard
    folder, the PNG files of :class:`~kegnet_pl.images.SampleImages`, and the commands that resume and test it.

    ``args`` is the command line after ``kegnet`` (``None``: unknown); ``resumes_last`` gives the file that
    ``--ckpt_path last`` would resume, so the resume command names ``last`` only when that is this run's file.
    """
    head = "interrupted" if interrupted else "done"
    epochs, steps = trainer.current_epoch, trainer.global_step
    lines = [f"kegnet fit {head}: {epochs} epoch{'s' * (epochs != 1)}, {steps} step{'s' * (steps != 1)}"]

    def add(label: str, value: str) -> None:
        lines.append(f"  {label:<16} {value}")

    callback = trainer.checkpoint_callback
    best = getattr(callback, "best_model_path", "") or ""
    last = getattr(callback, "last_model_path", "") or ""
    if best:
        monitor, score = getattr(callback, "monitor", None), getattr(callback, "best_model_score", None)
        why = f"{monitor} = {float(score):.4g}" if monitor and score is not None else "no monitor: the newest"
        add("best checkpoint", f"{shown(best)}  ({why})")
    if last:
        add("last checkpoint", shown(last))
    if callback is None:
        add("checkpoints", "none (checkpointing is off)")
    elif not best and not last:
        add("checkpoints", "none written yet")
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            add("TensorBoard", f"{shown(logger.log_dir)}  (tensorboard --logdir {shown(logger.root_dir)})")
        elif getattr(logger, "log_dir", None):
            add(type(logger).__name__, shown(logger.log_dir))
    for images in (cb for cb in trainer.callbacks if isinstance(cb, SampleImages) and cb.written):
        names = ", ".join(path.name for path in images.written[-1:] + images.written[:-1])
        add("images", f"{shown(images.written[0].parent)}  ({names})")
    options = ["--config", "..."] if args is None else _options(args)
    if last or best:
        found = resumes_last() if resumes_last is not None else None
        same = bool(last) and found is not None and Path(found).resolve() == Path(last).resolve()
        resume = ["kegnet", "fit", *options, "--ckpt_path", "last" if same else shown(last or best)]
        add("resume", shlex.join(resume))
    if best or last:
        test = ["kegnet", "test", *options, "--ckpt_path", shown(best or last)]
        add("test", shlex.join(test))
    return "\n".join(lines)


class RunRecord(Callback):
    """Each checkpoint records its TensorBoard run (:data:`RUN_KEY`); at the end of ``fit`` (or when it is
    interrupted), rank 0 prints :func:`fit_summary`."""

    def __init__(self, args: Sequence[str] | None = None, resumes_last: Callable[[], Path | None] | None = None):
        """
        Args:
            args: the command line after ``kegnet`` (for the commands the summary prints; ``None``: unknown).
            resumes_last: gives the file ``--ckpt_path last`` would resume (``None``: never name ``last``).
        """
        self.args = None if args is None else list(args)
        self.resumes_last = resumes_last

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        logger = tensorboard_logger(trainer)
        if logger is not None and isinstance(logger.version, int):
            checkpoint[RUN_KEY] = {"root_dir": str(Path(logger.root_dir).resolve()), "version": logger.version}

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.trained = False

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.trained = True  # the fit loop skips training altogether when the resumed run had already finished

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.is_global_zero:
            print(fit_summary(trainer, self.args, self.resumes_last), flush=True)
            if not getattr(self, "trained", True) and trainer.ckpt_path is not None:
                print(
                    f"  nothing trained: {shown(trainer.ckpt_path)} had already reached the run's end "
                    f"({trainer.current_epoch} epochs, {trainer.global_step} steps); raise --trainer.max_epochs "
                    "(or --trainer.max_steps) to train on from it",
                    flush=True,
                )

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if trainer.is_global_zero and trainer.state.fn == "fit" and isinstance(exception, KeyboardInterrupt):
            print(fit_summary(trainer, self.args, self.resumes_last, interrupted=True), flush=True)


__all__ = ["RUN_KEY", "RunRecord", "continue_run", "fit_summary", "no_hp_metric", "recorded_run"]
