"""The ``kegnet`` command: one LightningCLI for every stage.

    kegnet fit  --config configs/mnist_subset/teacher.yaml
    kegnet test --config configs/mnist_subset/teacher.yaml --model.weights checkpoints/mnist_subset_lenet5.ckpt
    kegnet fit  --config configs/mnist_subset/teacher.yaml --ckpt_path last     # resume

Models and DataModules are given by class name in the YAML (``class_path: TeacherModule``); every
``__init__`` argument is a documented option (``kegnet fit --help``, ``--print_config``).
"""

from __future__ import annotations

import sys
import warnings

from pytorch_lightning import LightningDataModule, LightningModule
from pytorch_lightning.cli import LightningCLI

import kegnet_pl.data  # noqa: F401  (registers the DataModules' short names)
import kegnet_pl.modules  # noqa: F401  (registers the LightningModules' short names)
from kegnet_pl.errors import KegnetError

# Frozen networks (teacher, trained generators) are in eval mode on purpose; the generator stage has no
# validation (its NoiseDataModule offers held-out batches only when asked to).
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")
warnings.filterwarnings("ignore", message=r".*Total length of `list` across ranks is zero.*")
warnings.filterwarnings("ignore", message=r".*but have no `validation_step`. Skipping val loop.*")


class KegnetCLI(LightningCLI):
    """LightningCLI with kegnet_pl's defaults."""


def build_cli(args: list[str] | None = None, run: bool = True) -> KegnetCLI:
    """The ``kegnet`` LightningCLI; with ``run=False`` it only instantiates the trainer, model and data."""
    return KegnetCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
        auto_configure_optimizers=False,
    )


def main(args: list[str] | None = None) -> None:
    """Run ``kegnet`` with ``args`` (default: the command line). A user's mistake exits 2 with one line."""
    try:
        build_cli(args)
    except Exception as err:
        cause = user_error(err)
        if cause is None:
            raise
        print(f"kegnet: error: {cause}", file=sys.stderr)
        sys.exit(2)


def user_error(err: BaseException) -> KegnetError | None:
    """The :class:`KegnetError` behind ``err``, if any (the CLI's parser wraps errors raised while instantiating)."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, KegnetError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


if __name__ == "__main__":  # pragma: no cover
    main()
