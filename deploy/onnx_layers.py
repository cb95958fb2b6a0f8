"""Lowerings of the layers without weights: activations, PReLU, sums and products, pads, pools, flatten.
Convs, linears and BatchNorms are in ``deploy.onnx_weighted``."""
from __future__ import annotations

from typing import Any

import numpy as np
from torch import fx, nn

from backbones.layers import Add, ChannelPad, Mul
from deploy.onnx_graph import ExportError, quantize_act
from deploy.onnx_lowering import Exporter, lowers
from quant.layers import QuantAdd, QuantMul, QuantPReLU, QuantReLU


@lowers(nn.Identity, nn.Dropout)
def lower_identity(ex: Exporter, node: fx.Node, m: nn.Module) -> str:
    return ex.arg(node)


@lowers(nn.ReLU, subclasses=False)
def lower_relu(ex: Exporter, node: fx.Node, m: nn.ReLU) -> str:
    return ex.g.op("Relu", [ex.arg(node)], node.target)


@lowers(nn.Sigmoid, subclasses=False)
def lower_sigmoid(ex: Exporter, node: fx.Node, m: nn.Sigmoid) -> str:
    return ex.g.op("Sigmoid", [ex.arg(node)], node.target)


@lowers(QuantReLU)
def lower_quant_relu(ex: Exporter, node: fx.Node, m: QuantReLU) -> str:
    """A ``Relu`` and its output quantizer (zero point 0, so onnxruntime folds the ReLU into its producer)."""
    out = ex.g.op("Relu", [ex.arg(node)], node.target)
    return quantize_act(ex.g, out, m.output_quant, f"{node.target}.output")


@lowers(nn.PReLU)
def lower_prelu(ex: Exporter, node: fx.Node, m: nn.PReLU) -> str:
    """``a*x + (1-a)*relu(x)``, the same function to float rounding: onnxruntime's ``PRelu`` kernel is slow
    on CPU, and this form lets it fuse the multiplies into the convs around it (see docs/deployment.md).
    ``native_prelu`` writes ``PRelu`` for runtimes that fuse it."""
    where = node.target
    if isinstance(m, QuantPReLU) and (m.weight_quant or m.output_quant):
        raise ExportError(f"{where}: quantized PReLU slopes/outputs (quant_mode='quantface') have no integer "
                          "kernel; export a quant_mode='deploy' student")
    g = ex.g
    x = quantize_act(g, ex.arg(node), getattr(m, "input_quant", None), f"{where}.input")
    slope = m.weight.detach().float()
    slope = slope.reshape((-1, 1, 1) if slope.numel() > 1 else (1,))
    if ex.native_prelu:
        return g.op("PRelu", [x, g.const(f"{where}.slope", slope.numpy())], where)
    a = g.const(f"{where}.slope", slope.numpy())
    rest = g.op("Sub", [g.const("one", np.ones(1, np.float32)), a], f"{where}.rest")  # folded at load
    linear = g.op("Mul", [x, a], f"{where}.linear")
    positive = g.op("Mul", [g.op("Relu", [x], f"{where}.relu"), rest], f"{where}.positive")
    return g.op("Add", [linear, positive], where)


@lowers(Add, Mul)
def lower_binary(ex: Exporter, node: fx.Node, m: Add | Mul) -> str:
    """An ``Add``/``Mul``, with the Q/DQ pairs of its inputs and output when it is quantized."""
    quantized = isinstance(m, (QuantAdd, QuantMul))
    inputs = []
    for index, name in enumerate(("input0_quant", "input1_quant")):
        q = getattr(m, name) if quantized else None
        inputs.append(quantize_act(ex.g, ex.arg(node, index), q, f"{node.target}.input{index}"))
    out = ex.g.op("Add" if isinstance(m, Add) else "Mul", inputs, node.target)
    return quantize_act(ex.g, out, m.output_quant if quantized else None, f"{node.target}.output")


@lowers(nn.Flatten)
def lower_flatten(ex: Exporter, node: fx.Node, m: nn.Flatten) -> str:
    where = node.target
    if m.start_dim != 1 or m.end_dim != -1:
        raise ExportError(f"{where}: Flatten({m.start_dim}, {m.end_dim}) is not supported (only 1, -1)")
    return ex.g.passthrough(ex.arg(node), lambda x: ex.g.op("Flatten", [x], where, axis=1))


def _zero_pad(ex: Exporter, node: fx.Node, pads: list[int]) -> str:
    """A constant ``Pad`` with zeros: grid-preserving, so it runs on the integers of a quantized input."""
    def emit(x: str) -> str:
        return ex.g.op("Pad", [x, ex.g.const(f"{node.target}.pads", np.array(pads, dtype=np.int64))],
                       node.target, mode="constant")
    return ex.g.passthrough(ex.arg(node), emit)


@lowers(nn.ZeroPad2d)
def lower_zero_pad(ex: Exporter, node: fx.Node, m: nn.ZeroPad2d) -> str:
    left, right, top, bottom = m.padding
    return _zero_pad(ex, node, [0, 0, top, left, 0, 0, bottom, right])


@lowers(ChannelPad)
def lower_channel_pad(ex: Exporter, node: fx.Node, m: ChannelPad) -> str:
    return _zero_pad(ex, node, [0, 0, 0, 0, 0, m.extra, 0, 0]) if m.extra else ex.arg(node)


@lowers(nn.AdaptiveAvgPool2d)
def lower_global_pool(ex: Exporter, node: fx.Node, m: nn.AdaptiveAvgPool2d) -> str:
    if m.output_size not in (1, (1, 1)):
        raise ExportError(f"{node.target}: {type(m).__name__} has no ONNX export here")
    return ex.g.op("GlobalAveragePool", [ex.arg(node)], node.target)


@lowers(nn.MaxPool2d, nn.AvgPool2d)
def lower_pool(ex: Exporter, node: fx.Node, m: nn.MaxPool2d | nn.AvgPool2d) -> str:
    """Pools whose ONNX form computes what torch does (floor mode; an average counting its padding)."""
    pair = nn.modules.utils._pair
    kernel, stride, padding = pair(m.kernel_size), pair(m.stride or m.kernel_size), pair(m.padding)
    exact = not m.ceil_mode and (isinstance(m, nn.AvgPool2d) or pair(m.dilation) == (1, 1))
    if isinstance(m, nn.AvgPool2d):
        exact = exact and m.divisor_override is None and (m.count_include_pad or padding == (0, 0))
    if not exact:
        raise ExportError(f"{node.target}: {m} is not supported (only floor mode, no dilation, average pools "
                          "counting their padding)")
    attrs: dict[str, Any] = {"kernel_shape": list(kernel), "strides": list(stride), "pads": [*padding, *padding]}
    if isinstance(m, nn.AvgPool2d):
        attrs["count_include_pad"] = 1
        return ex.g.op("AveragePool", [ex.arg(node)], node.target, **attrs)
    return ex.g.passthrough(ex.arg(node), lambda x: ex.g.op("MaxPool", [x], node.target, **attrs))
