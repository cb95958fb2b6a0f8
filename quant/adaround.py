"""Learned weight rounding (AdaRound, Nagel et al. 2020) for one quantized Conv2d/Linear weight.

Rounding to nearest is not what minimises a layer's output error: each weight may round down or up, and
AdaRound learns which.  ``w_q = s * (clamp(floor(w / s) + h(V) + z, qmin, qmax) - z)`` with
``h(V) = clamp(sigmoid(V) * 1.1 - 0.05, 0, 1)`` (the rectified sigmoid), and a regulariser that pulls
every ``h`` to 0 or 1 as its temperature falls.  No fused torch op learns a rounding, so this is the one
place that spells the grid out.

The scale and zero point stay the weight quantizer's own.  A weight quantizer that takes its range from the
weights (min/max) would move its grid if a channel's extreme weight rounded inwards, so those extremes keep
their nearest rounding: writing the hard-rounded weights back then leaves the quantizer's grid unchanged and
the weights exactly on it.
"""
from __future__ import annotations

import torch
from torch import nn

from quant.quantizer import FakeQuantizer, used_scale

ZETA, GAMMA = 1.1, -0.1   # the rectified sigmoid's stretch (AdaRound's values)


class AdaRoundWeight(nn.Module):
    """Stands in for a layer's ``weight_quant`` while its rounding is learned; ``hard_weight()`` is the result."""

    def __init__(self, quantizer: FakeQuantizer, weight: torch.Tensor):
        super().__init__()
        self.quantizer = (quantizer,)  # a tuple: the original is restored afterwards, not a child
        with torch.no_grad():
            if not quantizer.learnable:
                quantizer.observe(weight)  # the grid the weights have now
            shape = (-1,) + (1,) * (weight.dim() - 1) if quantizer.per_channel else (1,) * weight.dim()
            self.register_buffer("step", used_scale(quantizer.scale).reshape(shape))
            self.register_buffer("offset", quantizer.zero_point.detach().float().reshape(shape))
            grid = weight.detach().float() / self.step
            self.register_buffer("floor", grid.floor())
            rest = grid - self.floor
            self.register_buffer("fixed", self._extremes(weight) if quantizer.estimator.stateless
                                 and not quantizer.learnable else torch.zeros_like(rest, dtype=torch.bool))
            self.register_buffer("nearest", (rest >= 0.5).float())
            self.logit = nn.Parameter(-torch.log((ZETA - GAMMA) / (rest.clamp(1e-4, 1 - 1e-4) - GAMMA) - 1))
        self.qmin, self.qmax = quantizer.quant_min, quantizer.quant_max

    @staticmethod
    def _extremes(weight: torch.Tensor) -> torch.Tensor:
        """The weights at each output channel's min or max (the ones that set a min/max grid)."""
        flat = weight.detach().reshape(weight.shape[0], -1)
        lo, hi = torch.aminmax(flat, dim=1)
        return ((flat == lo[:, None]) | (flat == hi[:, None])).reshape(weight.shape)

    @property
    def scale(self) -> torch.Tensor:
        """The quantizer's scale (read by the int32 bias grid)."""
        return self.quantizer[0].scale

    def soft_rounding(self) -> torch.Tensor:
        """``h(V)`` in [0, 1], with the fixed weights at their nearest rounding."""
        h = (torch.sigmoid(self.logit) * (ZETA - GAMMA) + GAMMA).clamp(0, 1)
        return torch.where(self.fixed, self.nearest, h)

    def regularizer(self, beta: float) -> torch.Tensor:
        """``sum(1 - |2h - 1|^beta)``: 0 once every rounding is decided; a large beta leaves h free."""
        return (1 - (2 * self.soft_rounding() - 1).abs().pow(beta)).sum()

    def _dequantize(self, rounding: torch.Tensor) -> torch.Tensor:
        return ((self.floor + rounding + self.offset).clamp(self.qmin, self.qmax) - self.offset) * self.step

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return self._dequantize(self.soft_rounding()).to(weight.dtype)

    @torch.no_grad()
    def hard_weight(self) -> torch.Tensor:
        """The weights with every rounding decided (``h >= 0.5`` rounds up): values on the quantizer's grid."""
        return self._dequantize((self.soft_rounding() >= 0.5).float())
