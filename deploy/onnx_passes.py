"""Passes over a built graph: rewrites that depend on how onnxruntime will run the whole graph, which no
single layer's lowering can see."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from deploy.onnx_graph import Graph


def float_kernels(g: Graph) -> None:
    """Write the weights and biases of the convs and linears onnxruntime runs in float as ``Mul(Cast(q),
    scale)``, which it folds into float32 initializers at load (the file keeps its integers).  As a
    ``DequantizeLinear`` they would run at every call and block the float fusions (a PReLU's multiply folded
    into the conv).  A uint8 container keeps its zero point, ``Mul(Sub(Cast(q), 128), scale)``, so OpenVINO
    keeps such a conv in float instead of its u8 x s8 kernels, which saturate with 8-bit weights."""
    rewrite = _float_weight_dqs(g)
    inits = {t.name: t for t in g.inits}
    nodes, axes = [], {rank: g.const("axes", np.arange(1, rank, dtype=np.int64)) for rank in (2, 4)}
    for node in g.nodes:
        rank = rewrite.get(node.output[0]) if node.op_type == "DequantizeLinear" else None
        if rank is None:
            nodes.append(node)
        else:
            nodes.extend(_as_arithmetic(g, node, rank, axes[rank] if rank > 1 else "",
                                        inits[node.input[0]].data_type == TensorProto.UINT8))
    g.nodes = nodes
    used = {name for node in nodes for name in node.input}
    g.inits = [t for t in g.inits if t.name in used]  # the DequantizeLinear zero points


def _float_weight_dqs(g: Graph) -> dict[str, int]:
    """The weight and bias ``DequantizeLinear`` outputs of the convs and linears onnxruntime runs in float,
    each with the rank of the tensor it dequantizes (bias 1).  onnxruntime fuses ``DQ -> Conv -> Q`` (a ReLU
    between folded) into ``QLinearConv`` and ``DQ -> Gemm`` into ``QGemm``; a conv with a float input, a
    float output or two quantizers reading its output runs as a float ``Conv``."""
    producer = {out: node for node in g.nodes for out in node.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in g.nodes:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    inits = {t.name for t in g.inits}

    def from_dq(name: str) -> bool:
        return name in producer and producer[name].op_type == "DequantizeLinear"

    def quantized_output(node: onnx.NodeProto) -> bool:  # one reader, a quantize (a ReLU folded before it)
        users = readers.get(node.output[0], [])
        return len(users) == 1 and (users[0].op_type == "QuantizeLinear" or (
            users[0].op_type == "Relu" and quantized_output(users[0])))

    rewrite: dict[str, int] = {}
    for node in g.nodes:
        integer = from_dq(node.input[0]) and (node.op_type == "Gemm" or quantized_output(node))
        if node.op_type in ("Conv", "Gemm") and not integer:
            for index, rank in ((1, 4 if node.op_type == "Conv" else 2), (2, 1)):
                if index < len(node.input) and from_dq(node.input[index]) and \
                        producer[node.input[index]].input[0] in inits:
                    rewrite[node.input[index]] = rank
    return rewrite


def _as_arithmetic(g: Graph, dq: onnx.NodeProto, rank: int, axes: str, uint8: bool) -> list[onnx.NodeProto]:
    """``dq`` as ``Mul(Cast(q), scale)`` (``Sub`` of the zero point 128 for a uint8 container), writing the
    same output tensor; a per-channel scale (``rank > 1``) is unsqueezed over ``axes`` to broadcast."""
    nodes, scale = [], dq.input[1]
    if rank > 1:  # per output channel (axis 0): broadcast over the other axes
        scale_view = g.fresh()
        nodes.append(helper.make_node("Unsqueeze", [scale, axes], [scale_view], name=f"{dq.name}.scale"))
        scale = scale_view
    cast = g.fresh()
    nodes.append(helper.make_node("Cast", [dq.input[0]], [cast], name=f"{dq.name}.cast", to=TensorProto.FLOAT))
    if uint8:
        g.count += 1  # then the constant: the Sub's output takes the constant's number, as files always had
        zero = g.const("weight_zero", np.array(128, np.float32))
        shifted = f"t{g.count}"
        nodes.append(helper.make_node("Sub", [cast, zero], [shifted], name=f"{dq.name}.zero"))
        cast = shifted
    nodes.append(helper.make_node("Mul", [cast, scale], [dq.output[0]], name=dq.name))
    return nodes
