"""Save and rebuild quantized students: the float backbone is rebuilt by name, quantized, then loaded strictly."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from quant.config import QuantConfig, QuantConfigError
from quant.model import quantize_inplace, quantizers
from quant.observers import set_observers
from backbones import get_model, input_spec, load_float_model
from backbones.spec import check_meta_spec
from utils.checkpoint import CheckpointError, load_state_strict, read_checkpoint, save_checkpoint


def save_quantized(path: str | os.PathLike, model: nn.Module, network: str, network_kwargs: dict[str, Any],
                   qcfg: QuantConfig, meta: dict[str, Any] | None = None) -> Path:
    """Write the student's state_dict with ``meta = {network, network_kwargs, quant, **meta}``.

    Weight ``scale``/``zero_point`` buffers are saved as the last forward left them (the state is
    exactly the model's); they are recomputed from the weights at every forward after loading.
    """
    model = getattr(model, "module", model)  # DistributedDataParallel wrapper
    if not any(True for _ in quantizers(model)):
        raise ValueError("save_quantized got a model without quantizers; save float models with "
                         "utils.checkpoint.save_checkpoint")
    info = {**(meta or {}), "network": network, "network_kwargs": dict(network_kwargs), "quant": qcfg.to_dict()}
    return save_checkpoint(path, model.state_dict(), info)


def rebuild_student(meta: dict[str, Any], source: str) -> nn.Module:
    """The (unloaded) student described by ``meta`` (network, network_kwargs, quant); errors name ``source``."""
    if not meta.get("network"):
        raise CheckpointError(f"{source} has quantization metadata but no 'network' name to rebuild from")
    try:
        qcfg = QuantConfig.from_dict(meta["quant"])
        check_meta_spec(meta, input_spec(meta["network"], meta.get("network_kwargs")), source)
    except QuantConfigError as exc:
        raise CheckpointError(f"{source}: invalid 'quant' metadata: {exc}") from exc
    except ValueError as exc:
        raise CheckpointError(str(exc)) from exc
    return quantize_inplace(get_model(meta["network"], **meta.get("network_kwargs", {})), qcfg)


def build_quantized(state: dict[str, torch.Tensor], meta: dict[str, Any], source: str) -> nn.Module:
    """``rebuild_student(meta)`` loaded strictly from ``state``, observers frozen."""
    model = load_state_strict(rebuild_student(meta, source), state, source)
    return set_observers(model, False)


def load_quantized(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a student saved by ``save_quantized`` (strict load, observers frozen, on ``map_location``)."""
    state, meta = read_checkpoint(path, map_location)
    if not meta.get("quant"):
        raise CheckpointError(f"{path} is a float checkpoint (no 'quant' metadata); load it with "
                              "backbones.load_float_model or quant.load_any_model")
    return build_quantized(state, meta, str(path)).to(map_location)


def load_any_model(path: str | os.PathLike, network: str | None = None,
                   map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """``(model, meta)`` for a quantized student or a float checkpoint (``network`` names bare state_dicts).

    A float checkpoint is handed to ``backbones.load_float_model`` (which reads the file again).
    """
    state, meta = read_checkpoint(path, map_location)
    if meta.get("quant"):
        return build_quantized(state, meta, str(path)).to(map_location), meta
    return load_float_model(path, network).to(map_location), meta
