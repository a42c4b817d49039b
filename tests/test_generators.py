"""Shapes and invariants of the KegNet generators and decoder."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kegnet_pl.errors import ConfigError
from kegnet_pl.nets.generators import Decoder, ImageGenerator, TabularGenerator, build_generator


def _inputs(batch: int, num_classes: int = 10, noise_dim: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    y = nn.functional.one_hot(torch.randint(num_classes, (batch,)), num_classes).float()
    return y, torch.randn(batch, noise_dim)


@pytest.mark.parametrize("channels", [1, 3, 2])
def test_image_generator_shape(channels: int) -> None:
    gen = ImageGenerator(num_classes=10, noise_dim=10, output_shape=(channels, 32, 32))
    out = gen(*_inputs(8))
    assert out.shape == (8, channels, 32, 32)
    assert (gen.num_classes, gen.noise_dim, gen.output_shape) == (10, 10, (channels, 32, 32))


def test_image_generator_layers_match_the_paper() -> None:
    gen = ImageGenerator(num_classes=10, output_shape=(3, 32, 32))
    dense = [m for m in gen.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in dense] == [(20, 256), (256, 128)]
    convs = [m for m in gen.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert [(m.in_channels, m.out_channels, m.padding[0]) for m in convs] == [
        (128, 64, 0),
        (64, 16, 1),
        (16, 4, 1),
        (4, 3, 1),
    ]
    assert all(m.kernel_size == (4, 4) and m.stride == (2, 2) for m in convs)


def test_image_generator_standardises_each_channel() -> None:
    torch.manual_seed(0)
    gen = ImageGenerator(num_classes=10, output_shape=(3, 32, 32))
    y = torch.rand(16, 10)  # soft labels work too
    out = gen(y, torch.randn(16, 10)).flatten(2)
    assert torch.allclose(out.mean(dim=2), torch.zeros(16, 3), atol=1e-4)
    assert torch.allclose(out.std(dim=2), torch.ones(16, 3), atol=1e-3)
    gen.eval()  # per-image standardisation does not depend on the batch
    out = gen(*_inputs(1)).flatten(2)
    assert torch.allclose(out.std(dim=2), torch.ones(1, 1), atol=1e-3)


def test_tabular_generator_shape_and_layers() -> None:
    gen = TabularGenerator(num_classes=5, noise_dim=10, output_shape=(16,))
    out = gen(*_inputs(32, num_classes=5))
    assert out.shape == (32, 16)
    assert (gen.num_classes, gen.noise_dim, gen.output_shape) == (5, 10, (16,))
    dense = [m for m in gen.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in dense] == [(15, 120), (120, 120), (120, 16)]
    assert not gen.adjust.affine
    # the last BatchNorm (training mode) standardises every feature over the batch
    assert torch.allclose(out.mean(dim=0), torch.zeros(16), atol=1e-4)


@pytest.mark.parametrize("extra_layers", [0, 1, 3])
def test_decoder_shape_and_depth(extra_layers: int) -> None:
    dec = Decoder((3, 32, 32), noise_dim=10, extra_layers=extra_layers)
    assert dec(torch.randn(4, 3, 32, 32)).shape == (4, 10)
    dense = [m for m in dec.modules() if isinstance(m, nn.Linear)]
    assert len(dense) == extra_layers + 2
    assert dense[0].in_features == 3 * 32 * 32 and dense[-1].out_features == 10
    assert Decoder((16,), noise_dim=7)(torch.randn(4, 16)).shape == (4, 7)


def test_build_generator_picks_by_shape() -> None:
    assert isinstance(build_generator((1, 32, 32), 10), ImageGenerator)
    assert isinstance(build_generator([3, 32, 32], 10, noise_dim=4), ImageGenerator)
    tabular = build_generator((9,), 7)
    assert isinstance(tabular, TabularGenerator) and tabular.output_shape == (9,)


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 64, 64), (32, 32), (1, 1, 32, 32)])
def test_build_generator_rejects_other_shapes(shape: tuple[int, ...]) -> None:
    with pytest.raises(ConfigError, match=r"32"):
        build_generator(shape, 10)


def test_image_generator_rejects_28x28() -> None:
    with pytest.raises(ConfigError, match=r"\(1, 28, 28\)"):
        ImageGenerator(10, output_shape=(1, 28, 28))
