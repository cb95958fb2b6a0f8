"""Observer control: calibrate, enable/disable range collection, all-reduce ranges across processes."""
from __future__ import annotations

from typing import Iterable

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from quant.batches import batch_input
from quant.model import quantizers
from quant.quantizer import FakeQuantizer
from utils.modes import eval_mode


def set_observers(model: nn.Module, enabled: bool) -> nn.Module:
    """Turn range collection on or off in every quantizer (weights' per-step min/max are unaffected)."""
    for _, quantizer in quantizers(model):
        quantizer.observer_enabled = enabled
    return model


@torch.no_grad()
def refresh_weight_qparams(model: nn.Module) -> nn.Module:
    """Recompute weight quantizers' ``scale``/``zero_point`` buffers from the current weights.

    They are refreshed at every forward anyway; call this before reading them (saving, export) after
    the weights changed without a forward since.  Learned (LSQ) weight scales are left alone.
    """
    for module in model.modules():
        quantizer = getattr(module, "weight_quant", None)
        if isinstance(quantizer, FakeQuantizer) and not quantizer.has_state and not quantizer.learnable:
            quantizer.observe(module.weight)
    return model


def freeze_observers(model: nn.Module) -> nn.Module:
    """Make ranges consistent across processes (``sync_observers``), then stop collecting them."""
    sync_observers(model)
    return set_observers(model, False)


def unfreeze_observers(model: nn.Module) -> nn.Module:
    """Resume range collection (ranges keep what was seen so far)."""
    return set_observers(model, True)


@torch.no_grad()
def sync_observers(model: nn.Module) -> nn.Module:
    """Under torch.distributed, all-reduce observed ranges (min of mins, max of maxes); else a no-op.

    Every rank then holds identical ranges and scales.  Learned (LSQ) scales are only reset from the
    synced range while their observers are still enabled; afterwards DDP keeps them in step.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return model
    stateful = [q for _, q in quantizers(model) if q.has_state]
    if not stateful:
        return model
    mins = torch.cat([q.estimator.min_val for q in stateful])
    maxs = torch.cat([q.estimator.max_val for q in stateful])
    dist.all_reduce(mins, op=dist.ReduceOp.MIN)
    dist.all_reduce(maxs, op=dist.ReduceOp.MAX)
    finite = (torch.isfinite(mins) & torch.isfinite(maxs)).tolist()
    offset = 0
    for q in stateful:
        n = q.estimator.min_val.numel()
        q.estimator.min_val.copy_(mins[offset:offset + n])
        q.estimator.max_val.copy_(maxs[offset:offset + n])
        if all(finite[offset:offset + n]):
            if q.observer_enabled or not q.learnable:
                q.set_range(q.estimator.min_val, q.estimator.max_val)
            q.calibrated = True
        offset += n
    return model


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable, max_batches: int | None = None) -> nn.Module:
    """Observe activation ranges on ``batches`` (eval mode, no grad), then freeze observers.

    ``batches`` yields input tensors, or tuples/lists whose first item is the input; they are moved to
    the model's device.  Under torch.distributed the ranges are synced before freezing.
    """
    device = next(model.parameters()).device
    set_observers(model, True)
    seen = 0
    with eval_mode(model):
        for batch in tqdm(batches, desc="calibrate", total=max_batches, leave=False):
            if max_batches is not None and seen >= max_batches:
                break
            model(batch_input(batch).to(device))
            seen += 1
    if seen == 0:
        raise ValueError("calibrate() got no batches: pass an iterable of input tensors")
    return freeze_observers(model)
