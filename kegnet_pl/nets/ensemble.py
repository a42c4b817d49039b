"""Several networks of one architecture run as one batched call (``torch.func.functional_call`` under ``torch.vmap``).

The networks keep their own parameters and buffers, so a state dict, an optimiser and a checkpoint see them
exactly as before (``generators.0.fc.0.weight`` ...). Each call stacks the parameters with ``torch.stack``, which
autograd differentiates, so the gradients reach every network's own parameters; it stacks the buffers too,
lets BatchNorm in training mode update the stacked running statistics in place (vmap supports in-place updates
of batched tensors) and then copies them back into each network, which leaves every network's state as a call of
its own would have left it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.func import functional_call

from kegnet_pl.errors import ConfigError


def _layout(module: nn.Module) -> list[tuple[str, type[nn.Module], bool]]:
    return [(name, type(sub), sub.training) for name, sub in module.named_modules()]


def _tensors(module: nn.Module) -> list[tuple[str, torch.Size, torch.dtype]]:
    named = [*module.named_parameters(), *module.named_buffers()]
    return [(name, tensor.shape, tensor.dtype) for name, tensor in named]


def check_same_architecture(modules: Sequence[nn.Module]) -> None:
    """Refuse networks that one vmapped call cannot stand for: a different structure, mode, or tensor shape.

    The call runs the first network's code (and mode) with everyone's tensors, so anything that differs would
    silently compute the wrong thing for the others.
    """
    if not modules:
        raise ConfigError("call_stacked needs at least one network, got none")
    layout, tensors = _layout(modules[0]), _tensors(modules[0])
    for index, module in enumerate(modules[1:], start=1):
        if _layout(module) != layout:
            raise ConfigError(
                f"call_stacked: network {index} ({type(module).__name__}) differs from network 0 "
                f"({type(modules[0]).__name__}) in its layers or their train/eval mode; give networks of one "
                "architecture in one mode"
            )
        if _tensors(module) != tensors:
            raise ConfigError(
                f"call_stacked: the parameters or buffers of network {index} differ from network 0's in name, "
                "shape or dtype; give networks of one architecture and size"
            )


def call_stacked(modules: Sequence[nn.Module], *inputs: torch.Tensor) -> torch.Tensor:
    """``torch.stack([modules[g](*(x[g] for x in inputs)) for g in range(len(modules))])`` as one vmapped call.

    Every input carries a leading dimension of ``len(modules)``, one slice per network. Results, gradients (to
    each network's own parameters) and updated buffers equal those of the loop up to rounding. Random operations
    (dropout) are refused by vmap, since they could not draw what the loop draws.
    """
    check_same_architecture(modules)
    for x in inputs:
        if x.dim() == 0 or x.shape[0] != len(modules):
            raise ConfigError(
                f"call_stacked: every input needs a leading dimension of {len(modules)} (one slice per network), "
                f"got shape {tuple(x.shape)}"
            )
    params = {name: torch.stack(column) for name, column in _columns(modules, "parameters").items()}
    with torch.no_grad():
        buffers = {name: torch.stack(column) for name, column in _columns(modules, "buffers").items()}

    def one(params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], *xs: torch.Tensor) -> torch.Tensor:
        return functional_call(modules[0], (params, buffers), xs)

    out = torch.vmap(one)(params, buffers, *inputs)
    with torch.no_grad():  # BatchNorm in training mode updated the stacked statistics: give each network its own
        for name, column in _columns(modules, "buffers").items():
            for tensor, updated in zip(column, buffers[name], strict=True):
                tensor.copy_(updated)
    return out


def call_pairs(
    generators: Sequence[nn.Module],
    decoders: Sequence[nn.Module],
    teacher: nn.Module,
    labels: torch.Tensor,
    noise: torch.Tensor,
    teacher_per_batch: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """KegNet's generator-decoder pairs as a few batched calls: per pair g, its samples ``x[g] = G_g(y_g, z_g)``,
    the teacher's logits on them and the decoder's estimate ``D_g(x[g])`` of ``z_g``, each stacked over the pairs.

    ``labels`` and ``noise`` have shape (pairs, B, ...). The teacher runs once on every pair's samples, which equals
    a call per pair when it treats every sample alone (eval mode); ``teacher_per_batch=True`` calls it once per
    pair instead, for a teacher whose BatchNorm uses batch statistics.
    """
    x = call_stacked(generators, labels, noise)
    if teacher_per_batch:
        logits = torch.stack([teacher(samples) for samples in x])
    else:
        logits = teacher(x.flatten(0, 1)).unflatten(0, x.shape[:2])
    return x, logits, call_stacked(decoders, x)


def _columns(modules: Sequence[nn.Module], kind: str) -> dict[str, list[torch.Tensor]]:
    """Per parameter (or buffer) name, the networks' tensors of that name, in the networks' order."""
    rows = [dict(getattr(module, f"named_{kind}")()) for module in modules]
    return {name: [row[name] for row in rows] for name in rows[0]}


__all__ = ["call_pairs", "call_stacked", "check_same_architecture"]
