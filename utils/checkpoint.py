"""Checkpoints are ``{"state_dict": ..., "meta": {...}}`` files read with ``torch.load(weights_only=True)``.

``meta`` holds plain values only: ``network`` (backbone name), ``network_kwargs``, ``quant`` (the
quantization config for a quantized student, else absent) and anything the writer adds.  Bare
state_dicts as saved by insightface arcface_torch (``backbone.pth``, ``model.pt``, possibly with a
DDP ``module.`` prefix) are read too.  Writes are atomic: a crash never leaves a half-written file.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or does not fit the model; the message names the file."""


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temp file in the same folder, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def save_checkpoint(path: str | os.PathLike, state_dict: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write a model checkpoint (state_dict + plain-value metadata) atomically."""
    return atomic_torch_save({"state_dict": state_dict, "meta": {"format_version": FORMAT_VERSION, **meta}}, path)


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu"
                    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Return ``(state_dict, meta)``; ``meta`` is ``{}`` for a bare arcface_torch state_dict."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"cannot read checkpoint {path}: {type(exc).__name__}: {str(exc).splitlines()[0]} "
            "(only state_dicts are accepted; whole pickled modules are refused for safety)") from exc
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        state, meta = obj["state_dict"], dict(obj.get("meta", {}))
    elif isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state, meta = obj, {}
    else:
        raise CheckpointError(f"{path} holds neither a state_dict nor a {{'state_dict', 'meta'}} checkpoint")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state, meta


def load_state_strict(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> nn.Module:
    """``load_state_dict(strict=True)`` with an error that lists what is missing, extra or mis-shaped."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    extra = sorted(set(state_dict) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state_dict and state_dict[k].shape != own[k].shape]
    if missing or extra or shapes:
        parts = []
        for label, items in (("missing keys", missing), ("unexpected keys", extra), ("shape mismatches", shapes)):
            if items:
                more = f" ... (+{len(items) - 5} more)" if len(items) > 5 else ""
                parts.append(f"{label}: {', '.join(items[:5])}{more}")
        raise CheckpointError(f"{source} does not fit the model: " + "; ".join(parts))
    model.load_state_dict(state_dict, strict=True)
    return model


def load_float_model(path: str | os.PathLike, network: str | None = None, **network_kwargs: Any) -> nn.Module:
    """Build the float backbone a checkpoint was saved from and load it strictly.

    ``network`` and ``network_kwargs`` come from the checkpoint's metadata when present; for a bare
    arcface_torch state_dict they must be given (``num_features`` is inferred from the weights).
    """
    from backbones import get_model

    state, meta = read_checkpoint(path)
    if meta.get("quant"):
        raise CheckpointError(f"{path} is a quantized student; load it with quant.load_quantized")
    name = meta.get("network") or network
    if not name:
        raise CheckpointError(f"{path} has no metadata naming its backbone; pass the network name")
    kwargs = {**meta.get("network_kwargs", {}), **network_kwargs}
    bn_stats = [key for key in state if key.endswith("running_mean")]
    if "num_features" not in kwargs and bn_stats:  # the last BN of every backbone here is the embedding BN
        kwargs["num_features"] = int(state[bn_stats[-1]].numel())
    model = get_model(name, **kwargs)
    return load_state_strict(model, state, str(path))
