"""Quantized versions of Conv2d, Linear, PReLU and the ``backbones.layers`` Add/Mul modules.

Each is a subclass of the float module.  ``attach_quantizers`` re-classes a module in place (inside the
deep copy made by ``quantize_model``), so ``weight``/``bias`` keep their objects and key paths and the
quantizers appear only as new children: ``<name>.weight_quant``, ``<name>.input_quant``,
``<name>.input0_quant``/``input1_quant`` (Add/Mul) and ``<name>.output_quant``.  A child that is
``None`` means "this tensor stays float".
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from quant.quantizer import FakeQuantizer
from backbones.layers import Add, Mul


def _q(quantizer: FakeQuantizer | None, x: torch.Tensor) -> torch.Tensor:
    return x if quantizer is None else quantizer(x)


class QuantConv2d(nn.Conv2d):
    """Conv2d with quantized weight and, where placed, quantized input/output."""

    input_names = ("input_quant",)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._conv_forward(_q(self.input_quant, x), _q(self.weight_quant, self.weight), self.bias)
        return _q(self.output_quant, out)


class QuantLinear(nn.Linear):
    """Linear with quantized weight and, where placed, quantized input/output."""

    input_names = ("input_quant",)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _q(self.output_quant, F.linear(_q(self.input_quant, x), _q(self.weight_quant, self.weight), self.bias))


class QuantPReLU(nn.PReLU):
    """PReLU with quantized slope and, where placed, quantized input/output (QuantFace: slope and output)."""

    input_names = ("input_quant",)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _q(self.output_quant, F.prelu(_q(self.input_quant, x), _q(self.weight_quant, self.weight)))


class _QuantBinary:
    """Shared forward of Add/Mul: quantize each input that needs it, combine, quantize the output."""

    input_names = ("input0_quant", "input1_quant")

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return _q(self.output_quant, super().forward(_q(self.input0_quant, a), _q(self.input1_quant, b)))


class QuantAdd(_QuantBinary, Add):
    """Residual sum with quantized inputs (where needed) and output."""


class QuantMul(_QuantBinary, Mul):
    """Elementwise product with quantized inputs (where needed) and output."""


QUANT_CLASSES: dict[type, type] = {nn.Conv2d: QuantConv2d, nn.Linear: QuantLinear, nn.PReLU: QuantPReLU,
                                   Add: QuantAdd, Mul: QuantMul}
WEIGHTED = (nn.Conv2d, nn.Linear, nn.PReLU)


def attach_quantizers(module: nn.Module, weight: FakeQuantizer | None, inputs: tuple[FakeQuantizer | None, ...],
                      output: FakeQuantizer | None) -> nn.Module:
    """Turn a float module (exact type in ``QUANT_CLASSES``) into its quantized subclass, in place."""
    cls = QUANT_CLASSES[type(module)]
    if len(inputs) != len(cls.input_names):
        raise ValueError(f"{cls.__name__} takes {len(cls.input_names)} input quantizers, got {len(inputs)}")
    module.__class__ = cls
    if isinstance(module, WEIGHTED):
        module.register_module("weight_quant", weight)
    for name, quantizer in zip(cls.input_names, inputs):
        module.register_module(name, quantizer)
    module.register_module("output_quant", output)
    return module
