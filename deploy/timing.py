"""How fast a model embeds: the one timing rule the deployment reports share."""
from __future__ import annotations

import time

import torch
from torch import nn


@torch.no_grad()
def images_per_s(model: nn.Module, batch: int, size: int = 112, repeats: int = 3) -> float:
    """Images/s of the best of ``repeats`` timed forwards of one random ``batch`` (after a warm-up one):
    the best run is the one least disturbed by other load on the machine."""
    x = torch.randn(batch, 3, size, size)
    model(x)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        model(x)
        best = min(best, time.perf_counter() - start)
    return batch / best
