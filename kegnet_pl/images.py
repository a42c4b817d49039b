"""SampleImages: image grids of a stage's generators, to TensorBoard during training and as PNG files at the end.

Drawing is the module's (``grid_samples``); laying out, logging and saving are this callback's, so a module does
not need to know where checkpoints or logs live.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from pytorch_lightning import Callback, LightningModule, Trainer

from kegnet_pl.atomic import atomic_write
from kegnet_pl.errors import ConfigError

#: the PNG file that shows every generator's grid (``kegnet-pipeline`` copies it to its ``samples.png``)
ALL_GENERATORS = "samples_gen-all.png"


@runtime_checkable
class DrawsSamples(Protocol):
    """A module whose generators can draw the samples of an image grid (``GeneratorModule``)."""

    num_classes: int

    def grid_samples(self, columns: int, seed: int) -> list[torch.Tensor]:
        """Per generator, ``(classes * columns, C, H, W)`` samples: a row per class, a column per noise vector."""
        ...


def _text(width: int, height: int, lines: list[tuple[int, int, str]]) -> torch.Tensor:
    """A white ``(1, height, width)`` image with each ``(x, y, text)`` of ``lines`` in black, drawn with PIL's default
    font (Pillow ships with torchvision)."""
    from PIL import Image, ImageDraw

    image = Image.new("L", (width, height), color=255)
    draw = ImageDraw.Draw(image)
    for x, y, text in lines:
        draw.text((x, y), text, fill=0)
    return torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(1, height, width).float() / 255


def label_rows(grid: torch.Tensor, rows: int, cell: int, pad: int) -> torch.Tensor:
    """``grid`` with a white margin on the left holding each row's class number."""
    margin = cell // 2 + 6
    labels = _text(
        margin, grid.shape[1], [(2, pad + row * (cell + pad) + cell // 2 - 6, str(row)) for row in range(rows)]
    )
    return torch.cat([labels.expand(grid.shape[0], -1, -1), grid], dim=2)


#: height in pixels of the strip that names a generator above its grid
CAPTION = 16


def captioned(grid: torch.Tensor, caption: str, height: int = CAPTION) -> torch.Tensor:
    """``grid`` under a white strip of ``height`` pixels that holds ``caption``."""
    strip = _text(grid.shape[2], height, [(2, 2, caption)])
    return torch.cat([strip.expand(grid.shape[0], -1, -1), grid], dim=1)


class SampleImages(Callback):
    """Image grids of every generator: a row per class (numbered on the left), a column per fixed noise vector
    (``z = 0`` first).

    Every ``every_n_epochs`` epochs each generator's grid goes to TensorBoard (``samples/gen<g>``, rank 0). At the
    end of training the grids are also saved as ``samples_gen<g>.png`` and, all generators side by side, each under
    its name (``gen <g>``), ``samples_gen-all.png``, in ``folder`` (default: the checkpoint folder, else the
    logger's folder).
    """

    def __init__(self, every_n_epochs: int = 10, columns: int = 8, seed: int = 0, folder: str | None = None) -> None:
        """
        Args:
            every_n_epochs: log the grids to TensorBoard every this many epochs (0: only at the end).
            columns: noise vectors per class (the first is z = 0).
            seed: seed of the grid's noise vectors (the same in every epoch, so the grids show training progress).
            folder: where the PNG files go (default: the checkpoint folder, else the logger's folder).
        """
        if every_n_epochs < 0 or columns <= 0:
            raise ConfigError(
                f"SampleImages: every_n_epochs must be >= 0 and columns positive, got {every_n_epochs} and {columns}"
            )
        self.every_n_epochs = every_n_epochs
        self.columns = columns
        self.seed = seed
        self.folder = folder
        self.written: list[Path] = []  # the PNG files of the last run, for kegnet's closing summary

    def grids(self, pl_module: LightningModule) -> list[torch.Tensor]:
        """One grid ``(3, H, W)`` per generator, each row labelled by its class; none for tabular data."""
        from torchvision.utils import make_grid

        if not isinstance(pl_module, DrawsSamples):
            return []
        grids = []
        for samples in pl_module.grid_samples(self.columns, self.seed):
            grid = make_grid(samples, nrow=self.columns, normalize=True, scale_each=True, pad_value=1.0)
            grids.append(label_rows(grid, pl_module.num_classes, samples.shape[-2], pad=2))
        return grids

    @staticmethod
    def side_by_side(grids: list[torch.Tensor], gap: int = 8) -> torch.Tensor:
        """The grids in one image, left to right, each under its caption (``gen <g>``), with a white gap between."""
        parts = []
        for g, grid in enumerate(grids):
            if g:
                parts.append(torch.ones(grid.shape[0], grid.shape[1] + CAPTION, gap))
            parts.append(captioned(grid, f"gen {g}", CAPTION))
        return torch.cat(parts, dim=2)

    def _log(self, trainer: Trainer, pl_module: LightningModule, grids: list[torch.Tensor]) -> None:
        experiment = getattr(trainer.logger, "experiment", None) if trainer.logger is not None else None
        if hasattr(experiment, "add_image"):
            for g, grid in enumerate(grids):
                experiment.add_image(f"samples/gen{g}", grid, global_step=trainer.global_step)

    def _folder(self, trainer: Trainer) -> Path | None:
        if self.folder is not None:
            return Path(self.folder)
        callback = trainer.checkpoint_callback
        if callback is not None and getattr(callback, "dirpath", None):
            return Path(callback.dirpath)
        if trainer.logger is not None and trainer.logger.log_dir:
            return Path(trainer.logger.log_dir)
        return None

    @staticmethod
    def _paths(folder: Path, count: int, resumed: str | None) -> list[Path]:
        """The PNG files of ``count`` grids: ``samples_gen<g>.png`` and :data:`ALL_GENERATORS`, or, for a new run in
        a folder that holds another run's images (``kegnet fit --overwrite``), the first ``-v<N>`` names free (as
        Lightning names that run's checkpoints), so that no earlier image is replaced. A run resumed from
        ``resumed`` rewrites its own: the names of the checkpoint's version (``last-v1.ckpt``: ``-v1``)."""
        names = [f"samples_gen{g}" for g in range(count)] + [Path(ALL_GENERATORS).stem]

        def paths(version: int) -> list[Path]:
            return [folder / f"{name}{f'-v{version}' if version else ''}.png" for name in names]

        if resumed is not None:
            found = re.search(r"-v(\d+)$", Path(resumed).stem)
            return paths(int(found.group(1)) if found else 0)
        version = 0
        while any(path.exists() for path in paths(version)):
            version += 1
        return paths(version)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        every = self.every_n_epochs
        if trainer.is_global_zero and every and (trainer.current_epoch + 1) % every == 0:
            self._log(trainer, pl_module, self.grids(pl_module))

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        grids = self.grids(pl_module)
        if not grids:
            return
        self._log(trainer, pl_module, grids)
        folder = self._folder(trainer)
        if folder is None:
            return
        from torchvision.utils import save_image

        self.written = self._paths(folder, len(grids), resumed=trainer.ckpt_path)
        for path, grid in zip(self.written, [*grids, self.side_by_side(grids)], strict=True):
            with atomic_write(path, "wb") as handle:
                save_image(grid, handle, format="png")


__all__ = ["ALL_GENERATORS", "DrawsSamples", "SampleImages"]
