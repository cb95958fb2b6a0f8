"""Export a float backbone or a deploy-mode quantized student to ONNX, node by node from its torch.fx trace.

A float model becomes an fp32 graph.  A quantized student becomes a QDQ graph that computes what its fake
quantizers compute: uint8 per-tensor activations (``QuantizeLinear -> DequantizeLinear``), per-channel
symmetric integer weights behind a ``DequantizeLinear``, int32 biases at ``s_in * s_w``, BatchNorm folded
exactly.  ``int8_weights`` stores all 8-bit weights as int8 (for VNNI / ARM dot-product targets; else dense
8-bit weights are uint8 with zero point 128, exact on every CPU); ``native_prelu`` writes ``PRelu`` instead
of ``a*x + (1-a)*relu(x)``.  docs/deployment.md explains both choices.

The pieces: ``deploy.onnx_graph`` builds the graph, ``deploy.onnx_lowering`` walks the trace and looks up
each layer's lowering (``deploy.onnx_layers``, ``deploy.onnx_weighted``), ``deploy.onnx_passes`` rewrites
the built graph.  The input is the *normalised* image batch (dynamic batch size); the model's ``InputSpec``
travels in the ONNX metadata (``quantface.input_spec``) so the runtime normalises as the student did.
What cannot be exported exactly is an ``ExportError`` naming the layer and what to do.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import onnx
import torch
from onnx import TensorProto, helper
from torch import nn

import quant
from backbones.spec import input_spec_of
from deploy import onnx_layers  # noqa: F401  (registers the lowerings of the layers without weights)
from deploy.onnx_graph import INPUT, META_KEY, OPSET, OUTPUT, SPEC_KEY, ExportError
from deploy.onnx_lowering import Exporter
from deploy.onnx_passes import float_kernels
from deploy.onnx_weighted import SAFE_INT8_BITS, int8_container
from utils.fileio import atomic_write_bytes
from utils.modes import eval_mode

__all__ = ["INPUT", "META_KEY", "OPSET", "OUTPUT", "SAFE_INT8_BITS", "SPEC_KEY", "ExportError", "export_onnx",
           "int8_container", "to_onnx", "uint8_weight_layers"]


def uint8_weight_layers(proto: onnx.ModelProto) -> list[str]:
    """The layers of an exported file whose weights sit in uint8 containers (read from the file: a conv that
    runs in float has its weights as int8 constants whatever ``int8_container`` chose)."""
    inits = {t.name: t for t in proto.graph.initializer}
    return [node.name.rsplit(".weight_dq", 1)[0] for node in proto.graph.node
            if node.op_type == "DequantizeLinear" and node.input[0] in inits
            and inits[node.input[0]].data_type == TensorProto.UINT8 and len(inits[node.input[0]].dims) > 1]


def _lower(model: nn.Module, int8_weights: bool, native_prelu: bool) -> Exporter:
    """Walk the model with its observers off: the export reads the ranges and must never move them."""
    observing = {q: q.observer_enabled for _, q in quant.quantizers(model)}
    quant.set_observers(model, False)
    try:
        with eval_mode(model), torch.no_grad():
            exporter = Exporter(model, int8_weights, native_prelu)
            output = exporter.run()
    finally:
        for q, enabled in observing.items():
            q.observer_enabled = enabled
    exporter.g.nodes.append(helper.make_node("Identity", [output], [OUTPUT], name=OUTPUT))
    return exporter


def to_onnx(model: nn.Module, meta: dict[str, Any] | None = None, int8_weights: bool = False,
            native_prelu: bool = False) -> onnx.ModelProto:
    """The ONNX model of a float backbone or deploy-mode student (``model`` is not changed); see the module
    docstring for ``int8_weights`` and ``native_prelu``."""
    model = getattr(model, "module", model)
    spec = input_spec_of(model)
    student = any(True for _ in quant.quantizers(model))
    placement = quant.QuantConfig.from_dict(meta["quant"]) if (meta or {}).get("quant") else None
    if student and placement is not None and placement.quant_mode == "quantface":
        raise ExportError("quant_mode='quantface' students (asymmetric weights, quantized PReLU) have no exact "
                          "int8 form; train a quant_mode='deploy' student to export it")
    g = _lower(model, int8_weights, native_prelu).g
    g.prune(OUTPUT)
    float_kernels(g)
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
