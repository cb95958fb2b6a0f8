"""Export a float backbone or a deploy-mode quantized student to ONNX, node by node from its torch.fx trace.

A float model becomes an fp32 graph.  A quantized student becomes a QDQ graph that computes what its
fake quantizers compute: each activation quantizer is a ``QuantizeLinear -> DequantizeLinear`` pair
(uint8, per tensor, its learned or observed scale and zero point), each quantized weight an int8
initializer (per output channel, symmetric) behind a ``DequantizeLinear``, and a conv or linear whose
input and weight are quantized gets its bias as int32 at scale ``s_in * s_w`` (the form onnxruntime
fuses into ``QLinearConv``/``QGemm``).  BatchNorm right after a conv or linear is folded into it; with
per-channel symmetric weights the folding is exact (the int8 weights stay, the channel scales take the
BatchNorm factor).  A BatchNorm that reads a quantized tensor (iResNet's pre-activation ``bn1``/``bn2``)
becomes a depthwise 1x1 integer conv.  A conv that onnxruntime runs in float (``_Graph.float_kernels``) gets
its integer weights as constants it folds at load, not as a ``DequantizeLinear`` run at every call.

Weight containers.  x86 CPUs without VNNI (AVX2, AVX-512 before VNNI) multiply uint8 activations by int8
weights with ``vpmaddubsw``, whose int16 pair sums saturate once ``|w|`` uses all 8 bits (measured here:
a 3x3 conv off by up to 50 quantization steps).  So dense convs and linears with 8-bit weights are
written as uint8 weights with zero point 128 (exact on every CPU), unless ``int8_weights=True`` (for
VNNI / ARM dot-product targets, where int8 is exact and fastest); weights of 7 bits or fewer, and
depthwise convs (a kernel without pair sums), are always int8.

PReLU.  onnxruntime's ``PRelu`` kernel is slow on CPU (4.5 ns per element against 0.3 for ``Mul`` or
``Relu``, measured on a 32x64x56x56 tensor), so each PReLU is written as ``a*x + (1-a)*relu(x)``: the same
function to float rounding, which onnxruntime fuses into the convs around it (the fp32 MobileFaceNet runs
1.8-2x faster than with ``PRelu``).  ``native_prelu=True`` writes ``PRelu`` (for runtimes that fuse it).

The input is the *normalised* image batch (dynamic batch size); the model's
``InputSpec`` travels in the ONNX metadata (``quantface.input_spec``) so the runtime normalises as the
student did.  What cannot be exported exactly is an ``ExportError`` naming the layer and what to do.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import fx, nn
from torch.nn.modules.batchnorm import _BatchNorm

import quant
from backbones.layers import Add, ChannelPad, Mul
from backbones.spec import input_spec_of
from quant.layers import (QuantAdd, QuantConv2d, QuantLinear, QuantMul, QuantPReLU, QuantReLU,
                          bias_scale, input_scale)
from quant.quantizer import FakeQuantizer, used_scale
from utils.fileio import atomic_write_bytes
from utils.errors import InputError
from utils.modes import eval_mode

OPSET = 17
INPUT, OUTPUT = "input", "embedding"
SPEC_KEY, META_KEY = "quantface.input_spec", "quantface.meta"


class ExportError(InputError, ValueError):
    """The model (or one layer of it) cannot be exported exactly; the message names it and what to change."""


class _Tracer(fx.Tracer):
    """Every torch layer, quantized layer, Add/Mul and FakeQuantizer is one node (never traced into)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (nn.Conv2d, nn.Linear, nn.PReLU, nn.ReLU, _BatchNorm, Add, Mul, ChannelPad, FakeQuantizer)) or \
            super().is_leaf_module(m, qualname)


@dataclass
class _Graph:
    """The ONNX graph being written: nodes, initializers, and a counter for fresh tensor names."""

    nodes: list[onnx.NodeProto] = field(default_factory=list)
    inits: list[onnx.TensorProto] = field(default_factory=list)
    count: int = 0
    grid: dict[str, FakeQuantizer] = field(default_factory=dict)  # DQ output -> the quantizer it came from
    # output of a grid-preserving op (pad, max pool, flatten) -> (its input, how to emit the op on another input)
    passes: dict[str, tuple[str, Callable[[str], str]]] = field(default_factory=dict)
    # (tensor, id of its quantizer) -> the DQ output: readers sharing one quantizer share one Q/DQ pair
    quantized: dict[tuple[str, int], str] = field(default_factory=dict)

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{hint}_{self.count}"

    def const(self, hint: str, array: np.ndarray) -> str:
        self.count += 1
        name = f"c{self.count}"  # short: names are a sizeable share of a mobile net's int8 file
        array = np.asarray(array)  # keeps 0-d scalars 0-d (per-tensor), unlike np.ascontiguousarray
        self.inits.append(numpy_helper.from_array(array.copy(order="C"), name))
        return name

    def op(self, op_type: str, inputs: list[str], hint: str, **attrs: Any) -> str:
        """Append a node (named after ``hint``, its layer) with one output tensor (a short name); return it."""
        name = self.name(hint)
        out = f"t{self.count}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=name, **attrs))
        return out

    def int32_bias(self, where: str, ints: np.ndarray, s_in: float, weight_scale: str) -> str:
        """``DequantizeLinear`` of an int32 bias on the grid ``s_in * s_w``; the grid is written as a product
        of the input step and the weight scales already in the file (onnxruntime folds it at load), not as
        4 more bytes a channel.  Zero point omitted: 0."""
        scale = self.op("Mul", [self.const(f"{where}.input_scale", np.array(s_in, np.float32)), weight_scale],
                        f"{where}.bias_scale")
        return self.op("DequantizeLinear", [self.const(f"{where}.bias", ints), scale], f"{where}.bias_dq", axis=0)

    def passthrough(self, x: str, emit: Callable[[str], str]) -> str:
        """A grid-preserving op (``Q(op(x)) == op(Q(x))``: zero padding, max pooling, flattening) on ``x``.
        On a quantized ``x`` its output is put back on the same grid (an exact Q/DQ), so onnxruntime runs
        the op on the integers; otherwise it is remembered, so a quantizer after it can move before it."""
        out = emit(x)
        if x in self.grid:
            return _requantize(self, out, self.grid[x])
        self.passes[out] = (x, emit)
        return out

    def float_kernels(self) -> None:
        """Rewrite the weights and biases of the convs and linears onnxruntime runs in float as constant
        arithmetic, ``Mul(Cast(q), scale)``, which it folds at load into float32 initializers: the same values
        (integers times their scale), and the file keeps its integer weights.

        onnxruntime fuses ``DQ -> Conv -> Q`` (the ReLU between them folded) into ``QLinearConv`` and
        ``DQ -> Gemm`` into ``QGemm``.  A conv with a float input, a float output (a PReLU's, left float by
        the default placement) or two quantizers reading its output runs as a float ``Conv``; a weight's
        ``DequantizeLinear``, which onnxruntime keeps as a node, would then run at every call and keep the
        float fusions (the PReLU's multiply folded into the conv) from applying: the demo student's int8 file
        ran 0.82 0.78 0.85 0.69x the user's fp32 file with them, 1.20 1.04 0.97 0.95x without (batch 1 and 32,
        one thread, then two).

        A uint8 container keeps its zero point, ``Mul(Sub(Cast(q), 128), scale)``: OpenVINO reads
        ``Convert -> Multiply`` on int8 constants as quantized weights and runs such a conv (when its input
        is quantized) on its u8 x s8 kernels, which saturate with 8-bit weights on CPUs without VNNI, as
        onnxruntime's do; with the zero point it keeps the conv in float, as onnxruntime does."""
        producer = {out: node for node in self.nodes for out in node.output}
        readers: dict[str, list[onnx.NodeProto]] = {}
        for node in self.nodes:
            for name in node.input:
                readers.setdefault(name, []).append(node)
        inits = {t.name: t for t in self.inits}

        def from_dq(name: str) -> bool:
            return name in producer and producer[name].op_type == "DequantizeLinear"

        def quantized_output(node: onnx.NodeProto) -> bool:  # one reader, a quantize (a ReLU folded before it)
            users = readers.get(node.output[0], [])
            return len(users) == 1 and (users[0].op_type == "QuantizeLinear" or (
                users[0].op_type == "Relu" and quantized_output(users[0])))

        rewrite: dict[str, int] = {}  # DQ output -> rank of the tensor it dequantizes (bias 1)
        for node in self.nodes:
            integer = from_dq(node.input[0]) and (node.op_type == "Gemm" or quantized_output(node))
            if node.op_type in ("Conv", "Gemm") and not integer:
                for index, rank in ((1, 4 if node.op_type == "Conv" else 2), (2, 1)):
                    if index < len(node.input) and from_dq(node.input[index]) and \
                            producer[node.input[index]].input[0] in inits:
                        rewrite[node.input[index]] = rank
        nodes, axes = [], {rank: self.const("axes", np.arange(1, rank, dtype=np.int64)) for rank in (2, 4)}
        for node in self.nodes:
            rank = rewrite.get(node.output[0]) if node.op_type == "DequantizeLinear" else None
            if rank is None:
                nodes.append(node)
                continue
            scale = node.input[1]
            if rank > 1:  # per output channel (axis 0): broadcast over the other axes
                self.count += 1
                scale_view = f"t{self.count}"
                nodes.append(helper.make_node("Unsqueeze", [scale, axes[rank]], [scale_view],
                                              name=f"{node.name}.scale"))
                scale = scale_view
            self.count += 1
            cast = f"t{self.count}"
            nodes.append(helper.make_node("Cast", [node.input[0]], [cast], name=f"{node.name}.cast",
                                          to=TensorProto.FLOAT))
            if inits[node.input[0]].data_type == TensorProto.UINT8:  # zero point 128 subtracted, see above
                self.count += 1
                nodes.append(helper.make_node("Sub", [cast, self.const("weight_zero", np.array(128, np.float32))],
                                              [f"t{self.count}"], name=f"{node.name}.zero"))
                cast = f"t{self.count}"
            nodes.append(helper.make_node("Mul", [cast, scale], [node.output[0]], name=node.name))
        self.nodes = nodes
        used = {name for node in nodes for name in node.input}
        self.inits = [t for t in self.inits if t.name in used]  # the DequantizeLinear zero points

    def prune(self, output: str) -> None:
        """Drop nodes nothing reads (left behind where a quantizer moved before a grid-preserving op)."""
        needed, kept = {output}, []
        for node in reversed(self.nodes):
            if any(o in needed for o in node.output):
                needed.update(node.input)
                kept.append(node)
        self.nodes = kept[::-1]
        self.inits = [t for t in self.inits if t.name in needed]


def _act_qparams(q: FakeQuantizer, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(float32 scale, uint8 zero point) of an activation quantizer, checked to fit onnxruntime's kernels."""
    if q.per_channel or q.symmetric or q.quant_min < 0 or q.quant_max > 255:
        raise ExportError(f"{where}: activations must be quantized per tensor on an unsigned grid [0, 2^b - 1] "
                          f"(got {q.extra_repr()}); use quant_mode='deploy'")
    if not q.calibrated:
        raise ExportError(f"{where}: the activation quantizer has no observed range; calibrate the student first")
    scale = used_scale(q.scale).reshape(())
    zero = torch.round(q.zero_point.detach().float()).clamp(q.quant_min, q.quant_max).reshape(())
    return scale.numpy().astype(np.float32), zero.numpy().astype(np.uint8)


def _quantize_act(g: _Graph, x: str, q: FakeQuantizer | None, where: str) -> str:
    """``x`` through a Q/DQ pair when ``q`` is set; returns the tensor name.  A grid narrower
    than uint8 (activations under 8 bits) is clamped on the integers, ``Q -> Clip -> DQ``: cheap, exact,
    and onnxruntime still fuses the Q into the producer and the DQ into the consumer.  When ``x`` came out
    of grid-preserving ops, the Q/DQ goes before them (and again after each: the same values), so the
    producer's output is integer, as onnxruntime's QLinear kernels need."""
    if q is None:
        return x
    key = (x, id(q))
    if key not in g.quantized:
        if x in g.passes:
            source, emit = g.passes[x]
            g.quantized[key] = _requantize(g, emit(_quantize_act(g, source, q, where)), q)
        else:
            g.quantized[key] = _requantize(g, x, q, where)
    return g.quantized[key]


def _requantize(g: _Graph, x: str, q: FakeQuantizer, where: str | None = None) -> str:
    """The Q/DQ pair of ``q`` on ``x`` (see ``_quantize_act``)."""
    where = where or q.name or x
    scale, zero = _act_qparams(q, where)
    s, z = g.const(f"{where}.scale", scale), g.const(f"{where}.zero_point", zero)
    quantized = g.op("QuantizeLinear", [x, s, z], f"{where}.q")
    if q.quant_min > 0 or q.quant_max < 255:
        quantized = g.op("Clip", [quantized, g.const(f"{where}.qmin", np.array(q.quant_min, np.uint8)),
                                  g.const(f"{where}.qmax", np.array(q.quant_max, np.uint8))], f"{where}.clip")
    out = g.op("DequantizeLinear", [quantized, s, z], f"{where}.dq")
    g.grid[out] = q
    return out


SAFE_INT8_BITS = 7  # |w| <= 63: two uint8 x int8 products never leave int16


def int8_container(m: nn.Conv2d | nn.Linear, int8_weights: bool) -> bool:
    """Whether the quantized weights of ``m`` are written as int8 (else uint8 with zero point 128): with
    ``int8_weights``, for depthwise convs (no pair sums) and for weights of ``SAFE_INT8_BITS`` or fewer."""
    depthwise = isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels
    return int8_weights or depthwise or m.weight_quant.num_bits <= SAFE_INT8_BITS


def uint8_weight_layers(proto: onnx.ModelProto) -> list[str]:
    """The layers of an exported file whose weights sit in uint8 containers (read from the file: a conv that
    runs in float has its weights as int8 constants whatever ``int8_container`` chose)."""
    inits = {t.name: t for t in proto.graph.initializer}
    return [node.name.rsplit(".weight_dq", 1)[0] for node in proto.graph.node
            if node.op_type == "DequantizeLinear" and node.input[0] in inits
            and inits[node.input[0]].data_type == TensorProto.UINT8 and len(inits[node.input[0]].dims) > 1]


def _weight_ints(layer: nn.Module, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(int weights as int64, per-output-channel float64 scales) of a quantized conv/linear."""
    q: FakeQuantizer = layer.weight_quant
    if not q.symmetric or not q.per_channel:
        raise ExportError(f"{where}: weights are quantized {q.extra_repr()}; int8 kernels need per-channel "
                          "symmetric weights (quant_mode='deploy', weight_symmetric=True)")
    if q.num_bits > 8:
        raise ExportError(f"{where}: {q.num_bits}-bit weights do not fit int8 containers")
    with torch.no_grad():
        fake = q(layer.weight.detach())  # exactly the student's quantized weight (and its current scale)
        scale = used_scale(q.scale).double()
        view = (-1,) + (1,) * (layer.weight.dim() - 1)
        ints = torch.round(fake.double() / scale.view(view)).clamp(q.quant_min, q.quant_max)
    return ints.long(), scale


def _bn_factors(bn: _BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BatchNorm as ``y = x * a + b`` per channel (float64)."""
    a = torch.rsqrt(bn.running_var.double() + bn.eps)
    if bn.affine:
        a = a * bn.weight.detach().double()
    b = -bn.running_mean.double() * a + (bn.bias.detach().double() if bn.affine else 0.0)
    return a, b


class _Exporter:
    """Walks the fx graph once, writing ONNX nodes; ``values`` maps fx nodes to ONNX tensor names."""

    def __init__(self, model: nn.Module, int8_weights: bool, native_prelu: bool) -> None:
        self.model, self.int8_weights, self.native_prelu = model, int8_weights, native_prelu
        self.modules = dict(model.named_modules())
        self.graph = _Tracer().trace(model)
        self.g = _Graph()
        self.values: dict[fx.Node, str] = {}
        self.folded: dict[fx.Node, _BatchNorm] = {}  # conv/linear node -> BN folded into it

    # ---- walking ----------------------------------------------------------------------------------
    def run(self) -> str:
        """The ONNX name of the model's output, once every node is written."""
        for node in self.graph.nodes:
            if node.op == "placeholder":
                self.values[node] = INPUT
            elif node.op == "output":
                return self.values[node.args[0]]
            elif node.op == "call_module":
                self.values[node] = self.module(node, self.modules[node.target])
            elif node.op in ("call_function", "call_method"):
                self.values[node] = self.function(node)
            else:
                raise ExportError(f"node {node.name}: {node.op} is not supported by the exporter")
        raise ExportError("the traced graph has no output")

    def arg(self, node: fx.Node, index: int = 0) -> str:
        return self.values[node.args[index]]

    def function(self, node: fx.Node) -> str:
        name = getattr(node.target, "__name__", str(node.target))
        if name == "flatten":
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            if start != 1:
                raise ExportError(f"node {node.name}: flatten(start_dim={start}) is not supported (only 1)")
            return self.g.passthrough(self.arg(node), lambda x: self.g.op("Flatten", [x], node.name, axis=1))
        raise ExportError(f"node {node.name}: {node.op} {name} has no ONNX export here; route it through a module")

    def module(self, node: fx.Node, m: nn.Module) -> str:
        where = node.target
        if isinstance(m, (nn.Identity, nn.Dropout)):
            return self.arg(node)
        if isinstance(m, _BatchNorm):
            return self.batchnorm(node, m)
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            return self.weighted(node, m)
        if isinstance(m, nn.PReLU):
            if isinstance(m, QuantPReLU) and (m.weight_quant or m.output_quant):
                raise ExportError(f"{where}: quantized PReLU slopes/outputs (quant_mode='quantface') have no integer "
                                  "kernel; export a quant_mode='deploy' student")
            x = _quantize_act(self.g, self.arg(node), getattr(m, "input_quant", None), f"{where}.input")
            slope = m.weight.detach().float()
            slope = slope.reshape((-1, 1, 1) if slope.numel() > 1 else (1,))
            if self.native_prelu:
                return self.g.op("PRelu", [x, self.g.const(f"{where}.slope", slope.numpy())], where)
            a = self.g.const(f"{where}.slope", slope.numpy())
            rest = self.g.op("Sub", [self.g.const("one", np.ones(1, np.float32)), a], f"{where}.rest")  # folded at load
            linear = self.g.op("Mul", [x, a], f"{where}.linear")
            positive = self.g.op("Mul", [self.g.op("Relu", [x], f"{where}.relu"), rest], f"{where}.positive")
            return self.g.op("Add", [linear, positive], where)
        if isinstance(m, (Add, Mul)):
            return self.binary(node, m)
        if isinstance(m, nn.Flatten):
            if m.start_dim != 1 or m.end_dim != -1:
                raise ExportError(f"{where}: Flatten({m.start_dim}, {m.end_dim}) is not supported (only 1, -1)")
            return self.g.passthrough(self.arg(node), lambda x: self.g.op("Flatten", [x], where, axis=1))
        if isinstance(m, nn.ZeroPad2d):
            left, right, top, bottom = m.padding
            return self.zero_pad(node, [0, 0, top, left, 0, 0, bottom, right])
        if isinstance(m, ChannelPad):
            return self.zero_pad(node, [0, 0, 0, 0, 0, m.extra, 0, 0]) if m.extra else self.arg(node)
        if isinstance(m, nn.AdaptiveAvgPool2d) and m.output_size in (1, (1, 1)):
            return self.g.op("GlobalAveragePool", [self.arg(node)], where)
        if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
            return self.pool(node, m)
        if isinstance(m, QuantReLU):
            out = self.g.op("Relu", [self.arg(node)], where)
            return _quantize_act(self.g, out, m.output_quant, f"{where}.output")
        simple = {nn.ReLU: "Relu", nn.Sigmoid: "Sigmoid"}
        if type(m) in simple:
            return self.g.op(simple[type(m)], [self.arg(node)], where)
        raise ExportError(f"{where}: {type(m).__name__} has no ONNX export here")

    # ---- layers -----------------------------------------------------------------------------------
    def batchnorm(self, node: fx.Node, bn: _BatchNorm) -> str:
        source = node.args[0]
        if self.folded.get(source) is bn:
            return self.values[source]  # folded into the conv/linear that produced it
        a, b = _bn_factors(bn)
        x = self.arg(node)
        if isinstance(bn, nn.BatchNorm2d) and x in self.g.grid:
            integer = self.integer_affine(node.target, x, a, b)
            if integer is not None:
                return integer
        shape = (-1, 1, 1) if isinstance(bn, nn.BatchNorm2d) else (-1,)
        scaled = self.g.op("Mul", [x, self.g.const(f"{node.target}.a",
                                                               a.float().numpy().reshape(shape))], node.target)
        return self.g.op("Add", [scaled, self.g.const(f"{node.target}.b", b.float().numpy().reshape(shape))],
                         node.target)

    def integer_affine(self, where: str, x: str, a: torch.Tensor, b: torch.Tensor) -> str | None:
        """A BatchNorm on a quantized tensor (iResNet's pre-activation ``bn1``/``bn2``, which no conv before
        it can absorb) as a depthwise 1x1 conv with int8 weights ``±127`` at channel scale ``|a| / 127``
        (exactly ``a``) and its shift as an int32 bias on that conv's grid ``s_in |a| / 127`` (off by at most
        half a step of that grid, 1/254 of an input step times ``|a|``): onnxruntime runs it as one integer
        ``QLinearConv`` where a float multiply-add needed a dequantize and a quantize around it.  None when
        a channel's shift does not fit int32 on its grid (a near-zero ``a``): then it stays float."""
        s_in = float(_act_qparams(self.g.grid[x], where)[0])
        scale = a.abs().clamp_min(1e-30) / 127.0
        bias = torch.round(b / (s_in * scale.float().double()))
        if bias.abs().max() >= 2 ** 31:
            return None
        channels, weight_scale = len(a), self.g.const(f"{where}.weight_scale", scale.float().numpy())
        w = self.g.op("DequantizeLinear", [
            self.g.const(f"{where}.weight", (127 * torch.sign(a)).to(torch.int8).numpy().reshape(channels, 1, 1, 1)),
            weight_scale], f"{where}.weight_dq", axis=0)
        bias_dq = self.g.int32_bias(where, bias.to(torch.int32).numpy(), s_in, weight_scale)
        return self.g.op("Conv", [x, w, bias_dq], where, kernel_shape=[1, 1], group=channels)

    def foldable_bn(self, node: fx.Node, m: nn.Module) -> _BatchNorm | None:
        """The BN that reads only this layer's output (and the layer has no output quantizer), else None."""
        if len(node.users) != 1 or getattr(m, "output_quant", None) is not None:
            return None
        user = next(iter(node.users))
        bn = self.modules.get(user.target) if user.op == "call_module" else None
        expected = nn.BatchNorm2d if isinstance(m, nn.Conv2d) else nn.BatchNorm1d
        if isinstance(bn, expected) and bn.running_mean is not None and bn.num_features == m.weight.shape[0]:
            return bn
        return None

    def weighted(self, node: fx.Node, m: nn.Conv2d | nn.Linear) -> str:
        where = node.target
        quantized = isinstance(m, (QuantConv2d, QuantLinear)) and m.weight_quant is not None
        x = _quantize_act(self.g, self.arg(node), getattr(m, "input_quant", None), f"{where}.input")
        a, shift = torch.ones(m.weight.shape[0], dtype=torch.float64), 0.0
        bn = self.foldable_bn(node, m)
        if bn is not None:
            a, shift = _bn_factors(bn)
            self.folded[node] = bn
        if quantized:
            w, weight_scale = self.weight(m, where, a)
        else:
            view = (-1,) + (1,) * (m.weight.dim() - 1)
            w = self.g.const(f"{where}.weight", (m.weight.detach().double() * a.view(view)).float().numpy())
        bias = m.effective_bias() if quantized else m.bias  # after self.weight: the weight scales are current
        bias = (torch.zeros_like(a) if bias is None else bias.detach().double()) * a + shift
        if quantized and m.quantize_bias:  # int32 bias at s_in * s_w, as the student and the kernel add it
            grid = (bias_scale(m).double() * a.abs()).float()
            ints = torch.round(bias / grid.double()).clamp(-2**31, 2**31 - 1).to(torch.int32).numpy()
            b = self.g.int32_bias(where, ints, float(input_scale(m)), weight_scale)
        else:
            b = self.g.const(f"{where}.bias", bias.float().numpy())
        if isinstance(m, nn.Conv2d):
            out = self.conv(node, m, x, w, b)
        else:
            out = self.g.op("Gemm", [x, w, b], where, transB=1)
        return _quantize_act(self.g, out, getattr(m, "output_quant", None), f"{where}.output")

    def weight(self, m: nn.Conv2d | nn.Linear, where: str, a: torch.Tensor) -> tuple[str, str]:
        """(DequantizeLinear of the stored integer weights, their channel scales): the BN factor ``a`` folded
        into the channel scales."""
        ints, scale = _weight_ints(m, where)
        view = (-1,) + (1,) * (m.weight.dim() - 1)
        ints, scale = ints * torch.sign(a).view(view).long(), scale * a.abs()  # BN folded exactly
        inputs = [None, self.g.const(f"{where}.weight_scale", scale.float().numpy())]
        if int8_container(m, self.int8_weights):
            inputs[0] = self.g.const(f"{where}.weight", ints.to(torch.int8).numpy())
            if isinstance(m, nn.Linear):  # onnxruntime fuses Gemm into QGemm only with an explicit zero point
                inputs.append(self.g.const(f"{where}.weight_zero", np.zeros(len(scale), np.int8)))
        else:
            inputs[0] = self.g.const(f"{where}.weight", (ints + 128).to(torch.uint8).numpy())
            inputs.append(self.g.const(f"{where}.weight_zero", np.full(len(scale), 128, np.uint8)))
        return self.g.op("DequantizeLinear", inputs, f"{where}.weight_dq", axis=0), inputs[1]

    def conv(self, node: fx.Node, m: nn.Conv2d, x: str, w: str, b: str) -> str:
        if m.padding_mode != "zeros" or isinstance(m.padding, str):
            raise ExportError(f"{node.target}: padding {m.padding!r} / {m.padding_mode} is not supported")
        ph, pw = m.padding
        return self.g.op("Conv", [x, w, b], node.target, kernel_shape=list(m.kernel_size), strides=list(m.stride),
                         pads=[ph, pw, ph, pw], dilations=list(m.dilation), group=m.groups)

    def zero_pad(self, node: fx.Node, pads: list[int]) -> str:
        def emit(x: str) -> str:
            return self.g.op("Pad", [x, self.g.const(f"{node.target}.pads", np.array(pads, dtype=np.int64))],
                             node.target, mode="constant")
        return self.g.passthrough(self.arg(node), emit)

    def pool(self, node: fx.Node, m: nn.MaxPool2d | nn.AvgPool2d) -> str:
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
            return self.g.op("AveragePool", [self.arg(node)], node.target, **attrs)
        return self.g.passthrough(self.arg(node), lambda x: self.g.op("MaxPool", [x], node.target, **attrs))

    def binary(self, node: fx.Node, m: Add | Mul) -> str:
        quantized = isinstance(m, (QuantAdd, QuantMul))
        inputs = []
        for index, name in enumerate(("input0_quant", "input1_quant")):
            q = getattr(m, name) if quantized else None
            inputs.append(_quantize_act(self.g, self.arg(node, index), q, f"{node.target}.input{index}"))
        out = self.g.op("Add" if isinstance(m, Add) else "Mul", inputs, node.target)
        return _quantize_act(self.g, out, m.output_quant if quantized else None, f"{node.target}.output")


def to_onnx(model: nn.Module, meta: dict[str, Any] | None = None, int8_weights: bool = False,
            native_prelu: bool = False) -> onnx.ModelProto:
    """The ONNX model of a float backbone or deploy-mode student (``model`` is not changed); see the module
    docstring for ``int8_weights`` and ``native_prelu``."""
    model = getattr(model, "module", model)
    spec = input_spec_of(model)
    student = any(True for _ in quant.quantizers(model))
    if student and (meta or {}).get("quant", {}).get("mode") == "quantface":
        raise ExportError("quant_mode='quantface' students (asymmetric weights, quantized PReLU) have no exact "
                          "int8 form; train a quant_mode='deploy' student to export it")
    observing = {q: q.observer_enabled for _, q in quant.quantizers(model)}
    quant.set_observers(model, False)  # the ranges are read, never moved, by the export
    try:
        with eval_mode(model), torch.no_grad():
            exporter = _Exporter(model, int8_weights, native_prelu)
            output = exporter.run()
    finally:
        for q, enabled in observing.items():
            q.observer_enabled = enabled
    g = exporter.g
    g.nodes.append(helper.make_node("Identity", [output], [OUTPUT], name=OUTPUT))
    g.prune(OUTPUT)
    g.float_kernels()
    graph = helper.make_graph(
        g.nodes, "quantface", [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", 3, spec.size,
                                                                                          spec.size])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", None])], g.inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="quantface")
    proto.ir_version = 8
    helper.set_model_props(proto, {SPEC_KEY: json.dumps(spec.to_dict()), META_KEY: json.dumps(meta or {})})
    onnx.checker.check_model(proto)
    return proto


def export_onnx(model: nn.Module, path: str | os.PathLike, meta: dict[str, Any] | None = None,
                int8_weights: bool = False, native_prelu: bool = False) -> Path:
    """Write ``to_onnx(model, meta, int8_weights, native_prelu)`` to ``path`` atomically."""
    return atomic_write_bytes(path, to_onnx(model, meta, int8_weights, native_prelu).SerializeToString())
