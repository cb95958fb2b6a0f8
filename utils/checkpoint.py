"""Checkpoints are ``{"state_dict": ..., "meta": {...}}`` files read with ``torch.load(weights_only=True)``.

``meta`` holds plain values only: ``network`` (backbone name), ``network_kwargs``, ``quant`` (the
quantization config for a quantized student, else absent) and anything the writer adds.  Bare
state_dicts as saved by insightface arcface_torch (``backbone.pth``, ``model.pt``, possibly with a
DDP ``module.`` prefix) are read too.  Writes are atomic (``utils.fileio``).  Building a backbone from a
checkpoint is ``backbones.load_float_model``; this module knows no backbone.
"""
from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from utils.fileio import atomic_torch_save
from utils.errors import InputError

FORMAT_VERSION = 1


class CheckpointError(InputError, RuntimeError):
    """A checkpoint is missing, unreadable or does not fit the model; the message names the file."""


def save_checkpoint(path: str | os.PathLike, state_dict: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write a model checkpoint (state_dict + plain-value metadata) atomically."""
    return atomic_torch_save({"state_dict": state_dict, "meta": {"format_version": FORMAT_VERSION, **meta}}, path)


def load_weights_only(path: str | os.PathLike, what: str, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` with every failure one ``CheckpointError`` naming the file.

    A file holding other objects than tensors and plain values (a pickled module, or code) is refused
    naming the object, never with torch's advice to load it with the safety off."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:  # torch's text around the reason advises turning the check off
        reason = next((line.strip() for line in str(exc).splitlines()
                       if line.strip() and not re.search(r"weights.only|torch\.load", line, re.IGNORECASE)), "")
        found = re.search(r"GLOBAL ([\w.]+)", reason)
        if found is None:
            raise CheckpointError(f"cannot read {what} {path}: not a file of tensors and plain values "
                                  f"({reason or type(exc).__name__})") from None
        raise CheckpointError(f"{what} {path} is refused: it holds pickled objects other than tensors and plain "
                              f"values ({found.group(1)}), which could run code when loaded; only state_dicts are "
                              "accepted") from None
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise CheckpointError(f"cannot read {what} {path}: {type(exc).__name__}: {first}") from exc


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu"
                    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Return ``(state_dict, meta)``; ``meta`` is ``{}`` for a bare arcface_torch state_dict."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    obj = load_weights_only(path, "checkpoint", map_location)
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
