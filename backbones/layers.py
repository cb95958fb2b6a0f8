"""Functional operations as tiny modules, so that generic tools can find and wrap them.

Backbones write ``self.add = Add()`` and call ``self.add(out, identity)`` instead of ``out + identity``.
The module has no parameters (state_dict keys are unchanged), but quant/ can see every residual sum
and put an output quantizer on it without knowing any backbone.
"""
from __future__ import annotations

import torch
from torch import nn


class Add(nn.Module):
    """Elementwise sum of two tensors (a residual connection)."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b


class Mul(nn.Module):
    """Elementwise product of two tensors (e.g. squeeze-and-excitation gating)."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a * b


class ChannelPad(nn.Module):
    """Append ``extra`` all-zero channels (dlib's down-sampling shortcut widens this way, without weights)."""

    def __init__(self, extra: int) -> None:
        super().__init__()
        if extra < 0:
            raise ValueError(f"ChannelPad needs extra >= 0, got {extra}")
        self.extra = extra

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.pad(x, (0, 0, 0, 0, 0, self.extra)) if self.extra else x
