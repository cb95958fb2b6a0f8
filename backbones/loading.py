"""Float backbones from files: this project's checkpoints, bare arcface_torch state_dicts, ONNX face models."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from backbones.onnx_import import onnx_checkpoint
from backbones.registry import get_model, input_spec
from backbones.spec import ARCFACE, InputSpec, check_meta_spec
from utils.checkpoint import CheckpointError, load_state_strict, read_checkpoint


def read_float_source(path: str | os.PathLike, network: str | None = None, onnx_spec: InputSpec = ARCFACE,
                      network_kwargs: dict[str, Any] | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(state_dict, meta)`` of a float model file: a checkpoint (``utils.checkpoint.read_checkpoint``) or an
    ``.onnx`` face model converted to PyTorch (``backbones.onnx_import``; ``network`` built with ``network_kwargs``
    takes its weights, else it becomes an ``onnx_graph``; ``onnx_spec`` is its input, which ONNX files do not
    record)."""
    if Path(path).suffix.lower() == ".onnx":
        return onnx_checkpoint(path, network, onnx_spec, network_kwargs)
    return read_checkpoint(path)


def load_float_model(path: str | os.PathLike, network: str | None = None, onnx_spec: InputSpec = ARCFACE,
                     **network_kwargs: Any) -> nn.Module:
    """Build the float backbone a checkpoint (or ONNX file) was saved from and load it strictly.

    ``network`` and ``network_kwargs`` come from the checkpoint's metadata when present; for a bare
    arcface_torch state_dict they must be given (``num_features`` is inferred from the weights).
    """
    state, meta = read_float_source(path, network, onnx_spec, network_kwargs)
    if meta.get("quant"):
        raise CheckpointError(f"{path} is a quantized student; load it with quant.load_quantized")
    name = meta.get("network") or network
    if not name:
        raise CheckpointError(f"{path} has no metadata naming its backbone; pass the network name")
    kwargs = {**meta.get("network_kwargs", {}), **network_kwargs}
    try:
        check_meta_spec(meta, input_spec(name, kwargs), str(path))
    except ValueError as exc:
        raise CheckpointError(str(exc)) from exc
    bn_stats = [key for key in state if key.endswith("running_mean")]
    if "num_features" not in kwargs and bn_stats:  # the last BN of every backbone here is the embedding BN
        kwargs["num_features"] = int(state[bn_stats[-1]].numel())
    return load_state_strict(get_model(name, **kwargs), state, str(path))
