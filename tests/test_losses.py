"""The KegNet losses against formulas written out here."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kegnet_pl.losses import (
    classification_loss,
    decoder_loss,
    distillation_loss,
    diversity_loss,
    naive_diversity_loss,
)


def reference_diversity(x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """The released code's formula, broadcast over all B x B ordered pairs."""
    flat = x.reshape(x.shape[0], -1)
    layer_dist = (flat.expand(flat.shape[0], *flat.shape) - flat.unsqueeze(1)).abs().mean(dim=2)
    noise_dist = (z.expand(z.shape[0], *z.shape) - z.unsqueeze(1)).pow(2).mean(dim=2)
    return torch.exp(torch.mean(-noise_dist * layer_dist))


SHAPES = [(1, 32, 32), (3, 8, 8), (13,)]


@pytest.mark.parametrize("batch", [1, 2, 3, 7, 32, 65])
@pytest.mark.parametrize("shape", SHAPES)
def test_diversity_loss_matches_the_broadcast_formula(batch: int, shape: tuple[int, ...]) -> None:
    gen = torch.Generator().manual_seed(batch)
    x = torch.randn(batch, *shape, generator=gen)
    z = torch.randn(batch, 10, generator=gen)
    x32, z32 = x.clone().requires_grad_(True), z.clone().requires_grad_(True)
    x64, z64 = x.double().requires_grad_(True), z.double().requires_grad_(True)
    ours = diversity_loss(x32, z32)
    expected = reference_diversity(x64, z64)
    ours.backward()
    expected.backward()
    assert ours.dtype == torch.float32 and ours.shape == ()
    assert ours.item() == pytest.approx(expected.item(), rel=1e-5)
    for got, want in ((x32.grad, x64.grad), (z32.grad, z64.grad)):
        assert got.shape == want.shape
        scale = want.abs().max().item() + 1e-12
        assert (got.double() - want).abs().max().item() <= 1e-4 * scale


def test_diversity_loss_is_exact_in_float64() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(40, 3, 8, 8, generator=gen, dtype=torch.float64) * 4 - 2
    z = torch.randn(40, 10, generator=gen, dtype=torch.float64) + 3  # an offset noise mean changes nothing
    x.requires_grad_(True)
    ours = diversity_loss(x, z)
    (grad,) = torch.autograd.grad(ours, x)
    expected = reference_diversity(x, z)
    (expected_grad,) = torch.autograd.grad(expected, x)
    assert ours.item() == pytest.approx(expected.item(), rel=1e-12)
    assert torch.allclose(grad, expected_grad, rtol=1e-9, atol=1e-15)


def test_diversity_loss_of_one_sample_is_one() -> None:
    x = torch.randn(1, 1, 32, 32, requires_grad=True)
    loss = diversity_loss(x, torch.randn(1, 10))
    loss.backward()
    assert loss.item() == 1.0 and torch.count_nonzero(x.grad) == 0


def test_diversity_loss_without_the_pairwise_tensor() -> None:
    # 512 x 512 x 3072 floats would take 3.2 GB; the sorted prefix sums need a few tens of MB
    x = torch.randn(512, 3, 32, 32, requires_grad=True)
    loss = diversity_loss(x, torch.randn(512, 10))
    loss.backward()
    assert 0.0 < loss.item() < 1.0 and x.grad.shape == x.shape


def test_naive_diversity_loss_is_the_reference() -> None:
    x, z = torch.randn(9, 1, 4, 4, dtype=torch.float64), torch.randn(9, 10, dtype=torch.float64)
    assert naive_diversity_loss(x, z).item() == pytest.approx(reference_diversity(x, z).item(), rel=1e-12)


def test_diversity_loss_rejects_mismatched_batches() -> None:
    with pytest.raises(ValueError, match="noise z of shape"):
        diversity_loss(torch.randn(4, 8), torch.randn(5, 10))


def test_classification_loss_is_cross_entropy_for_one_hot_labels() -> None:
    logits = torch.randn(16, 10)
    classes = torch.randint(10, (16,))
    one_hot = F.one_hot(classes, 10).float()
    expected = F.cross_entropy(logits, classes)
    assert classification_loss(logits, one_hot).item() == pytest.approx(expected.item(), rel=1e-6)
    assert classification_loss(logits, classes).item() == pytest.approx(expected.item(), rel=1e-6)


def test_classification_loss_is_kl_for_soft_labels() -> None:
    logits = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    raw = torch.tensor([[0.2, 0.6, 0.2], [0.5, 0.0, 1.5]])  # the second row is not normalised and holds a zero
    total = 0.0
    for row_logits, row in zip(logits.tolist(), raw.tolist(), strict=True):
        norm = sum(math.exp(v) for v in row_logits)
        q = [math.exp(v) / norm for v in row_logits]
        p = [v / sum(row) for v in row]
        total += sum(pk * math.log(pk / qk) for pk, qk in zip(p, q, strict=True) if pk > 0)
    expected = total / 2
    assert classification_loss(logits, raw).item() == pytest.approx(expected, rel=1e-6)
    assert classification_loss(logits, raw / raw.sum(1, keepdim=True)).item() == pytest.approx(expected, rel=1e-6)


def test_classification_loss_is_zero_when_the_teacher_agrees() -> None:
    labels = torch.softmax(torch.randn(8, 5), dim=1)
    assert classification_loss(labels.log(), labels).item() == pytest.approx(0.0, abs=1e-6)


def test_decoder_loss_is_mse() -> None:
    z_hat, z = torch.randn(8, 10), torch.randn(8, 10)
    assert torch.equal(decoder_loss(z_hat, z), F.mse_loss(z_hat, z))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_diversity_loss_of_half_precision_samples(dtype: torch.dtype) -> None:
    x, z = torch.randn(64, 1, 32, 32), torch.randn(64, 10)
    low = x.to(dtype).requires_grad_(True)
    loss = diversity_loss(low, z)
    loss.backward()
    assert loss.dtype == torch.float32 and low.grad.dtype == dtype
    assert loss.item() == pytest.approx(reference_diversity(low.detach().double(), z.double()).item(), rel=1e-5)


def test_distillation_loss_is_the_kl_from_teacher_to_student():
    s, t = torch.randn(5, 10), torch.randn(5, 10)
    p = t.softmax(-1)
    expected = (p * (p.log() - s.log_softmax(-1))).sum(-1).mean()
    assert torch.allclose(distillation_loss(s, t), expected, atol=1e-6)
    assert distillation_loss(t, t).abs() < 1e-6
    temperature = 4.0
    p = (t / temperature).softmax(-1)
    expected = temperature**2 * (p * (p.log() - (s / temperature).log_softmax(-1))).sum(-1).mean()
    assert torch.allclose(distillation_loss(s, t, temperature), expected, atol=1e-5)
