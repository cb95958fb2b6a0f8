"""The ONNX graph being written: fresh tensor names, initializers, nodes, the Q/DQ pairs of activation
quantizers, and pruning.  Kept apart from the lowerings so every layer writes nodes the same way (the
names and their order are what makes two exports of one model byte-identical)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from quant.quantizer import FakeQuantizer, used_scale
from utils.errors import InputError

OPSET = 17
INPUT, OUTPUT = "input", "embedding"
SPEC_KEY, META_KEY = "quantface.input_spec", "quantface.meta"


class ExportError(InputError, ValueError):
    """The model (or one layer of it) cannot be exported exactly; the message names it and what to change."""


@dataclass
class Graph:
    """Nodes, initializers and a counter for fresh tensor names, plus what the Q/DQ placement must remember."""

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

    def fresh(self) -> str:
        """A new tensor name for a node written by hand (the passes)."""
        self.count += 1
        return f"t{self.count}"

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
        """``DequantizeLinear`` of an int32 bias on the grid ``s_in * s_w``.  The grid is a product of scales
        already in the file (onnxruntime folds it at load) rather than more bytes a channel; zero point 0."""
        scale = self.op("Mul", [self.const(f"{where}.input_scale", np.array(s_in, np.float32)), weight_scale],
                        f"{where}.bias_scale")
        return self.op("DequantizeLinear", [self.const(f"{where}.bias", ints), scale], f"{where}.bias_dq", axis=0)

    def passthrough(self, x: str, emit: Callable[[str], str]) -> str:
        """A grid-preserving op (``Q(op(x)) == op(Q(x))``: zero padding, max pooling, flattening) on ``x``.
        On a quantized ``x`` the output is put back on the same grid so onnxruntime runs the op on integers;
        otherwise it is remembered, so a quantizer after it can move before it."""
        out = emit(x)
        if x in self.grid:
            return requantize(self, out, self.grid[x])
        self.passes[out] = (x, emit)
        return out

    def prune(self, output: str) -> None:
        """Drop nodes nothing reads (left behind where a quantizer moved before a grid-preserving op)."""
        needed, kept = {output}, []
        for node in reversed(self.nodes):
            if any(o in needed for o in node.output):
                needed.update(node.input)
                kept.append(node)
        self.nodes = kept[::-1]
        self.inits = [t for t in self.inits if t.name in needed]


def act_qparams(q: FakeQuantizer, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(float32 scale, uint8 zero point) of an activation quantizer, checked to fit onnxruntime's kernels."""
    if q.per_channel or q.symmetric or q.quant_min < 0 or q.quant_max > 255:
        raise ExportError(f"{where}: activations must be quantized per tensor on an unsigned grid [0, 2^b - 1] "
                          f"(got {q.extra_repr()}); use quant_mode='deploy'")
    if not q.calibrated:
        raise ExportError(f"{where}: the activation quantizer has no observed range; calibrate the student first")
    scale = used_scale(q.scale).reshape(())
    zero = torch.round(q.zero_point.detach().float()).clamp(q.quant_min, q.quant_max).reshape(())
    return scale.numpy().astype(np.float32), zero.numpy().astype(np.uint8)


def quantize_act(g: Graph, x: str, q: FakeQuantizer | None, where: str) -> str:
    """``x`` through the Q/DQ pair of ``q`` (unchanged when ``q`` is None).  When ``x`` came out of
    grid-preserving ops the pair goes before them (and again after each: the same values), so the producer's
    output is integer, as onnxruntime's QLinear kernels need."""
    if q is None:
        return x
    key = (x, id(q))
    if key not in g.quantized:
        if x in g.passes:
            source, emit = g.passes[x]
            g.quantized[key] = requantize(g, emit(quantize_act(g, source, q, where)), q)
        else:
            g.quantized[key] = requantize(g, x, q, where)
    return g.quantized[key]


def requantize(g: Graph, x: str, q: FakeQuantizer, where: str | None = None) -> str:
    """The Q/DQ pair of ``q`` on ``x``.  A grid narrower than uint8 is clamped on the integers
    (``Q -> Clip -> DQ``): exact, and onnxruntime still fuses the Q and DQ into their neighbours."""
    where = where or q.name or x
    scale, zero = act_qparams(q, where)
    s, z = g.const(f"{where}.scale", scale), g.const(f"{where}.zero_point", zero)
    quantized = g.op("QuantizeLinear", [x, s, z], f"{where}.q")
    if q.quant_min > 0 or q.quant_max < 255:
        quantized = g.op("Clip", [quantized, g.const(f"{where}.qmin", np.array(q.quant_min, np.uint8)),
                                  g.const(f"{where}.qmax", np.array(q.quant_max, np.uint8))], f"{where}.clip")
    out = g.op("DequantizeLinear", [quantized, s, z], f"{where}.dq")
    g.grid[out] = q
    return out
