"""The generators and the decoder of KegNet (Yoo et al., NeurIPS 2019), and the image generator of DFAD and DAFL.

A generator ``G(y, z)`` turns a label distribution ``y`` (one-hot or soft, shape ``(B, num_classes)``) and a
noise vector ``z`` (shape ``(B, noise_dim)``) into an artificial sample; the decoder ``D(x)`` tries to recover
``z`` from that sample. Layer sizes follow the authors' release (snudatalab/KegNet), so both read the same way:
``concat(z, y)`` in that order, transposed convolutions without bias, the same BatchNorm placements.
:class:`DFADGeneratorNet` makes images from noise alone (no label): the generator of the methods KegNet is compared
with, and of the adversarial share of a student's batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from kegnet_pl.errors import ConfigError

IMAGE_SIZE = 32  # the image generator's four stride-2 transposed convolutions make 1x1 -> 4 -> 8 -> 16 -> 32


def _check_sizes(name: str, num_classes: int, noise_dim: int) -> None:
    if int(num_classes) < 1:
        raise ConfigError(f"{name}: num_classes must be a positive number of classes, got {num_classes}")
    if int(noise_dim) < 1:
        raise ConfigError(f"{name}: noise_dim must be a positive number of noise dimensions, got {noise_dim}")


def standardize_images(images: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Standardise each channel of each image to mean 0 and standard deviation 1 over its pixels.

    As in the released code the standard deviation is the unbiased one (``torch.std``). ``eps`` only keeps a
    constant channel from dividing by zero (it then comes out as zeros); it is small because an untrained
    generator in eval mode can output channels with a standard deviation of 1e-3 or less.
    """
    flat = images.flatten(2)
    mean = flat.mean(dim=2, keepdim=True)
    std = flat.std(dim=2, keepdim=True)
    return ((flat - mean) / (std + eps)).view_as(images)


class ImageGenerator(nn.Module):
    """The image generator of KegNet: two dense layers, four transposed convolutions, a 32x32 image.

    ``concat(z, y)`` -> Linear 256 -> Linear 128 (each with BatchNorm1d and ReLU) -> reshape to 128x1x1 ->
    ConvTranspose2d 128->64 (k4 s2 p0, 4x4), 64->16, 16->4, 4->channels (k4 s2 p1; 8x8, 16x16, 32x32) with
    BatchNorm2d and ReLU between and Tanh last, then every channel of every image standardised to mean 0, std 1.

    Args:
        num_classes: size of the label distribution ``y``.
        noise_dim: size of the noise vector ``z`` (10 in the paper).
        output_shape: ``(channels, 32, 32)``; any positive channel count, the size is fixed by the layers.
    """

    def __init__(self, num_classes: int, noise_dim: int = 10, output_shape: Sequence[int] = (1, 32, 32)) -> None:
        super().__init__()
        _check_sizes("ImageGenerator", num_classes, noise_dim)
        shape = tuple(int(s) for s in output_shape)
        if len(shape) != 3 or shape[0] < 1 or shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
            raise ConfigError(
                f"ImageGenerator makes images of shape (channels, {IMAGE_SIZE}, {IMAGE_SIZE}), got output_shape="
                f"{tuple(output_shape)}; resize the data (and the teacher's input) to {IMAGE_SIZE}x{IMAGE_SIZE}"
            )
        self.num_classes = int(num_classes)
        self.noise_dim = int(noise_dim)
        self.output_shape: tuple[int, int, int] = shape  # type: ignore[assignment]
        self.fc = nn.Sequential(
            nn.Linear(self.noise_dim + self.num_classes, 256),
            nn.BatchNorm1d(256),
            nn.ReLU(),
            nn.Linear(256, 128),
            nn.BatchNorm1d(128),
            nn.ReLU(),
        )
        self.conv = nn.Sequential(
            nn.ConvTranspose2d(128, 64, kernel_size=4, stride=2, padding=0, bias=False),  # 1x1 -> 4x4
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.ConvTranspose2d(64, 16, kernel_size=4, stride=2, padding=1, bias=False),  # -> 8x8
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.ConvTranspose2d(16, 4, kernel_size=4, stride=2, padding=1, bias=False),  # -> 16x16
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.ConvTranspose2d(4, shape[0], kernel_size=4, stride=2, padding=1, bias=False),  # -> 32x32
            nn.Tanh(),
        )

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Generate ``(B, *output_shape)`` images from labels ``y`` ``(B, num_classes)`` and noise ``z``."""
        out = self.fc(torch.cat((z, y), dim=1))
        out = self.conv(out.view(out.size(0), -1, 1, 1))
        return standardize_images(out)


class TabularGenerator(nn.Module):
    """The generator of KegNet for feature vectors (the UCI data sets).

    ``concat(z, y)`` -> ``n_layers`` x (Linear ``units``, ELU, BatchNorm1d) -> Linear ``features`` ->
    BatchNorm1d without a learned affine, so that every feature comes out standardised over the batch.

    Args:
        num_classes: size of the label distribution ``y``.
        noise_dim: size of the noise vector ``z`` (10 in the paper).
        output_shape: ``(features,)``.
        units: width of the hidden layers (120 in the released code).
        n_layers: number of hidden layers (2 in the released code).
    """

    def __init__(
        self,
        num_classes: int,
        noise_dim: int = 10,
        output_shape: Sequence[int] = (64,),
        units: int = 120,
        n_layers: int = 2,
    ) -> None:
        super().__init__()
        _check_sizes("TabularGenerator", num_classes, noise_dim)
        shape = tuple(int(s) for s in output_shape)
        if len(shape) != 1 or shape[0] < 1:
            raise ConfigError(f"TabularGenerator makes flat feature vectors, output_shape=(features,), got {shape}")
        if int(n_layers) < 1 or int(units) < 1:
            raise ConfigError(f"TabularGenerator needs n_layers >= 1 and units >= 1, got {n_layers=} and {units=}")
        self.num_classes = int(num_classes)
        self.noise_dim = int(noise_dim)
        self.output_shape: tuple[int] = shape  # type: ignore[assignment]
        layers: list[nn.Module] = []
        width = self.noise_dim + self.num_classes
        for _ in range(int(n_layers)):
            layers += [nn.Linear(width, units), nn.ELU(), nn.BatchNorm1d(units)]
            width = units
        layers.append(nn.Linear(width, shape[0]))
        self.layers = nn.Sequential(*layers)
        self.adjust = nn.BatchNorm1d(shape[0], affine=False)

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Generate ``(B, features)`` samples from labels ``y`` ``(B, num_classes)`` and noise ``z``."""
        return self.adjust(self.layers(torch.cat((z, y), dim=1)))


class Decoder(nn.Module):
    """The decoder of KegNet: recovers the noise vector ``z`` from a generated sample.

    flatten -> Linear ``units`` -> ELU -> BatchNorm1d, ``extra_layers`` more such 120-unit layers, then a Linear
    to ``noise_dim``. The paper's settings use 1 (MNIST), 2 (tabular) or 3 (Fashion-MNIST, SVHN) extra layers.

    Args:
        input_shape: shape of one sample without the batch dimension, e.g. ``(1, 32, 32)`` or ``(64,)``.
        noise_dim: size of the noise vector to recover.
        units: width of the hidden layers.
        extra_layers: number of hidden layers after the first one.
    """

    def __init__(
        self, input_shape: Sequence[int], noise_dim: int = 10, units: int = 120, extra_layers: int = 1
    ) -> None:
        super().__init__()
        shape = tuple(int(s) for s in input_shape)
        if not shape or any(s < 1 for s in shape):
            raise ConfigError(f"Decoder: input_shape must hold positive sizes, got {tuple(input_shape)}")
        if int(noise_dim) < 1 or int(units) < 1 or int(extra_layers) < 0:
            raise ConfigError(
                f"Decoder needs noise_dim >= 1, units >= 1 and extra_layers >= 0, got {noise_dim=}, {units=}, "
                f"{extra_layers=}"
            )
        self.input_shape = shape
        self.noise_dim = int(noise_dim)
        layers: list[nn.Module] = [nn.Linear(math.prod(shape), units), nn.ELU(), nn.BatchNorm1d(units)]
        for _ in range(int(extra_layers)):
            layers += [nn.Linear(units, units), nn.ELU(), nn.BatchNorm1d(units)]
        layers.append(nn.Linear(units, self.noise_dim))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Estimate the ``(B, noise_dim)`` noise behind the samples ``x`` ``(B, *input_shape)``."""
        return self.layers(x.flatten(1))


class DFADGeneratorNet(nn.Module):
    """DFAD's image generator (its ``GeneratorA``): z -> dense -> (2w, s/4, s/4) -> BatchNorm -> upsample, conv 3x3
    2w -> 2w, BatchNorm, LeakyReLU(0.2) -> upsample, conv 2w -> w, BatchNorm, LeakyReLU -> conv w -> channels,
    tanh, then a BatchNorm without learned affine (as its authors' code).

    DAFL's generator (Chen et al., 2019) is the same network with z of size 100, w = 64 and ``bn_eps=0.8`` in the
    two BatchNorms after the convolutions (its code's ``BatchNorm2d(128, 0.8)``); DFAD's keeps the default 1e-5.
    """

    def __init__(self, input_shape: Sequence[int], noise_dim: int = 100, width: int = 64, bn_eps: float = 1e-5) -> None:
        super().__init__()
        channels, height, wide = (int(size) for size in input_shape)
        if height != wide or height % 4:
            raise ConfigError(f"DFADGenerator makes square images with a side divisible by 4, got {tuple(input_shape)}")
        self.start = height // 4
        self.width = width
        self.fc = nn.Linear(noise_dim, 2 * width * self.start**2)
        self.blocks = nn.Sequential(
            nn.BatchNorm2d(2 * width),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1),
            nn.BatchNorm2d(2 * width, eps=bn_eps),
            nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(2 * width, width, 3, padding=1),
            nn.BatchNorm2d(width, eps=bn_eps),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, channels, 3, padding=1),
            nn.Tanh(),
            nn.BatchNorm2d(channels, affine=False),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.fc(z).view(len(z), 2 * self.width, self.start, self.start))


def build_generator(input_shape: Sequence[int], num_classes: int, noise_dim: int = 10) -> nn.Module:
    """The generator that fits a teacher taking inputs of ``input_shape``.

    ``(channels, 32, 32)`` gives an :class:`ImageGenerator`, ``(features,)`` a :class:`TabularGenerator`.
    """
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 3:
        if shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
            raise ConfigError(
                f"the image generator makes {IMAGE_SIZE}x{IMAGE_SIZE} images but the teacher takes "
                f"input_shape={shape}; resize the data and retrain the teacher at ({shape[0]}, {IMAGE_SIZE}, "
                f"{IMAGE_SIZE})"
            )
        return ImageGenerator(num_classes, noise_dim=noise_dim, output_shape=shape)
    if len(shape) == 1:
        return TabularGenerator(num_classes, noise_dim=noise_dim, output_shape=shape)
    raise ConfigError(
        f"no generator for input_shape={shape}: give images as (channels, {IMAGE_SIZE}, {IMAGE_SIZE}) "
        "or feature vectors as (features,)"
    )


__all__ = ["Decoder", "ImageGenerator", "TabularGenerator", "build_generator", "standardize_images"]
