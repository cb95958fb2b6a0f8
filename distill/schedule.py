"""Learning-rate schedules as a per-step multiplier of the base rate (warm-up, then step/cosine/poly).

The schedule is a pure function of the global step, so a resumed run gets exactly the rate an
uninterrupted run would have had; ``torch.optim.lr_scheduler.LambdaLR`` applies it every step and its
state (plain numbers) goes into the training checkpoint.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch

SCHEDULERS = ("step", "cosine", "poly")
POLY_POWER = 2.0  # arcface_torch PolyScheduler


def scaled_lr(lr: float, batch_size: int, world_size: int) -> float:
    """``lr`` when set, else QuantFace's linear scaling rule ``0.1 x total batch / 512``."""
    return lr if lr > 0 else 0.1 * batch_size * world_size / 512


def total_steps(num_steps: int, epochs: int, batches_per_epoch: int) -> int:
    """``num_steps`` when > 0, else ``epochs`` full passes over the data."""
    steps = num_steps if num_steps > 0 else epochs * batches_per_epoch
    if steps <= 0:
        raise ValueError(f"nothing to train: num_steps={num_steps}, epochs={epochs}, "
                         f"batches_per_epoch={batches_per_epoch}; set num_steps or epochs > 0")
    return steps


def milestone_steps(milestones: Sequence[float], steps: int) -> list[int]:
    """Fractions of training -> step numbers (rounded) at which the step schedule decays."""
    bad = [m for m in milestones if not 0 < m <= 1]
    if bad:
        raise ValueError(f"lr_milestones must be fractions of training in (0, 1], got {list(milestones)}")
    return sorted(int(round(m * steps)) for m in milestones)


def lr_lambda(scheduler: str, steps: int, warmup_steps: int = 0, milestones: Sequence[float] = (),
              gamma: float = 0.1) -> Callable[[int], float]:
    """Multiplier of the base lr for global step ``s`` (0-based) of a ``steps``-long run.

    Warm-up rises linearly to 1 over ``warmup_steps`` (the first step already trains, at 1/warmup);
    ``step`` multiplies by ``gamma`` at each milestone; ``cosine`` decays to 0 after warm-up;
    ``poly`` is ``(1 - t)^2`` after warm-up, as arcface_torch's PolyScheduler.
    """
    if scheduler not in SCHEDULERS:
        raise ValueError(f"unknown scheduler '{scheduler}' (choose from {', '.join(SCHEDULERS)})")
    if not 0 <= warmup_steps < steps:
        raise ValueError(f"warmup_steps={warmup_steps} must be in [0, total steps={steps})")
    decay_at = milestone_steps(milestones, steps) if scheduler == "step" else []

    def factor(s: int) -> float:
        warm = (s + 1) / warmup_steps if s < warmup_steps else 1.0
        if scheduler == "step":
            return warm * gamma ** sum(s >= m for m in decay_at)
        t = min(max(s - warmup_steps, 0) / (steps - warmup_steps), 1.0)
        if scheduler == "cosine":
            return warm * 0.5 * (1.0 + math.cos(math.pi * t))
        return warm * (1.0 - t) ** POLY_POWER

    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, optim: Any, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The per-step scheduler the optimisation section asks for (``scheduler``, ``warmup_steps``,
    ``lr_milestones``, ``lr_gamma``)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(optim.scheduler, steps, optim.warmup_steps, optim.lr_milestones, optim.lr_gamma))
