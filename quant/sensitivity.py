"""Per-layer sensitivity and the weight widths that fit a size budget (mixed precision).

``weight_sensitivity`` quantizes one Conv/Linear weight at a time, at each candidate width, in the float
model (every other layer float) and measures how far the embeddings move from the float model's on
held-out images (``1 - cosine``); ``act_sensitivity`` does the same for one layer's input.  Quantizers are
the students' own (``quant.quantizer``), so a point measures what the student would do.

``allocate_weight_bits`` then picks one width per layer so that the weights fit a budget of bits and the
summed sensitivity is least: a multiple-choice knapsack solved exactly by dynamic programming over a
discretised budget (HAWQ-V3 solves the same problem as an ILP).  Summing per-layer losses assumes they add
up, which holds for small perturbations; which layers stay wide (stem, depthwise, head) is what the
measurement says, not a rule.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from quant.config import QuantConfigError
from quant.quantizer import act_quantizer, weight_quantizer
from utils.modes import eval_mode

WIDTHS = (2, 3, 4, 5, 6, 8)
_STEPS = 4000  # budget resolution of the knapsack: the solution is within 1/_STEPS of the budget


def weighted_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The Conv2d / Linear layers whose weights a student quantizes, by dotted name."""
    return {name: m for name, m in model.named_modules() if type(m) in (nn.Conv2d, nn.Linear)}


def _embed(model: nn.Module, images: Sequence[torch.Tensor]) -> torch.Tensor:
    return F.normalize(torch.cat([model(x).float() for x in images]), dim=1)


def _loss(model: nn.Module, images: Sequence[torch.Tensor], reference: torch.Tensor) -> float:
    return float(1 - (_embed(model, images) * reference).sum(1).mean())


@torch.no_grad()
def weight_sensitivity(model: nn.Module, images: Sequence[torch.Tensor], widths: Iterable[int] = WIDTHS,
                       symmetric: bool = True) -> dict[str, dict[int, float]]:
    """``{layer: {bits: 1 - mean cosine to the float model}}`` with that layer's weight alone at ``bits``
    (per output channel, as the student's weights)."""
    widths = sorted(widths)
    out: dict[str, dict[int, float]] = {}
    with eval_mode(model):
        reference = _embed(model, images)
        for name, layer in weighted_layers(model).items():
            original = layer.weight.data.clone()
            out[name] = {}
            for bits in widths:
                quantizer = weight_quantizer(bits, layer.weight.shape[0], symmetric).to(original.device)
                layer.weight.data = quantizer(original)
                out[name][bits] = _loss(model, images, reference)
            layer.weight.data = original
    return out


@torch.no_grad()
def act_sensitivity(model: nn.Module, images: Sequence[torch.Tensor], widths: Iterable[int] = WIDTHS,
                    observer: str = "percentile", percentile: float = 99.99) -> dict[str, dict[int, float]]:
    """``{layer: {bits: 1 - mean cosine}}`` with that layer's input alone quantized at ``bits`` (per tensor,
    range observed on ``images`` first, as calibration does)."""
    widths = sorted(widths)
    out: dict[str, dict[int, float]] = {}
    with eval_mode(model):
        reference = _embed(model, images)
        for name, layer in weighted_layers(model).items():
            out[name] = {}
            for bits in widths:
                quantizer = act_quantizer(bits, observer, percentile).to(reference.device)
                handle = layer.register_forward_pre_hook(lambda _, args, q=quantizer: (q(args[0]),) + args[1:])
                try:
                    _embed(model, images)  # observe
                    quantizer.observer_enabled = False
                    out[name][bits] = _loss(model, images, reference)
                finally:
                    handle.remove()
    return out


def weight_counts(model: nn.Module) -> dict[str, int]:
    """Weights per quantizable layer (what its width multiplies)."""
    return {name: m.weight.numel() for name, m in weighted_layers(model).items()}


def allocate_weight_bits(sensitivity: dict[str, dict[int, float]], counts: dict[str, int],
                         budget_bits: float) -> dict[str, int]:
    """One width per layer whose weights take at most ``budget_bits`` in all, with the least summed
    sensitivity; raises ``QuantConfigError`` when even the narrowest widths do not fit."""
    names = list(sensitivity)
    unit = sum(counts[n] * max(sensitivity[n]) for n in names) / _STEPS
    capacity = int(budget_bits / unit)
    narrowest = sum(math.ceil(counts[n] * min(sensitivity[n]) / unit) for n in names)
    if narrowest > capacity:
        raise QuantConfigError(f"size budget too small: even {min(min(s) for s in sensitivity.values())}-bit "
                               f"weights everywhere need {narrowest * unit / 8e6:.2f} MB, the budget allows "
                               f"{budget_bits / 8e6:.2f} MB")
    best = np.zeros(capacity + 1)  # least loss using at most c units, over the layers so far
    choices = []
    for name in names:
        new = np.full(capacity + 1, np.inf)
        pick = np.zeros(capacity + 1, dtype=np.int64)
        for bits, loss in sensitivity[name].items():
            cost = math.ceil(counts[name] * bits / unit)
            if cost > capacity:
                continue
            candidate = np.full(capacity + 1, np.inf)
            candidate[cost:] = best[:capacity + 1 - cost] + loss
            better = candidate < new
            new[better], pick[better] = candidate[better], bits
        choices.append(pick)
        best = new
    widths: dict[str, int] = {}
    c = capacity
    for name, pick in zip(reversed(names), reversed(choices)):
        widths[name] = int(pick[c])
        c -= math.ceil(counts[name] * widths[name] / unit)
    return {name: widths[name] for name in names}

