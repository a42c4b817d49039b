"""The ``kegnet`` command: one LightningCLI for every stage.

    kegnet fit  --config configs/mnist_subset/teacher.yaml
    kegnet test --config configs/mnist_subset/teacher.yaml --model.weights checkpoints/mnist_subset_lenet5.ckpt
    kegnet fit  --config configs/mnist_subset/teacher.yaml --ckpt_path last     # resume

Models and DataModules are given by class name in the YAML (``class_path: TeacherModule``); every
``__init__`` argument is a documented option (``kegnet fit --help``, ``--print_config``).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from functools import partial
from typing import Any

from lightning_fabric.plugins.io.checkpoint_io import CheckpointIO
from lightning_fabric.utilities.exceptions import MisconfigurationException
from pytorch_lightning import LightningDataModule, LightningModule, Trainer
from pytorch_lightning.cli import LightningCLI

import kegnet_pl.data  # noqa: F401  (registers the DataModules' short names)
import kegnet_pl.modules  # noqa: F401  (registers the LightningModules' short names)
from kegnet_pl.checkpointing import AtomicCheckpointIO, refuse_to_mix_runs
from kegnet_pl.errors import KegnetError
from kegnet_pl.modules.base import NOISE_SETTINGS, noise_setting

# Frozen networks (teacher, trained generators) are in eval mode on purpose; the generator stage has no
# validation (its NoiseDataModule offers held-out batches only when asked to).
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")
warnings.filterwarnings("ignore", message=r".*Total length of `list` across ranks is zero.*")
warnings.filterwarnings("ignore", message=r".*but have no `validation_step`. Skipping val loop.*")


class KegnetCLI(LightningCLI):
    """LightningCLI with kegnet_pl's defaults: atomic checkpoint files, and a new run never writes into a
    folder that holds another run's checkpoints unless ``--overwrite true`` is given."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument(
            "--overwrite",
            type=bool,
            default=False,
            help="start a new run in a checkpoint folder that holds another run's checkpoints (kept; new ones get -vN)",
        )
        for key in NOISE_SETTINGS:  # the noise a model draws is the model's to say (GeneratorModule.noise_settings)
            compute = partial(noise_setting, key=key)
            parser.link_arguments("model", f"data.init_args.{key}", compute_fn=compute, apply_on="instantiate")

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        plugins = kwargs.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, list | tuple) else [plugins]
        if not any(isinstance(plugin, CheckpointIO) for plugin in plugins):
            plugins.append(AtomicCheckpointIO())
        kwargs["plugins"] = plugins
        return super().instantiate_trainer(**kwargs)

    def _load_weights_only(self) -> None:
        """Tell Lightning that checkpoints are read with ``weights_only=True`` (AtomicCheckpointIO reads them so
        whatever this says; set here, Lightning does not warn that it defaults to ``False``)."""
        config = self.config_init[self.subcommand]
        if config.get("weights_only") is None and "weights_only" in config:
            config["weights_only"] = True

    before_validate = before_test = before_predict = _load_weights_only

    def before_fit(self) -> None:
        self._load_weights_only()
        config = self.config_init[self.subcommand]
        for callback in self.trainer.checkpoint_callbacks:
            refuse_to_mix_runs(
                getattr(callback, "dirpath", None), config.get("ckpt_path") is not None, config["overwrite"]
            )


def build_cli(args: list[str] | None = None, run: bool = True) -> KegnetCLI:
    """The ``kegnet`` LightningCLI; with ``run=False`` it only instantiates the trainer, model and data."""
    return KegnetCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"exit_on_error": False},
        args=args,
        run=run,
        auto_configure_optimizers=False,
    )


def main(args: list[str] | None = None) -> None:
    """Run ``kegnet`` with ``args`` (default: the command line). A user's mistake exits 2 with one line."""
    try:
        build_cli(args)
    except argparse.ArgumentError as err:  # a config key or value the parser does not accept
        print(f"kegnet: error: {parser_message(err)} (see 'kegnet <fit|test|...> --help')", file=sys.stderr)
        sys.exit(2)
    except Exception as err:
        cause = user_error(err)
        if cause is None:
            raise
        print(f"kegnet: error: {cause}", file=sys.stderr)
        sys.exit(2)


def parser_message(err: argparse.ArgumentError) -> str:
    """The parser's error without the noise of the union of class types it tried."""
    noise = (
        "Does not validate against any of the Union subtypes",
        "Subtypes:",
        "Errors:",
        "Given value",
        "Expected a <class 'NoneType'>",
    )
    lines = [line.strip().removeprefix("- ") for line in str(err).splitlines()]
    return " ".join(line for line in lines if line and not line.startswith(noise))


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
