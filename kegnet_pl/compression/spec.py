"""Compress any network by a spec: which layers to Tucker-decompose, and at which ranks.

A spec maps a layer name, or an ``fnmatch`` pattern over the dotted paths of ``model.named_modules()``
(``"conv3"``, ``"layers3.*.conv1"``, ``"layers.*"``; ``*`` also crosses dots), to a rank rule:

- ``8``: rank 8 for both the output and the input mode;
- ``[8, 5]``: rank 8 for the output mode and 5 for the input mode (the order of the weight's dimensions);
- ``0.25``: a fraction in (0, 1] of each mode's size, rounded, at least 1 (``1`` is rank 1, ``1.0`` the full size);
- ``"evbmf"``: the EVBMF rank of the mode's unfolding of the weight (Nakajima et al., 2013), at least 1;
- ``"full"`` (or ``None``): the mode keeps its size;
- ``{100: 5}``: every mode of size 100 gets rank 5, all other modes keep their size; a layer with no mode of a
  listed size is left alone (the paper's MLP students: ``{"layers.*": {100: 5}}``).

Each entry of a pair or of a size mapping may be any of the single-mode rules (``[8, "evbmf"]``).

Only ``nn.Conv2d`` layers with ``groups=1`` and ``nn.Linear`` layers are compressible. A pattern selects the
compressible layers it matches and skips everything else (activations, dropout, norms, grouped convolutions); a key
that selects no compressible layer is an error. An exact name takes precedence over the patterns that also match
it; two patterns that match one layer with different rules are an error. The network itself (the empty path) is
never replaced. Every rank is resolved and checked before the first layer is replaced.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

import numpy as np
import torch
from torch import nn

from kegnet_pl.compression.evbmf import evbmf_rank
from kegnet_pl.compression.tucker import check_ranks, tucker2_layer, tucker2_parameter_count
from kegnet_pl.errors import ConfigError

ModeRule = int | float | str | None
RankRule = ModeRule | Sequence[ModeRule] | Mapping[int | str, ModeRule]
Spec = Mapping[str, RankRule]

PRESETS: dict[str, dict[str, RankRule]] = {
    # LeNet5 (MNIST): students 1-3 of the paper; conv ranks by EVBMF as in the authors' code
    "lenet5-s1": {"conv3": "evbmf"},
    "lenet5-s2": {"conv2": "evbmf", "conv3": "evbmf"},
    "lenet5-s3": {"conv2": "evbmf", "conv3": [8, 5]},  # the paper: conv3 at ranks in 5, out 8
    # the same students at the ranks EVBMF gave on the paper's teacher: the paper's sizes (17,063 / 15,045 / 13,728
    # parameters) whatever the teacher's weights, so that any LeNet5 teacher is compared with the paper's table
    "lenet5-paper-s1": {"conv3": [11, 7]},
    "lenet5-paper-s2": {"conv2": [4, 3], "conv3": [11, 7]},
    "lenet5-paper-s3": {"conv2": [4, 3], "conv3": [8, 5]},
    # ResNet-14 (SVHN, Fashion-MNIST): the two blocks of the third stage
    "resnet14-s1": {"layers3.*.conv1": "evbmf"},
    "resnet14-s2": {"layers3.*.conv2": "evbmf"},
    "resnet14-s3": {"layers3.*.conv1": "evbmf", "layers3.*.conv2": "evbmf"},
    # MLP (tabular): every 100-unit mode of every dense layer; the input-feature and class modes keep their size
    "mlp-r5": {"layers.*": {100: 5}},
    "mlp-r10": {"layers.*": {100: 10}},
}
"""The paper's students by name (see PAPER.md, "Students"). EVBMF ranks depend on the teacher's weights."""

PAPER_EVBMF_RANKS: dict[str, dict[str, tuple[int, int]]] = {
    "lenet5": {"conv2": (4, 3), "conv3": (11, 7)},
}
"""``(out, in)`` ranks that EVBMF gave on the paper's teachers; pass one as ``evbmf_ranks`` to rebuild its students."""

_MAX_LISTED = 40  # compressible layer names listed in an error message


@dataclass(frozen=True)
class _Rule:
    """A checked rank rule: per-mode rules ``(out, in)``, or a mode-size mapping."""

    modes: tuple[ModeRule, ModeRule] | None
    by_size: tuple[tuple[int, ModeRule], ...] | None
    text: str

    def applies(self, sizes: Sequence[int]) -> bool:
        """False for a mode-size mapping that names neither of the mode sizes: such a layer is left alone."""
        return self.by_size is None or any(size in dict(self.by_size) for size in sizes)

    def mode_rules(self, sizes: Sequence[int]) -> tuple[ModeRule, ModeRule]:
        if self.modes is not None:
            return self.modes
        table = dict(self.by_size or ())
        return table.get(sizes[0], "full"), table.get(sizes[1], "full")


@dataclass(frozen=True)
class LayerReport:
    """What :func:`compress_with_report` did to one layer."""

    name: str
    """Dotted path of the layer in the network."""
    kind: str
    """``"Conv2d"`` or ``"Linear"``."""
    shape: tuple[int, ...]
    """Shape of the original weight, ``(out, in, ...)``."""
    ranks: tuple[int, int]
    """``(r_out, r_in)`` of the Tucker-2 replacement."""
    rule: str
    """The rank rule that chose the ranks, as written in the spec."""
    key: str
    """The spec key (name or pattern) that selected the layer."""
    params_before: int
    params_after: int

    def describe(self) -> str:
        """One line: name, kind, weight shape, ranks, rule and parameter counts."""
        shape = "x".join(str(size) for size in self.shape)
        return (
            f"{self.name} {self.kind} {shape} ranks out={self.ranks[0]} in={self.ranks[1]} ({self.rule}) "
            f"params {self.params_before} -> {self.params_after}"
        )


@dataclass(frozen=True)
class CompressionReport:
    """The replaced layers, in network order, and the parameter counts of the whole network."""

    layers: tuple[LayerReport, ...]
    params_before: int
    params_after: int

    @property
    def ratio(self) -> float:
        """Compression ratio, parameters before / after."""
        return self.params_before / self.params_after

    def ranks(self) -> dict[str, list[int]]:
        """A spec of exact ``[out, in]`` ranks per layer name that rebuilds the same structure without EVBMF."""
        return {layer.name: list(layer.ranks) for layer in self.layers}

    def lines(self) -> list[str]:
        """One line per replaced layer, then ``params_before=... params_after=... ratio=...``."""
        return [layer.describe() for layer in self.layers] + [
            f"params_before={self.params_before} params_after={self.params_after} ratio={self.ratio:.2f}"
        ]


def parameter_count(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``model`` (shared parameters once), or only of those that require gradients."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def get_preset(name: str) -> dict[str, RankRule]:
    """A copy of the preset spec called ``name`` (see :data:`PRESETS`)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown compression preset {name!r}; presets: {', '.join(PRESETS)}")
    return copy.deepcopy(PRESETS[name])


def _parse_mode_rule(value: object, where: str) -> ModeRule:
    if value is None:
        return "full"
    if isinstance(value, bool):
        raise ConfigError(
            f"{where}: {value!r} is not a rank rule; give a rank (8), a fraction (0.5), 'evbmf' or 'full'"
        )
    if isinstance(value, int | np.integer):
        if value < 1:
            raise ConfigError(f"{where}: rank {value} is below 1; give a rank of at least 1")
        return int(value)
    if isinstance(value, float):
        if not 0.0 < value <= 1.0:
            hint = f"; write {int(value)} for rank {int(value)}" if value > 1 and value.is_integer() else ""
            raise ConfigError(
                f"{where}: a float rank rule is a fraction in (0, 1] of the mode's size, got {value}{hint}"
            )
        return float(value)
    if isinstance(value, str) and value.strip().lower() in ("evbmf", "full"):
        return value.strip().lower()
    raise ConfigError(
        f"{where}: {value!r} is not a rank rule; give a rank (8), a pair [out, in], a fraction (0.5), 'evbmf', 'full' "
        "or a mode-size mapping {100: 5}"
    )


def _parse_rule(value: object, key: str) -> _Rule:
    where = f"spec entry {key!r}"
    if isinstance(value, Mapping):
        if not value:
            raise ConfigError(f"{where}: the mode-size mapping is empty; map a mode size to a rank, e.g. {{100: 5}}")
        by_size = []
        for size, mode_rule in value.items():
            try:
                size_int = int(size)
            except (TypeError, ValueError):
                size_int = 0
            if isinstance(size, bool) or size_int < 1 or str(size).strip() != str(size_int):
                raise ConfigError(f"{where}: mode-size keys must be positive integers, got {size!r}")
            by_size.append((size_int, _parse_mode_rule(mode_rule, f"{where}, size {size_int}")))
        by_size.sort()
        text = "{" + ", ".join(f"{size}: {rule}" for size, rule in by_size) + "}"
        return _Rule(None, tuple(by_size), text)
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        if len(value) != 2:
            raise ConfigError(f"{where}: a rank pair is [out, in], got {list(value)!r} ({len(value)} entries)")
        out_rule = _parse_mode_rule(value[0], f"{where}, output mode")
        in_rule = _parse_mode_rule(value[1], f"{where}, input mode")
        return _Rule((out_rule, in_rule), None, f"[{out_rule}, {in_rule}]")
    rule = _parse_mode_rule(value, where)
    return _Rule((rule, rule), None, str(rule))


def _parse_spec(spec: Spec | str) -> dict[str, _Rule]:
    if isinstance(spec, str):
        spec = get_preset(spec)
    if not isinstance(spec, Mapping):
        raise ConfigError(
            f"a compression spec maps layer names or patterns to rank rules, got {type(spec).__name__}; "
            f"for example {{'conv3': 'evbmf'}} or a preset name ({', '.join(PRESETS)})"
        )
    if not spec:
        raise ConfigError("the compression spec is empty; name at least one layer, e.g. {'conv3': 'evbmf'}")
    rules = {}
    for key, value in spec.items():
        if not isinstance(key, str) or not key.strip():
            raise ConfigError(f"spec keys are layer names or glob patterns, got {key!r}")
        rules[key.strip()] = _parse_rule(value, key)
    return rules


def _is_pattern(key: str) -> bool:
    return any(char in key for char in "*?[")


def _is_compressible(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1)


def _compressible_layers(model: nn.Module) -> dict[str, nn.Module]:
    # nn.MultiheadAttention reads out_proj.weight itself, so its out_proj cannot be swapped for a Sequential
    attention_outputs = {id(m.out_proj) for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
    return {
        name: module
        for name, module in model.named_modules()
        if name and _is_compressible(module) and id(module) not in attention_outputs
    }


def _no_match(key: str, model: nn.Module, compressible: Mapping[str, nn.Module], reason: str) -> ConfigError:
    names = list(compressible)
    listed = ", ".join(names[:_MAX_LISTED]) + (f", ... ({len(names)} in all)" if len(names) > _MAX_LISTED else "")
    hint = ""
    if not _is_pattern(key) and any(name.startswith(key + ".") for name in names):
        hint = f"; to select the layers inside {key!r}, write {key + '.*'!r}"
    return ConfigError(
        f"spec entry {key!r} {reason}{hint}; the compressible layers (nn.Conv2d with groups=1, nn.Linear) of "
        f"{type(model).__name__} are: {listed or 'none'}"
    )


def _select(model: nn.Module, rules: Mapping[str, _Rule]) -> dict[str, tuple[str, _Rule]]:
    """Map each selected layer name to the spec key and rule that select it, in network order."""
    compressible = _compressible_layers(model)
    modules = dict(model.named_modules())
    chosen: dict[str, tuple[str, _Rule]] = {}
    for key, rule in rules.items():
        if _is_pattern(key):
            continue
        if key not in compressible:
            module = modules.get(key)
            if module is None:
                raise _no_match(key, model, compressible, "names no layer")
            if isinstance(module, nn.Conv2d) and module.groups != 1:
                raise ConfigError(
                    f"spec entry {key!r} is a Conv2d with groups={module.groups}; Tucker-2 needs groups=1 (a grouped "
                    "or depthwise convolution has no full input-channel mode), so leave it out of the spec"
                )
            raise _no_match(key, model, compressible, f"is a {type(module).__name__}, not a compressible layer")
        if not rule.applies(compressible[key].weight.shape[:2]):
            raise ConfigError(
                f"spec entry {key!r} maps mode sizes {rule.text}, but the layer's modes have sizes "
                f"{tuple(compressible[key].weight.shape[:2])}; give ranks for this layer or leave it out"
            )
        chosen[key] = (key, rule)
    for key, rule in rules.items():
        if not _is_pattern(key):
            continue
        matched = [name for name in compressible if fnmatchcase(name, key)]
        if not matched:
            raise _no_match(key, model, compressible, "matches no compressible layer")
        matched = [name for name in matched if rule.applies(compressible[name].weight.shape[:2])]
        if not matched:
            raise _no_match(key, model, compressible, f"matches no compressible layer with a mode size in {rule.text}")
        for name in matched:
            if name in rules:  # an exact name wins over patterns
                continue
            if name in chosen and chosen[name][1].text != rule.text:
                other = chosen[name][0]
                raise ConfigError(
                    f"layer {name!r} is matched by the spec patterns {other!r} ({chosen[name][1].text}) and {key!r} "
                    f"({rule.text}) with different rules; add an exact entry for {name!r} or narrow a pattern"
                )
            chosen.setdefault(name, (key, rule))
    return {name: chosen[name] for name in compressible if name in chosen}


def _unfolding(weight: torch.Tensor, mode: int) -> np.ndarray:
    array = weight.detach().to(device="cpu", dtype=torch.float64).numpy()
    return np.moveaxis(array, mode, 0).reshape(array.shape[mode], -1)


def _resolve_ranks(
    name: str, layer: nn.Module, rule: _Rule, key: str, evbmf_override: Sequence[int] | None
) -> tuple[int, int]:
    sizes = tuple(layer.weight.shape[:2])
    mode_rules = rule.mode_rules(sizes)
    ranks = []
    for mode, label in enumerate(("output", "input")):
        mode_rule, size = mode_rules[mode], sizes[mode]
        if mode_rule == "full":
            rank = size
        elif mode_rule == "evbmf":
            if evbmf_override is not None:
                rank = evbmf_override[mode]
            else:  # EVBMF may find no signal at all (rank 0); a layer keeps at least one component
                rank = max(1, evbmf_rank(_unfolding(layer.weight, mode)))
        elif isinstance(mode_rule, float):
            rank = max(1, math.floor(mode_rule * size + 0.5))
        else:
            rank = mode_rule
            if rank > size:
                raise ConfigError(
                    f"layer {name!r} ({type(layer).__name__}, weight {tuple(layer.weight.shape)}): {label}-mode rank "
                    f"{rank} from spec entry {key!r} exceeds the mode's size; the maximum is {size}"
                )
        ranks.append(int(rank))
    return ranks[0], ranks[1]


def _check_evbmf_ranks(
    evbmf_ranks: Mapping[str, Sequence[int]] | None, compressible: Mapping[str, nn.Module]
) -> dict[str, tuple[int, int]]:
    checked = {}
    for name, ranks in (evbmf_ranks or {}).items():
        if name not in compressible:
            raise ConfigError(
                f"evbmf_ranks names {name!r}, which is not a compressible layer; the compressible layers are: "
                f"{', '.join(compressible) or 'none'}"
            )
        layer = compressible[name]
        checked[name] = check_ranks(ranks, tuple(layer.weight.shape[:2]), f"evbmf_ranks[{name!r}]")
    return checked


def _set_module(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent_path) if parent_path else model, child, module)


def compress_with_report(
    model: nn.Module,
    spec: Spec | str,
    *,
    inplace: bool = False,
    evbmf_ranks: Mapping[str, Sequence[int]] | None = None,
) -> tuple[nn.Module, CompressionReport]:
    """Replace the layers that ``spec`` selects by their Tucker-2 decompositions; also report what changed.

    Args:
        model: any network; it is deep-copied first unless ``inplace``.
        spec: a mapping from layer names or glob patterns to rank rules (see the module docstring), or the name of
            one of :data:`PRESETS`.
        inplace: replace the layers in ``model`` itself instead of in a copy.
        evbmf_ranks: ``(out, in)`` ranks by layer name to use where the spec's rule says ``"evbmf"`` instead of
            running EVBMF, e.g. ``PAPER_EVBMF_RANKS["lenet5"]``; entries for other layers of the model are ignored.

    Returns:
        The compressed network and a :class:`CompressionReport`. A replaced layer becomes an ``nn.Sequential`` with
        the children ``first``, ``core`` and ``last`` (see :mod:`kegnet_pl.compression.tucker`), which keeps the
        original layer's training mode and ``requires_grad``.
    """
    rules = _parse_spec(spec)
    try:
        selected = _select(model, rules)
    except ConfigError as err:
        if isinstance(spec, str) and spec in PRESETS:  # a preset of another family of networks
            family = spec.split("-")[0]
            ours = [name for name in PRESETS if name.startswith(family + "-")]
            raise ConfigError(
                f"{err}. The preset {spec!r} is for {family} networks ({', '.join(ours)}), not for "
                f"{type(model).__name__}; give a preset of its family or a spec of its own layers"
            ) from err
        raise
    compressible = _compressible_layers(model)
    overrides = _check_evbmf_ranks(evbmf_ranks, compressible)
    plans = []
    for name, (key, rule) in selected.items():
        layer = compressible[name]
        ranks = _resolve_ranks(name, layer, rule, key, overrides.get(name))
        plans.append((name, key, rule, ranks))

    target = model if inplace else copy.deepcopy(model)
    params_before = parameter_count(target)
    paths: dict[int, list[str]] = {}
    for path, module in target.named_modules(remove_duplicate=False):
        paths.setdefault(id(module), []).append(path)
    layers = []
    for name, key, rule, ranks in plans:
        layer = target.get_submodule(name)
        replacement = tucker2_layer(layer, ranks)
        for path in paths[id(layer)]:  # a layer shared under several names is replaced under all of them
            _set_module(target, path, replacement)
        layers.append(
            LayerReport(
                name=name,
                kind=type(layer).__name__,
                shape=tuple(layer.weight.shape),
                ranks=ranks,
                rule=rule.text,
                key=key,
                params_before=sum(p.numel() for p in layer.parameters()),
                params_after=tucker2_parameter_count(layer, ranks),
            )
        )
    report = CompressionReport(tuple(layers), params_before, parameter_count(target))
    return target, report


def compress(
    model: nn.Module,
    spec: Spec | str,
    *,
    inplace: bool = False,
    evbmf_ranks: Mapping[str, Sequence[int]] | None = None,
) -> nn.Module:
    """Replace the layers that ``spec`` selects by their Tucker-2 decompositions (see :func:`compress_with_report`)."""
    return compress_with_report(model, spec, inplace=inplace, evbmf_ranks=evbmf_ranks)[0]
