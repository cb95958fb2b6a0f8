"""Quantized versions of Conv2d, Linear, PReLU, ReLU and the ``backbones.layers`` Add/Mul modules.

Each is a subclass of the float module.  ``attach_quantizers`` re-classes a module in place (inside the
deep copy made by ``quantize_model``), so ``weight``/``bias`` keep their objects and key paths and the
quantizers appear only as new children: ``<name>.weight_quant``, ``<name>.input_quant``,
``<name>.input0_quant``/``input1_quant`` (Add/Mul) and ``<name>.output_quant``.  A child that is
``None`` means "this tensor stays float".

A conv or linear whose input and weight are both quantized may also round its bias onto the int32 grid
``s_in * s_w`` per output channel (``quantize_bias``, set by the deploy placement): that is the bias an
int8 kernel adds to its integer accumulator, so the student computes what the exported graph computes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from quant.quantizer import FakeQuantizer, used_scale
from backbones.layers import Add, Mul


INT32_MIN, INT32_MAX = -2 ** 31, 2 ** 31 - 1


def _q(quantizer: FakeQuantizer | None, x: torch.Tensor) -> torch.Tensor:
    return x if quantizer is None else quantizer(x)


def input_scale(layer: nn.Module) -> torch.Tensor:
    """The scalar step ``s_in`` of the layer's quantized input: its input quantizer's, or the upstream
    Add/Mul output quantizer's (``bias_input``)."""
    source = layer.input_quant if layer.input_quant is not None else layer.bias_input[0]
    return used_scale(source.scale).reshape(())


def bias_scale(layer: nn.Module) -> torch.Tensor:
    """Per-output-channel float32 scale ``s_in * s_w`` of the layer's int32 bias grid (after a forward)."""
    return input_scale(layer) * used_scale(layer.weight_quant.scale)


class QuantWeighted:
    """Shared by QuantConv2d / QuantLinear: quantize input and weight, then (deploy) the bias."""

    input_names = ("input_quant",)
    quantize_bias = False
    bias_input: tuple[FakeQuantizer, ...] = ()

    def effective_bias(self) -> torch.Tensor | None:
        """The bias as the forward adds it: on the int32 grid ``s_in * s_w`` when ``quantize_bias``."""
        if not (self.quantize_bias and self.bias is not None):
            return self.bias
        scale = bias_scale(self)
        return torch.fake_quantize_per_channel_affine(self.bias, scale, torch.zeros_like(scale, dtype=torch.int32),
                                                      0, INT32_MIN, INT32_MAX)

    def _operands(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        x, weight = _q(self.input_quant, x), _q(self.weight_quant, self.weight)
        return x, weight, self.effective_bias()


class QuantConv2d(QuantWeighted, nn.Conv2d):
    """Conv2d with quantized weight and, where placed, quantized input/output and int32 bias."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _q(self.output_quant, self._conv_forward(*self._operands(x)))


class QuantLinear(QuantWeighted, nn.Linear):
    """Linear with quantized weight and, where placed, quantized input/output and int32 bias."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _q(self.output_quant, F.linear(*self._operands(x)))


class QuantPReLU(nn.PReLU):
    """PReLU with quantized slope and, where placed, quantized input/output (QuantFace: slope and output)."""

    input_names = ("input_quant",)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _q(self.output_quant, F.prelu(_q(self.input_quant, x), _q(self.weight_quant, self.weight)))


class QuantReLU(nn.ReLU):
    """ReLU with its output quantized (deploy: unsigned, zero point 0, so int8 kernels fold the ReLU into
    the integer output of the conv or sum before it, and the layers after it read this one grid)."""

    input_names = ()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _q(self.output_quant, F.relu(x))


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
                                   nn.ReLU: QuantReLU, Add: QuantAdd, Mul: QuantMul}
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
