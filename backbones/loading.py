"""Float backbones from checkpoint files: this project's, or bare arcface_torch state_dicts."""
from __future__ import annotations

import os
from typing import Any

from torch import nn

from backbones.registry import get_model, input_spec
from backbones.spec import check_meta_spec
from utils.checkpoint import CheckpointError, load_state_strict, read_checkpoint


def load_float_model(path: str | os.PathLike, network: str | None = None, **network_kwargs: Any) -> nn.Module:
    """Build the float backbone a checkpoint was saved from and load it strictly.

    ``network`` and ``network_kwargs`` come from the checkpoint's metadata when present; for a bare
    arcface_torch state_dict they must be given (``num_features`` is inferred from the weights).
    """
    state, meta = read_checkpoint(path)
    if meta.get("quant"):
        raise CheckpointError(f"{path} is a quantized student; load it with quant.load_quantized")
    name = meta.get("network") or network
    if not name:
        raise CheckpointError(f"{path} has no metadata naming its backbone; pass the network name")
    try:
        check_meta_spec(meta, input_spec(name), str(path))
    except ValueError as exc:
        raise CheckpointError(str(exc)) from exc
    kwargs = {**meta.get("network_kwargs", {}), **network_kwargs}
    bn_stats = [key for key in state if key.endswith("running_mean")]
    if "num_features" not in kwargs and bn_stats:  # the last BN of every backbone here is the embedding BN
        kwargs["num_features"] = int(state[bn_stats[-1]].numel())
    return load_state_strict(get_model(name, **kwargs), state, str(path))
