"""Loading classifier weights from the files users have.

Three formats are read, always with ``weights_only=True`` (a file that would run code when unpickled is
refused) and always mapped onto the requested device, so files saved on a GPU load on a CPU-only machine:

* a kegnet_pl Lightning checkpoint: ``{'state_dict': {'net.<key>': ...}, 'hyper_parameters': {...}}``;
  the architecture is read from its hyper-parameters;
* the authors' KegNet format: ``{'model_state': state_dict}`` (their ``.pth.tar`` files);
* a plain state dict: ``{'<key>': tensor, ...}``.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping, Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kegnet_pl.errors import CheckpointError
from kegnet_pl.nets.registry import build_classifier_from_spec

#: Prefix of the classifier's keys inside a kegnet_pl LightningModule's state dict.
NET_PREFIX = "net."


def read_checkpoint(path: str | Path, map_location: str | torch.device | None = "cpu") -> dict[str, Any]:
    """``torch.load`` a file safely (``weights_only=True``) and turn every failure into a :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        hint = " (it is a directory)" if path.is_dir() else ""
        raise CheckpointError(f"checkpoint file {str(path)!r} does not exist{hint}; check the path")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint file {str(path)!r} is empty (0 bytes); the file was not written completely")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if "Unsupported global" in str(err):  # a pickled reference to a function or class: code, not data
            raise CheckpointError(
                f"refused to load {str(path)!r}: it holds Python objects that could run code when unpickled, "
                "and kegnet_pl only loads tensors and plain containers (weights_only=True). Re-save its state dict "
                "with torch.save(model.state_dict(), path) from code you trust."
            ) from err
        reason = next((line.strip() for line in str(err).splitlines() if "Unsupported" in line), type(err).__name__)
        raise CheckpointError(f"{str(path)!r} is not a PyTorch checkpoint or is truncated/corrupt ({reason})") from err
    except Exception as err:  # torch raises many types for bytes that are not a checkpoint
        raise CheckpointError(
            f"{str(path)!r} is not a PyTorch checkpoint or is truncated/corrupt ({type(err).__name__}: {err})"
        ) from err
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{str(path)!r} holds a {type(obj).__name__}, not a state dict or a checkpoint dictionary; "
            "save weights with torch.save(model.state_dict(), path)"
        )
    return dict(obj)


def split_checkpoint(obj: Mapping[str, Any], path: str | Path = "<memory>") -> tuple[dict[str, torch.Tensor], dict]:
    """Return ``(state_dict, hyper_parameters)`` of any supported format; hyper-parameters may be empty."""
    if "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        state = obj["state_dict"]
        hparams = dict(obj.get("hyper_parameters") or {})
        if any(key.startswith(NET_PREFIX) for key in state):
            state = {key[len(NET_PREFIX) :]: value for key, value in state.items() if key.startswith(NET_PREFIX)}
        return dict(state), hparams
    if "model_state" in obj and isinstance(obj["model_state"], Mapping):
        return dict(obj["model_state"]), {}
    if obj and all(isinstance(value, torch.Tensor) for value in obj.values()):
        return dict(obj), {}
    raise CheckpointError(
        f"{str(path)!r} is a dictionary with keys {sorted(obj)[:8]} but none of the supported formats: "
        "a kegnet_pl/Lightning checkpoint ('state_dict'), the KegNet format ('model_state') or a plain state dict"
    )


def load_state_into(net: nn.Module, state: Mapping[str, torch.Tensor], path: str | Path, arch: str) -> None:
    """``load_state_dict(strict=True)`` with an error that says what did not fit."""
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [
        f"{key}: file {tuple(state[key].shape)} vs {arch} {tuple(own[key].shape)}"
        for key in sorted(set(own) & set(state))
        if tuple(state[key].shape) != tuple(own[key].shape)
    ]
    if missing or unexpected or mismatched:
        details = []
        if missing:
            details.append(f"missing keys {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            details.append(f"unexpected keys {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        if mismatched:
            details.append(f"shape mismatch {mismatched[:3]}{' ...' if len(mismatched) > 3 else ''}")
        raise CheckpointError(
            f"the weights in {str(path)!r} do not fit the architecture {arch!r} "
            f"(input_shape={getattr(net, 'input_shape', '?')}, num_classes={getattr(net, 'num_classes', '?')}): "
            + "; ".join(details)
            + ". Check the architecture, input shape and class count, or use the file's own architecture."
        )
    net.load_state_dict(state, strict=True)


def load_classifier_and_spec(
    path: str | Path,
    arch: str | None = None,
    input_shape: Sequence[int] | None = None,
    num_classes: int | None = None,
    map_location: str | torch.device | None = "cpu",
    **arch_kwargs: Any,
) -> tuple[nn.Module, dict[str, Any]]:
    """Like :func:`load_classifier`, and also return the spec that rebuilds the network without the file:
    ``{'arch', 'input_shape', 'num_classes', 'arch_kwargs'}`` for :func:`kegnet_pl.nets.build_classifier`.
    """
    obj = read_checkpoint(path, map_location=map_location)
    state, hparams = split_checkpoint(obj, path)
    saved = {key: hparams.get(key) for key in ("arch", "input_shape", "num_classes") if hparams.get(key) is not None}
    given = {"arch": arch, "input_shape": input_shape, "num_classes": num_classes}
    for key, value in given.items():
        if value is None or key not in saved:
            continue
        if key == "input_shape":
            value, saved[key] = tuple(value), tuple(saved[key])
        if value != saved[key]:
            raise CheckpointError(
                f"{str(path)!r} holds a classifier with {key}={saved[key]!r}, but {key}={value!r} was asked for; "
                f"remove the {key} setting or use a checkpoint of that {key}"
            )
    config = {key: value if value is not None else saved.get(key) for key, value in given.items()}
    absent = [key for key, value in config.items() if value is None]
    if absent:
        raise CheckpointError(
            f"{str(path)!r} does not say its {', '.join(absent)}; give them (for example arch='lenet5', "
            "input_shape=(1, 32, 32), num_classes=10)"
        )
    spec = {
        "arch": config["arch"],
        "input_shape": tuple(int(size) for size in config["input_shape"]),
        "num_classes": int(config["num_classes"]),
        "arch_kwargs": {**dict(hparams.get("arch_kwargs") or {}), **arch_kwargs},
    }
    net = build_classifier_from_spec(spec)
    load_state_into(net, state, path, spec["arch"])
    if map_location is not None:
        net = net.to(map_location)
    return net.eval(), spec


def load_classifier(
    path: str | Path,
    arch: str | None = None,
    input_shape: Sequence[int] | None = None,
    num_classes: int | None = None,
    map_location: str | torch.device | None = "cpu",
    **arch_kwargs: Any,
) -> nn.Module:
    """Build a classifier and load its weights from ``path`` (any supported format), in eval mode.

    A kegnet_pl checkpoint carries its architecture; for the other formats ``arch``, ``input_shape`` and
    ``num_classes`` must be given. Values given here that disagree with a checkpoint's own raise an error.
    """
    net, _ = load_classifier_and_spec(path, arch, input_shape, num_classes, map_location, **arch_kwargs)
    return net


def save_classifier(net: nn.Module, path: str | Path, arch: str, arch_kwargs: Mapping[str, Any] | None = None) -> Path:
    """Save a classifier as a small kegnet_pl checkpoint that :func:`load_classifier` and ``TeacherModule``'s
    ``weights`` option read without being told the architecture (no optimiser state; weights as float32 on CPU).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint = {
        "state_dict": {NET_PREFIX + key: value.detach().cpu().clone() for key, value in net.state_dict().items()},
        "hyper_parameters": {
            "arch": arch,
            "input_shape": tuple(net.input_shape),
            "num_classes": int(net.num_classes),
            "arch_kwargs": dict(arch_kwargs or {}),
        },
        "pytorch-lightning_version": version("pytorch-lightning"),
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(checkpoint, tmp)
    tmp.replace(path)  # never leave a half-written file under the final name
    return path
