"""Tucker-2 replacements for ``nn.Conv2d`` and ``nn.Linear`` layers (Kim et al., ICLR 2016; KegNet, NeurIPS 2019).

A weight ``W`` (``out x in x kh x kw`` or ``out x in``) is decomposed over its output and input modes only:
``W ~ core x_0 U_out x_1 U_in`` with orthonormal ``U_out`` (``out x r_out``) and ``U_in`` (``in x r_in``), computed by
TensorLy's ``partial_tucker`` (higher-order orthogonal iteration from an SVD start). The layer becomes three layers
applied in turn, kept as an ``nn.Sequential`` with the children ``first``, ``core`` and ``last``:

- ``first``: ``U_in^T``, a 1x1 convolution (or a linear map) from ``in`` to ``r_in`` channels, no bias;
- ``core``: the core, a ``kh x kw`` convolution with the original stride, padding and dilation (or a linear map)
  from ``r_in`` to ``r_out``, no bias;
- ``last``: ``U_out``, a 1x1 convolution (or a linear map) from ``r_out`` to ``out`` with the original bias.

At full ranks the replacement computes the original layer exactly (up to rounding). Ranks are always given as
``(r_out, r_in)``, output mode first, like the weight's dimensions.

Within :func:`structure_only` the replacements get their shapes but zero weights and no decomposition: for networks
whose every weight is loaded next, as when a checkpoint of a compressed student is read back (the decomposition would
be thrown away, and it is most of the time that reading takes).
"""

from __future__ import annotations

import contextlib
import contextvars
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Sequence

import numpy as np
import tensorly as tl
import torch
from tensorly.decomposition import partial_tucker
from torch import nn
from torch.nn.parameter import is_lazy

from kegnet_pl.errors import ConfigError

_STRUCTURE_ONLY = contextvars.ContextVar("kegnet_tucker_structure_only", default=False)


@contextlib.contextmanager
def structure_only() -> Iterator[None]:
    """Within this context, :func:`tucker2` returns zero factors of the right shapes instead of decomposing: for a
    network built only to have its every weight loaded next (reading a checkpoint back)."""
    token = _STRUCTURE_ONLY.set(True)
    try:
        yield
    finally:
        _STRUCTURE_ONLY.reset(token)


def check_ranks(ranks: Sequence[int], sizes: Sequence[int], layer: str) -> tuple[int, int]:
    """Return ``ranks`` as ``(r_out, r_in)`` after checking that each lies in ``[1, size]`` of its mode.

    Args:
        ranks: ``(r_out, r_in)``.
        sizes: the sizes ``(out, in)`` of the output and input modes.
        layer: how to name the layer in an error message.
    """
    if isinstance(ranks, str | bytes) or len(ranks) != 2:
        raise ConfigError(f"{layer}: ranks must be a pair (out, in), got {ranks!r}")
    checked = []
    for rank, size, mode in zip(ranks, sizes, ("output", "input"), strict=True):
        if isinstance(rank, bool) or not isinstance(rank, int | np.integer):
            raise ConfigError(f"{layer}: the {mode}-mode rank must be an integer, got {rank!r}")
        if not 1 <= rank <= size:
            raise ConfigError(
                f"{layer}: {mode}-mode rank {rank} is out of range; the {mode} mode has size {size}, "
                f"so give a rank between 1 and {size}"
            )
        checked.append(int(rank))
    return checked[0], checked[1]


def tucker2(weight: torch.Tensor, ranks: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tucker-2 decomposition of ``weight`` over its modes 0 and 1 (in float64 on the CPU).

    Args:
        weight: a tensor with at least 2 dimensions, ``(out, in, ...)``.
        ranks: ``(r_out, r_in)``, each at most the size of its mode.

    Returns:
        ``(core, u_out, u_in)`` of shapes ``(r_out, r_in, ...)``, ``(out, r_out)`` and ``(in, r_in)`` with
        ``weight ~ core x_0 u_out x_1 u_in``.
    """
    r_out, r_in = check_ranks(ranks, weight.shape[:2], f"tensor of shape {tuple(weight.shape)}")
    if _STRUCTURE_ONLY.get():  # the weights come next: shapes are all that is needed
        zeros = {"dtype": torch.float64}
        out_size, in_size = weight.shape[:2]
        return (
            torch.zeros(r_out, r_in, *weight.shape[2:], **zeros),
            torch.zeros(out_size, r_out, **zeros),
            torch.zeros(in_size, r_in, **zeros),
        )
    array = weight.detach().to(device="cpu", dtype=torch.float64).numpy()
    with tl.backend_context("numpy", local_threadsafe=True), warnings.catch_warnings():
        # a rank above the other mode's rank is legal: TensorLy warns, then completes the factor orthonormally
        warnings.filterwarnings("ignore", message="Trying to compute SVD with n_eigenvecs", category=UserWarning)
        # TensorLy >= 0.8 returns ((core, factors), reconstruction_errors); random_state only fills rank deficits
        (core, factors), _ = partial_tucker(array, rank=[r_out, r_in], modes=[0, 1], init="svd", random_state=0)
    u_out, u_in = (np.asarray(factor) for factor in factors)
    if u_out.shape != (weight.shape[0], r_out) or u_in.shape != (weight.shape[1], r_in):
        raise RuntimeError(
            f"partial_tucker returned factors of shapes {u_out.shape} and {u_in.shape} for ranks {(r_out, r_in)}; "
            f"this TensorLy ({tl.__version__}) does not complete a factor beyond the rank of its unfolding; "
            "use TensorLy 0.10 or lower that rank"
        )
    return _tensor(core), _tensor(u_out), _tensor(u_in)


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array))


def _check_layer(layer: nn.Module) -> None:
    if is_lazy(layer.weight):
        raise ConfigError(f"{layer} is a lazy layer without weights yet; run one forward pass before compressing")


def _finish(layer: nn.Module, replacement: nn.Sequential) -> nn.Sequential:
    """Keep the layer's training mode and trainability on its replacement."""
    replacement.train(layer.training)
    replacement.requires_grad_(layer.weight.requires_grad)
    return replacement


def tucker2_conv(conv: nn.Conv2d, ranks: Sequence[int]) -> nn.Sequential:
    """Replace ``conv`` by Tucker-2 over its output and input channels: 1x1 conv, kxk core conv, 1x1 conv.

    Args:
        conv: a 2-D convolution with ``groups == 1``.
        ranks: ``(r_out, r_in)``, the ranks of the output- and input-channel modes.

    Returns:
        ``nn.Sequential(first=..., core=..., last=...)`` on the device and in the dtype of ``conv``, initialised from
        the decomposition of ``conv.weight``; it reproduces ``conv`` exactly at full ranks.
    """
    if not isinstance(conv, nn.Conv2d):
        raise ConfigError(f"tucker2_conv takes an nn.Conv2d, got {type(conv).__name__}")
    _check_layer(conv)
    if conv.groups != 1:
        raise ConfigError(
            f"{conv} has groups={conv.groups}; Tucker-2 needs groups=1 (a grouped or depthwise convolution has no "
            "full input-channel mode), so leave this layer out of the spec"
        )
    r_out, r_in = check_ranks(ranks, (conv.out_channels, conv.in_channels), str(conv))
    core, u_out, u_in = tucker2(conv.weight, (r_out, r_in))
    factory = {"device": conv.weight.device, "dtype": conv.weight.dtype}
    layers = OrderedDict(
        first=nn.Conv2d(conv.in_channels, r_in, kernel_size=1, bias=False, **factory),
        # the padding commutes with the bias-free 1x1 `first`, whatever the padding mode
        core=nn.Conv2d(
            r_in,
            r_out,
            kernel_size=conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            bias=False,
            padding_mode=conv.padding_mode,
            **factory,
        ),
        last=nn.Conv2d(r_out, conv.out_channels, kernel_size=1, bias=conv.bias is not None, **factory),
    )
    with torch.no_grad():
        layers["first"].weight.copy_(u_in.T[:, :, None, None])
        layers["core"].weight.copy_(core)
        layers["last"].weight.copy_(u_out[:, :, None, None])
        if conv.bias is not None:
            layers["last"].bias.copy_(conv.bias)
    return _finish(conv, nn.Sequential(layers))


def factorize_linear(linear: nn.Linear, ranks: Sequence[int]) -> nn.Sequential:
    """Replace ``linear`` by the three-factor (in, core, out) Tucker-2 factorisation of its weight matrix.

    Args:
        linear: a dense layer with weight ``out x in``.
        ranks: ``(r_out, r_in)``, the ranks of the output- and input-feature modes.

    Returns:
        ``nn.Sequential(first=Linear(in, r_in), core=Linear(r_in, r_out), last=Linear(r_out, out))``, only ``last``
        with a bias (the original one); it reproduces ``linear`` exactly at full ranks.
    """
    if not isinstance(linear, nn.Linear):
        raise ConfigError(f"factorize_linear takes an nn.Linear, got {type(linear).__name__}")
    _check_layer(linear)
    r_out, r_in = check_ranks(ranks, (linear.out_features, linear.in_features), str(linear))
    core, u_out, u_in = tucker2(linear.weight, (r_out, r_in))
    factory = {"device": linear.weight.device, "dtype": linear.weight.dtype}
    layers = OrderedDict(
        first=nn.Linear(linear.in_features, r_in, bias=False, **factory),
        core=nn.Linear(r_in, r_out, bias=False, **factory),
        last=nn.Linear(r_out, linear.out_features, bias=linear.bias is not None, **factory),
    )
    with torch.no_grad():
        layers["first"].weight.copy_(u_in.T)
        layers["core"].weight.copy_(core)
        layers["last"].weight.copy_(u_out)
        if linear.bias is not None:
            layers["last"].bias.copy_(linear.bias)
    return _finish(linear, nn.Sequential(layers))


def tucker2_layer(layer: nn.Module, ranks: Sequence[int]) -> nn.Sequential:
    """:func:`tucker2_conv` for an ``nn.Conv2d``, :func:`factorize_linear` for an ``nn.Linear``."""
    if isinstance(layer, nn.Conv2d):
        return tucker2_conv(layer, ranks)
    if isinstance(layer, nn.Linear):
        return factorize_linear(layer, ranks)
    raise ConfigError(f"only nn.Conv2d and nn.Linear layers can be Tucker-decomposed, got {type(layer).__name__}")


def tucker2_parameter_count(layer: nn.Conv2d | nn.Linear, ranks: Sequence[int]) -> int:
    """Number of parameters of ``layer``'s Tucker-2 replacement at ``ranks = (r_out, r_in)``, without building it."""
    r_out, r_in = ranks
    out_size, in_size = layer.weight.shape[:2]
    kernel = int(np.prod(layer.weight.shape[2:], dtype=np.int64))
    bias = out_size if layer.bias is not None else 0
    return in_size * r_in + r_in * r_out * kernel + r_out * out_size + bias
