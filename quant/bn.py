"""BatchNorm in the student: trained (QuantFace), frozen, or folded into the layer before it.

Folding is exact only for ``Conv2d -> BatchNorm2d`` or ``Linear -> BatchNorm1d`` where the BN reads
the layer's output directly, that output feeds nothing else, and each module is called once.  Other
BNs stay as frozen BNs: e.g. iResNet's pre-activation ``bn1`` in every block (it reads the residual
sum), its ``bn2`` after ``layer4`` (reads a sum), and any BN behind a PReLU/ReLU.
"""
from __future__ import annotations

import logging

import torch
from torch import fx, nn
from torch.nn.modules.batchnorm import _BatchNorm

from quant.graph import ModelGraph

log = logging.getLogger(__name__)


class _FrozenBatchNorm:
    """Running statistics fixed: stays in eval mode even under ``model.train()``; affine params may train."""

    def train(self, mode: bool = True):
        return super().train(False)


class FrozenBatchNorm1d(_FrozenBatchNorm, nn.BatchNorm1d):
    """BatchNorm1d that never leaves eval mode."""


class FrozenBatchNorm2d(_FrozenBatchNorm, nn.BatchNorm2d):
    """BatchNorm2d that never leaves eval mode."""


_FROZEN = {nn.BatchNorm1d: FrozenBatchNorm1d, nn.BatchNorm2d: FrozenBatchNorm2d}
_FOLD_INTO = {nn.BatchNorm2d: nn.Conv2d, nn.BatchNorm1d: nn.Linear}


def batchnorms(model: nn.Module) -> dict[str, _BatchNorm]:
    """Every BatchNorm module by dotted name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, _BatchNorm)}


def freeze_batchnorms(model: nn.Module, names: list[str] | None = None) -> list[str]:
    """Re-class BN modules (all, or ``names``) as frozen BNs in place; returns the names frozen."""
    frozen = []
    for name, bn in batchnorms(model).items():
        if names is not None and name not in names:
            continue
        if type(bn) not in _FROZEN:
            raise TypeError(f"cannot freeze {name}: {type(bn).__name__} is not BatchNorm1d/BatchNorm2d")
        bn.__class__ = _FROZEN[type(bn)]
        bn.train(False)
        frozen.append(name)
    return frozen


def foldable_pairs(graph: ModelGraph) -> list[tuple[str, str]]:
    """``(layer_name, bn_name)`` pairs where folding the BN into the layer is exact."""
    counts = {name: len(nodes) for name, nodes in graph.call_sites.items()}
    pairs = []
    for node in graph.calls():
        bn = graph.modules[node.target]
        layer_type = _FOLD_INTO.get(type(bn))
        if layer_type is None or bn.running_mean is None or counts[node.target] != 1:
            continue
        prev = node.args[0]
        if not (isinstance(prev, fx.Node) and prev.op == "call_module"):
            continue
        layer = graph.modules[prev.target]
        if (type(layer) is layer_type and len(prev.users) == 1 and counts[prev.target] == 1
                and layer.weight.shape[0] == bn.num_features):
            pairs.append((prev.target, node.target))
    return pairs


@torch.no_grad()
def _fold(layer: nn.Conv2d | nn.Linear, bn: _BatchNorm) -> None:
    factor = torch.rsqrt(bn.running_var + bn.eps)
    if bn.affine:
        factor = factor * bn.weight
    shift = -bn.running_mean * factor + (bn.bias if bn.affine else 0.0)
    if layer.bias is not None:
        shift = shift + layer.bias * factor
    layer.weight.mul_(factor.reshape(-1, *([1] * (layer.weight.dim() - 1))))
    layer.bias = nn.Parameter(shift.to(layer.weight.dtype))


def fold_batchnorms(model: nn.Module, graph: ModelGraph | None) -> tuple[list[str], list[str]]:
    """Fold every exactly-foldable BN into its layer (BN becomes ``nn.Identity``); freeze the rest.

    Returns ``(folded, frozen)`` BN names.  The layer gains a ``bias`` parameter.
    """
    if graph is None:
        raise ValueError("bn_mode='fold' needs a model torch.fx can trace to find conv->BN pairs; "
                         "use bn_mode='frozen' for this backbone")
    pairs = foldable_pairs(graph)
    for layer_name, bn_name in pairs:
        _fold(model.get_submodule(layer_name), model.get_submodule(bn_name))
        model.set_submodule(bn_name, nn.Identity())
    folded = [bn for _, bn in pairs]
    frozen = freeze_batchnorms(model)
    log.info("folded %d BatchNorms into the preceding layer; kept %d frozen: %s",
             len(folded), len(frozen), ", ".join(frozen))
    return folded, frozen
