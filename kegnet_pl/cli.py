"""The ``kegnet`` command: one LightningCLI for every stage.

    kegnet fit  --config configs/mnist_subset/teacher.yaml
    kegnet test --config configs/mnist_subset/teacher.yaml --model.weights checkpoints/mnist_subset_lenet5.ckpt
    kegnet fit  --config configs/mnist_subset/teacher.yaml --ckpt_path last     # resume
    kegnet export runs/student/last.ckpt --format onnx --out student.onnx       # the student alone
    kegnet choose runs/a/last.ckpt runs/b/last.ckpt                             # which student, without data


Models and DataModules are given by class name in the YAML (``class_path: TeacherModule``); every
``__init__`` argument is a documented option (``kegnet fit --help``, ``--print_config``). ``kegnet export`` and
``kegnet choose`` are not Trainer methods: :func:`main` hands them to :mod:`kegnet_pl.export` and
:mod:`kegnet_pl.selection` before LightningCLI parses anything.
"""

from __future__ import annotations

import argparse
import difflib
import inspect
import logging
import re
import sys
import warnings
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
from jsonargparse import Namespace
from lightning_fabric.plugins.io.checkpoint_io import CheckpointIO
from lightning_fabric.utilities.exceptions import MisconfigurationException
from pytorch_lightning import LightningDataModule, LightningModule, Trainer
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningCLI, SaveConfigCallback
from pytorch_lightning.utilities.exceptions import SIGTERMException

import kegnet_pl.data  # noqa: F401  (registers the DataModules' short names)
import kegnet_pl.modules  # noqa: F401  (registers the LightningModules' short names)
from kegnet_pl.atomic import atomic_write_text
from kegnet_pl.checkpointing import AtomicCheckpointIO, keep_last_every_epoch, last_checkpoint, refuse_to_mix_runs
from kegnet_pl.errors import CheckpointError, ConfigError, KegnetError, parser_message
from kegnet_pl.export import main as export_main
from kegnet_pl.loading import read_checkpoint, recorded_module
from kegnet_pl.modules.base import NOISE_SETTINGS, noise_setting
from kegnet_pl.nets.registry import TRUST_ENV, trust_arch
from kegnet_pl.runs import RunRecord, continue_run, no_hp_metric, recorded_run

#: The model options whose values name an architecture: what the user types there is trusted (see README, Security).
ARCH_OPTIONS = ("arch", "teacher_arch")

# kegnet passes its words to LightningCLI on purpose (kegnet_pl.stage runs a fit and its test in one process).
warnings.filterwarnings("ignore", message=r"LightningCLI's args parameter is intended to run from within Python")
# Stored specs hold shapes as tuples; specs are normalised when read, so a list after a round trip is the same.
warnings.filterwarnings("ignore", message=r"\s*Dump of a value that does not round-trip: a tuple is serialized")
# Lightning's use of torch's pytree API, which a user cannot act on.
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
# Lightning's tip to install its cloud logger, printed at every Trainer's start: runs here log to local files only.
logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(lambda record: "litlogger" not in str(record.msg))


class AtomicSaveConfigCallback(SaveConfigCallback):
    """Lightning's ``config.yaml`` beside the logs, written through :func:`kegnet_pl.atomic.atomic_write` like every
    other file of the project (kegnet overwrites it, as ``save_config_kwargs={"overwrite": True}`` says)."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.already_saved or not self.save_to_log_dir or not self.overwrite or self.multifile:
            return super().setup(trainer, pl_module, stage)
        log_dir = trainer.log_dir  # this broadcasts the directory
        if trainer.is_global_zero:
            text = self.parser.dump(self.config, skip_none=False)
            atomic_write_text(Path(log_dir) / self.config_filename, text)
            self.save_config(trainer, pl_module, stage)
            self.already_saved = True
        self.already_saved = trainer.strategy.broadcast(self.already_saved)


#: what ``kegnet --help`` says of each subcommand (and ``kegnet SUBCOMMAND --help`` first)
SUBCOMMAND_HELP = {
    "fit": "Train a stage (teacher, generators or student) from its config; --ckpt_path last resumes a run.",
    "validate": "Score a trained stage on its validation data: --ckpt_path FILE, or last for the config's run.",
    "test": "Score a trained stage on its test data: --ckpt_path FILE, or last for the config's run.",
}


class KegnetCLI(LightningCLI):
    """LightningCLI with kegnet_pl's defaults: atomic checkpoint files, and a new run never writes into a
    folder that holds another run's checkpoints unless ``--overwrite true`` is given. A fit ends with a summary of
    its outputs, and a checkpoint's test or validation logs into its TensorBoard run (:mod:`kegnet_pl.runs`)."""

    #: the command line after ``kegnet`` (``None`` when the arguments were given as a dictionary)
    command_line: list[str] | None = None
    #: the TensorBoard run that wrote the ``--ckpt_path`` file, if it records one
    fit_run: tuple[Path, int] | None = None

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """Lightning's subcommands but ``predict``: no kegnet_pl DataModule has data to predict on (see
        :data:`NO_PREDICT`)."""
        return {name: keys for name, keys in LightningCLI.subcommands().items() if name != "predict"}

    def _add_subcommands(self, parser, **kwargs: Any) -> None:
        """Lightning's subcommands, described as what they do to a stage (Lightning's own lines are the first
        sentence of the Trainer's docstrings, cut mid-sentence for ``test``)."""
        for subcommand, help_text in SUBCOMMAND_HELP.items():
            kwargs.setdefault(subcommand, {}).setdefault("description", help_text)
        super()._add_subcommands(parser, **kwargs)
        for choice in parser._subcommands_action._choices_actions:
            choice.help = SUBCOMMAND_HELP.get(choice.dest, choice.help)
        for subcommand, subparser in self._subcommand_parsers.items():
            for group in subparser._action_groups:  # the Trainer method's own arguments, titled by its docstring
                if any("--ckpt_path" in action.option_strings for action in group._group_actions):
                    group.title = f"Trainer.{subcommand}'s own options"

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument(
            "--overwrite",
            type=bool,
            default=False,
            help="start a new run in a checkpoint folder that holds another run's checkpoints (kept; new ones get -vN)",
        )
        parser.add_argument(
            "--trust_arch",
            type=str | None,
            default=None,
            help="comma-separated import paths of classifiers (my_pkg.nets:MyNet) that checkpoints may name; a file "
            f"never chooses code on its own (also: the environment variable {TRUST_ENV})",
        )
        parser.add_argument(
            "--float32_matmul_precision",
            type=Literal["highest", "high", "medium"] | None,
            default=None,
            help="torch.set_float32_matmul_precision for this run: highest (full float32, torch's default), high "
            "(TF32 matrix products on GPUs with tensor cores: faster, inputs rounded to 10 mantissa bits) or medium "
            "(bfloat16, 7 bits); default: leave torch's setting as it is",
        )
        for key in NOISE_SETTINGS:  # the noise a model draws is the model's to say (GeneratorModule.noise_settings)
            compute = partial(noise_setting, key=key)
            parser.link_arguments("model", f"data.init_args.{key}", compute_fn=compute, apply_on="instantiate")

    def parse_arguments(self, parser, args) -> None:
        """Parse, then trust the import paths the user typed (``arch`` / ``teacher_arch`` / ``--trust_arch``) before
        any checkpoint's hyper-parameters are merged into the config. A misspelt option is answered with the
        closest one that exists."""
        words = sys.argv[1:] if args is None else args
        self.command_line = [str(word) for word in words] if isinstance(words, list | tuple) else None
        try:
            super().parse_arguments(parser, args)
        except argparse.ArgumentError as err:
            hint = did_you_mean(parser, args if args is not None else sys.argv[1:], str(err))
            if hint is None:
                raise
            raise argparse.ArgumentError(None, hint) from err
        config = self.config.get(self.config.get("subcommand") or "", self.config)
        place_outputs(config)
        init_args = config.get("model.init_args") or {}
        typed = [init_args.get(key) for key in ARCH_OPTIONS if isinstance(init_args.get(key), str)]
        typed += [path for path in (config.get("trust_arch") or "").split(",") if path.strip()]
        trust_arch(*typed)
        precision = config.get("float32_matmul_precision")
        if precision:
            torch.set_float32_matmul_precision(precision)

    def _parse_ckpt_path(self) -> None:
        """Read the ``--ckpt_path`` file through :func:`kegnet_pl.loading.read_checkpoint` first (it cannot name
        untrusted code or a class to import), with ``last`` found in the config's checkpoint folder. ``test``
        and ``validate`` then rebuild the model's networks from the file's own hyper-parameters
        (:meth:`~kegnet_pl.loading.CheckedLoading.init_args_from_checkpoint`), whatever the config's preset says;
        ``fit`` merges them as Lightning does."""
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return super()._parse_ckpt_path()
        config = self.config[subcommand]
        ckpt_path = config.get("ckpt_path")
        path = find_last_checkpoint(config, subcommand) if ckpt_path == "last" else ckpt_path
        if not path or not Path(path).is_file():
            return super()._parse_ckpt_path()  # Lightning's own message for a missing file
        checkpoint = read_checkpoint(path)
        self.fit_run = recorded_run(checkpoint)  # the TensorBoard run test/validate log into (continue_run)
        hparams = checkpoint.get("hyper_parameters") or {}
        class_path = hparams.get("_class_path")  # what Lightning's own loading would import
        if class_path is not None and _loaded_module_class(class_path) is None:
            raise CheckpointError(
                f"refused {str(path)!r}: it asks for the model class {str(class_path)[:80]!r}, which is not "
                "a LightningModule already loaded (a file never chooses which code runs); use a kegnet_pl "
                "checkpoint, or import that class's module yourself"
            )
        saved_class = _loaded_module_class(recorded_module(checkpoint))  # checkpoints saved from Python too
        model_class = _loaded_module_class(config.get("model.class_path"))
        if saved_class is not None and model_class is not None and saved_class is not model_class:
            raise ConfigError(
                f"{str(path)!r} holds a {saved_class.__name__} but the config's model is a {model_class.__name__}; "
                f"use the config of the run that wrote it, or --model {saved_class.__name__}"
            )
        if subcommand == "fit":
            return super()._parse_ckpt_path()
        config["ckpt_path"] = str(path)
        if model_class is None or not hparams or not hasattr(model_class, "init_args_from_checkpoint"):
            return None
        init_args = model_class.init_args_from_checkpoint(hparams)
        model = {"class_path": config.get("model.class_path"), "init_args": init_args}
        try:
            self.config = self.parser.parse_object({subcommand: {"model": model}}, self.config)
        except argparse.ArgumentError as err:
            raise CheckpointError(
                f"{str(path)!r} records hyper-parameters that do not rebuild a {model_class.__name__}: "
                f"{parser_message(err)}"
            ) from err
        return None

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        plugins = kwargs.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, list | tuple) else [plugins]
        if not any(isinstance(plugin, CheckpointIO) for plugin in plugins):
            plugins.append(AtomicCheckpointIO())
        kwargs["plugins"] = plugins
        trainer = super().instantiate_trainer(**kwargs)
        keep_last_every_epoch(trainer)  # last.ckpt = the end of the last epoch, as resuming and testing expect
        no_hp_metric(trainer)
        config = self.config.get(self.subcommand) if self.subcommand else self.config
        trainer.callbacks.append(RunRecord(self.command_line, partial(resumes_last, config)))
        return trainer

    def _load_weights_only(self) -> None:
        """Tell Lightning that checkpoints are read with ``weights_only=True`` (AtomicCheckpointIO reads them so
        whatever this says; set here, Lightning does not warn that it defaults to ``False``)."""
        config = self.config_init[self.subcommand]
        if config.get("weights_only") is None and "weights_only" in config:
            config["weights_only"] = True

    def _log_into_fit_run(self) -> None:
        """With ``--ckpt_path``, ``test`` and ``validate`` log into the TensorBoard run that wrote the checkpoint
        (its own ``config.yaml`` kept: theirs is ``config_<subcommand>.yaml``)."""
        self._load_weights_only()
        if self.config_init[self.subcommand].get("ckpt_path") is None:
            return
        if continue_run(self.trainer, self.fit_run) is not None:
            for callback in self.trainer.callbacks:
                if isinstance(callback, SaveConfigCallback):
                    callback.config_filename = f"config_{self.subcommand}.yaml"

    before_validate = before_test = _log_into_fit_run

    def before_fit(self) -> None:
        self._load_weights_only()
        config = self.config_init[self.subcommand]
        for callback in self.trainer.checkpoint_callbacks:
            refuse_to_mix_runs(
                getattr(callback, "dirpath", None), config.get("ckpt_path") is not None, config["overwrite"]
            )


def _loaded_module_class(class_path: Any) -> type[LightningModule] | None:
    """The LightningModule class ``class_path`` names in a module already imported, if any (nothing is imported)."""
    if isinstance(class_path, str) and "." not in class_path:  # short names, as the configs give them
        class_path = f"kegnet_pl.modules.{class_path}"
    return _loaded_subclass(class_path, LightningModule)


def _loaded_subclass(class_path: Any, base: type) -> type | None:
    """The subclass of ``base`` that ``class_path`` names in a module already imported, if any (nothing is
    imported)."""
    if not isinstance(class_path, str):
        return None
    module_name, _, name = class_path.rpartition(".")
    target = getattr(sys.modules.get(module_name), name, None) if module_name else None
    return target if isinstance(target, type) and issubclass(target, base) else None


def did_you_mean(parser: Any, args: Any, message: str) -> str | None:
    """For a parser error about an option that does not exist, one line naming the closest option that does
    (``difflib``): an ``__init__`` argument of the class the error names, or an option of the subcommand."""
    unknown = re.search(r"Option '(\w+)' is not accepted", message)
    if unknown is not None:  # an init argument of a class given by class_path, perhaps nested (eval_data)
        keys = re.findall(r'Parser key "([\w.]+)"', message)
        classes = re.findall(r"class_path '([\w.]+)'", message)
        target = _loaded_subclass(classes[-1], object) if classes and len(keys) == len(classes) else None
        if target is None:
            return None
        names = [name for name in inspect.signature(target).parameters if name not in ("args", "kwargs")]
        prefix = "--" + "".join(f"{key}.init_args." for key in keys)
        close = difflib.get_close_matches(unknown[1], names, n=1)
        return f"{target.__name__} has no option {prefix}{unknown[1]}" + (
            f"; did you mean {prefix}{close[0]}?" if close else f"; its options are {', '.join(names)}"
        )
    unknown = re.search(r"unrecognized arguments: (--[\w.]+)", message)
    subcommands = getattr(parser, "_subcommands_action", None)
    words = [arg for arg in args if isinstance(arg, str)]
    subcommand = next((word for word in words if subcommands is not None and word in subcommands.choices), None)
    if unknown is None or subcommand is None:
        return None
    known = [option for action in subcommands.choices[subcommand]._actions for option in action.option_strings]
    _, _, rest = unknown[1][2:].partition(".")
    known += [f"{option}.{rest}" for option in known if rest and "." not in option]  # --modle.init_args.lr
    close = difflib.get_close_matches(unknown[1], known, n=1)
    return f"kegnet {subcommand} has no option {unknown[1]}; did you mean {close[0]}?" if close else None


def place_outputs(config: Any) -> None:
    """Put the outputs the config gives no folder under ``trainer.default_root_dir`` (Lightning's default: the
    working directory): TensorBoard logs in ``<root>/tensorboard/version_N`` when the config names no logger, and
    checkpoints in ``<root>/checkpoints`` for a ``ModelCheckpoint`` without ``dirpath`` (the PNGs of ``SampleImages``
    go beside them). A folder the config gives wins. So a config states its root once, and
    ``--trainer.default_root_dir DIR`` moves the whole run. Without a root, checkpoints keep Lightning's place (the
    logger's ``version_N/checkpoints``): ``./checkpoints`` may hold files that are not this run's (shipped teachers)."""
    given = config.get("trainer.default_root_dir")
    root = Path(given or ".")
    if "trainer" in config and config.get("trainer.logger") is None:  # Lightning's default logger, named as ours
        tensorboard = Namespace(save_dir=str(root), name="tensorboard")
        config["trainer.logger"] = Namespace(
            class_path="pytorch_lightning.loggers.TensorBoardLogger", init_args=tensorboard
        )
    callbacks = (config.get("trainer.callbacks") or []) if given else []
    for callback in callbacks:
        if not isinstance(callback, Namespace) or not _loaded_subclass(callback.get("class_path"), ModelCheckpoint):
            continue
        if callback.get("init_args.dirpath") is None:
            callback["init_args.dirpath"] = str(root / "checkpoints")


def find_last_checkpoint(config: Any, subcommand: str) -> Path:
    """The file ``--ckpt_path last`` names: the newest ``last*.ckpt`` in the folders of the config's
    ``ModelCheckpoint`` callbacks, or a :class:`ConfigError` that says where it looked and what to do."""
    folders = [
        callback.get("init_args.dirpath")
        for callback in config.get("trainer.callbacks") or []
        if isinstance(callback, Namespace) and _loaded_subclass(callback.get("class_path"), ModelCheckpoint)
    ]
    if config.get("trainer.enable_checkpointing") is False:
        folders = []
    found = last_checkpoint(folder for folder in folders if folder)
    if found is not None:
        return found
    todo = "drop --ckpt_path to start a new run" if subcommand == "fit" else "train first (kegnet fit, this config)"
    todo += ", or give a checkpoint file: --ckpt_path PATH"
    if not any(folders):
        raise ConfigError(
            "--ckpt_path last looks in the dirpath of the config's ModelCheckpoint (trainer.callbacks), and this "
            f"config gives none; {todo}"
        )
    where = ", ".join(repr(str(folder)) for folder in folders if folder)
    goal = "resume" if subcommand == "fit" else subcommand
    raise ConfigError(f"--ckpt_path last found nothing to {goal}: no last.ckpt in {where}; {todo}")


def resumes_last(config: Any) -> Path | None:
    """The file ``kegnet fit ... --ckpt_path last`` would resume now with ``config``, if any."""
    try:
        return find_last_checkpoint(config, "fit")
    except ConfigError:
        return None


#: what ``kegnet predict`` answers
NO_PREDICT = (
    "predict is not a kegnet subcommand: score a student with kegnet test --ckpt_path FILE (on real test data, if "
    "you have it), and hand it to a serving stack with kegnet export FILE --format onnx|pt2, which runs it on yours"
)

DESCRIPTION = (
    "Train and test KegNet's stages (fit, validate, test: a LightningCLI). Also: kegnet export CHECKPOINT "
    "--format onnx|pt2 --out FILE writes a student alone (see kegnet export --help); kegnet choose CHECKPOINT... "
    "names the student of one teacher to ship, without data (see kegnet choose --help)."
)


def build_cli(args: list[str] | None = None, run: bool = True) -> KegnetCLI:
    """The ``kegnet`` LightningCLI; with ``run=False`` it only instantiates the trainer, model and data."""
    return KegnetCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=AtomicSaveConfigCallback,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"exit_on_error": False, "description": DESCRIPTION},
        args=args,
        run=run,
        auto_configure_optimizers=False,
    )


def main(args: list[str] | None = None) -> None:
    """Run ``kegnet`` with ``args`` (default: the command line). A user's mistake exits 2 with one line; SIGTERM
    (Lightning stops the fit or test at its next batch) exits 143, not 0 as Lightning's own exception would."""
    words = list(sys.argv[1:] if args is None else args)
    if words[:1] == ["export"]:  # not a Trainer method: its own parser (kegnet_pl.export)
        export_main(words[1:])
        return
    if words[:1] == ["predict"]:
        print(f"kegnet: error: {NO_PREDICT}", file=sys.stderr)
        sys.exit(2)
    if words[:1] == ["choose"]:  # nor this one (kegnet_pl.selection)
        from kegnet_pl.selection import main as choose_main

        status = choose_main(words[1:])
        if status:
            sys.exit(status)
        return
    try:
        build_cli(args)
    except argparse.ArgumentError as err:  # a config key or value the parser does not accept
        print(f"kegnet: error: {parser_message(err)} (see 'kegnet <fit|test|...> --help')", file=sys.stderr)
        sys.exit(2)
    except SIGTERMException:
        print(
            "kegnet: stopped by SIGTERM; the checkpoints saved so far are kept (rerun with --ckpt_path last to resume "
            "from the last one, or without it if none was saved yet)",
            file=sys.stderr,
        )
        sys.exit(128 + 15)
    except Exception as err:
        cause = user_error(err)
        if cause is None:
            raise
        print(f"kegnet: error: {cause}", file=sys.stderr)
        sys.exit(2)


def user_error(err: BaseException) -> Exception | None:
    """The user's mistake behind ``err``, if any: a :class:`KegnetError` or Lightning's own
    ``MisconfigurationException`` (the CLI's parser wraps errors raised while instantiating)."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, KegnetError | MisconfigurationException):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


if __name__ == "__main__":  # pragma: no cover
    main()
