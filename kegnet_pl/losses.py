"""The losses of the data-free stages: the three that train a KegNet generator (Yoo et al., NeurIPS 2019) and
the distillation loss that trains a student.

On a batch the generator and its decoder minimise
``classification_loss(M(x), y) + alpha * decoder_loss(D(x), z) + beta * diversity_loss(x, z)``
with ``x = G(y, z)`` and the teacher ``M`` frozen. Each function computes what the authors' released code computes;
:func:`diversity_loss` gets the same number without the ``B x B x features`` tensor that made that code slow.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """KL divergence ``KL(y || softmax(logits))``, averaged over the batch (the paper's ``l_cls``).

    Args:
        logits: the teacher's outputs for the generated samples, ``(B, K)``.
        labels: the label distribution ``y`` the samples were generated from, ``(B, K)``: one-hot rows, soft rows
            that sum to 1, or non-negative soft rows that do not (the paper's ``U(0, 1)`` per class); every row is
            divided by its sum first. Integer class indices of shape ``(B,)`` are taken as one-hot rows.

    Returns:
        A scalar: ``mean_b sum_k y_bk * (log y_bk - log_softmax(logits)_bk)``, with ``0 * log 0 = 0``, so for
        one-hot labels it equals the cross-entropy ``F.cross_entropy(logits, labels.argmax(1))``.
    """
    if labels.dim() == 1 and not labels.is_floating_point():
        return F.cross_entropy(logits, labels)
    if labels.shape != logits.shape:
        raise ValueError(f"labels of shape {tuple(labels.shape)} do not match logits of shape {tuple(logits.shape)}")
    target = labels.to(logits.dtype)
    target = target / target.sum(dim=1, keepdim=True).clamp_min(torch.finfo(target.dtype).tiny)
    log_probs = F.log_softmax(logits, dim=1)
    return (torch.xlogy(target, target) - target * log_probs).sum(dim=1).mean()


def decoder_loss(z_hat: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Mean squared error between the decoder's estimate ``z_hat`` and the true noise ``z`` (the paper's ``l_dec``)."""
    return F.mse_loss(z_hat, z)


def _flatten_pair(x: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if z.dim() != 2 or x.dim() < 2 or x.shape[0] != z.shape[0]:
        raise ValueError(
            f"diversity_loss takes samples x of shape (B, ...) and noise z of shape (B, noise_dim), "
            f"got x {tuple(x.shape)} and z {tuple(z.shape)}"
        )
    dtype = torch.promote_types(x.dtype, torch.float32)  # half precision would overflow the pair sums
    return x.flatten(1).to(dtype), z.to(dtype)


def diversity_loss(x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """The paper's ``l_div``: ``exp(-mean_{i,j} dz(i, j) * dx(i, j))`` over all ``B * B`` ordered pairs.

    ``dz(i, j)`` is the mean squared difference of the noise vectors ``z_i`` and ``z_j`` and ``dx(i, j)`` the mean
    absolute difference of the flattened samples ``x_i`` and ``x_j``, exactly as in the released code (see
    :func:`naive_diversity_loss`). Minimising it pushes samples apart in proportion to how far apart their noise is.

    How it avoids the ``B x B x features`` tensor: with ``w_ij = |z_i - z_j|^2`` the quantity to average is
    ``sum_f sum_{i,j} w_ij |x_if - x_jf|``. For one feature ``f`` sort the batch by ``x_f``; ``|x_if - x_jf|`` is the
    sum of the gaps between consecutive sorted values that lie between them, so the sum is
    ``2 sum_m gap_m * cut_m`` where ``cut_m`` sums ``w_ij`` over the pairs split by gap ``m`` (the ``m`` smallest
    against the rest). With ``z`` centred (``w`` does not change) and ``a_i = |z_i|^2``,
    ``cut_m = A_m (B - m) + m (A - A_m) + 2 |Z_m|^2`` where ``A_m`` and ``Z_m`` are the sums of ``a`` and ``z``
    over the ``m`` smallest: prefix sums along the sorted order. That costs ``O(B log B + B * noise_dim)`` per
    feature instead of ``O(B^2)`` and holds at most a ``features x B x noise_dim`` tensor. The value is exact up to
    rounding (every term of ``cut_m`` is non-negative, so nothing cancels); autograd differentiates it through the
    sort, the gradient of a sorted value being the difference of its two neighbouring cuts (about 1e-5 relative
    error in float32 at B = 256). Only at tied values of a feature can the (sub)gradient differ from the broadcast
    formula's.

    Args:
        x: generated samples, ``(B, ...)``; flattened to ``(B, features)``.
        z: the noise vectors they were generated from, ``(B, noise_dim)``.

    Returns:
        A scalar in ``(0, 1]`` (float32 at least, whatever the precision of ``x``); 1 when ``B == 1``.
    """
    x, z = _flatten_pair(x, z)
    batch, features = x.shape
    noise_dim = z.shape[1]
    values, order = torch.sort(x.t().contiguous(), dim=1)  # (features, B): each feature's batch in increasing order
    gaps = values[:, 1:] - values[:, :-1]  # (features, B - 1)
    z = z - z.mean(dim=0, keepdim=True)
    sq_norms = z.pow(2).sum(dim=1)  # a_i
    prefix_sq = torch.cumsum(sq_norms[order], dim=1)[:, :-1]  # A_m, (features, B - 1)
    prefix_z = torch.cumsum(z[order], dim=1)[:, :-1]  # Z_m, (features, B - 1, noise_dim)
    m = torch.arange(1, batch, dtype=x.dtype, device=x.device)
    cut = prefix_sq * (batch - m) + m * (sq_norms.sum() - prefix_sq) + 2 * prefix_z.pow(2).sum(dim=2)
    total = 2 * (gaps * cut).sum()
    return torch.exp(-total / (batch * batch * features * noise_dim))


def naive_diversity_loss(x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """The slow reference for :func:`diversity_loss`: the released code's broadcast formula.

    It builds the ``B x B x features`` differences: 268 MB for 256 samples of 1x32x32 in float32, and a
    generator step with it peaks about 1 GB higher (``benchmarks/generator_step.py``). Kept for that benchmark
    and for checking :func:`diversity_loss`.
    """
    x, z = _flatten_pair(x, z)
    dx = (x.unsqueeze(0) - x.unsqueeze(1)).abs().mean(dim=2)
    dz = (z.unsqueeze(0) - z.unsqueeze(1)).pow(2).mean(dim=2)
    return torch.exp(-(dz * dx).mean())


def distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """KL divergence (batch mean) from the teacher's softmax to the student's, at a temperature ``T``.

    ``T**2 * mean_b sum_k p_bk (log p_bk - log q_bk)`` with ``p = softmax(teacher / T)`` and
    ``q = softmax(student / T)``, computed in float32 at least. Scaled by ``T**2`` so that gradients keep their
    size across temperatures (Hinton et al., 2015); at the paper's ``T = 1`` this is exactly KegNet's student loss.
    """
    log_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True) * temperature**2


def dfad_discrepancy(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """DFAD's loss: the mean absolute error between student and teacher logits, ``mean_{b,k} |s_bk - t_bk|``
    (the student minimises it, the generator maximises it)."""
    return F.l1_loss(student_logits.float(), teacher_logits.float())


__all__ = [
    "classification_loss",
    "decoder_loss",
    "dfad_discrepancy",
    "distillation_loss",
    "diversity_loss",
    "naive_diversity_loss",
]
