"""ONNX face models as float PyTorch models: ``teacher=model.onnx``.

``read_onnx_graph`` turns the graph into the plain description of ``backbones.onnx_graph`` (Conv2d,
Linear, BatchNorm, PReLU, Add, ... modules) and its weights; an op outside ``SUPPORTED`` is one error
naming the node.  ``map_onto_backbone`` then puts those weights into one of this project's backbones
(a graph that arcface_torch's ``torch2onnx`` exported from its iResNet or MobileFaceNet), unit by unit:
the layers are matched in execution order, a BatchNorm the exporter folded into its conv comes back as
that conv's weights plus an identity BatchNorm carrying the bias, and the result must compute what the
graph computes (checked on a random batch).  Graphs that map onto no backbone stay ``onnx_graph``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import torch
from onnx import numpy_helper, shape_inference
from torch import nn

from backbones.converted import write_converted
from backbones.onnx_graph import OnnxGraphNet
from backbones.registry import get_model
from backbones.spec import ARCFACE, InputSpec
from utils.checkpoint import CheckpointError, load_state_strict

SUPPORTED = ("Conv", "BatchNormalization", "PRelu", "Relu", "Sigmoid", "Add", "Mul", "Gemm", "MatMul", "Flatten",
             "Reshape", "GlobalAveragePool", "MaxPool", "AveragePool", "Pad", "Identity", "Dropout", "Constant")
CONVERTER_VERSION = 1
MAP_TOLERANCE = 1e-4  # max |backbone - graph| relative to the output's max magnitude


class OnnxImportError(CheckpointError):
    """The ONNX file cannot become a PyTorch model; the message names the file and the node."""


def load_onnx(path: str | os.PathLike) -> onnx.ModelProto:
    """The checked ONNX model in ``path`` (a truncated or foreign file is one clear error)."""
    path = Path(path)
    if not path.is_file():
        raise OnnxImportError(f"ONNX model not found: {path}")
    try:
        model = onnx.load(str(path))
    except Exception as exc:
        raise OnnxImportError(f"cannot read {path} as an ONNX model ({type(exc).__name__}); is it truncated or "
                              "not an .onnx file?") from exc
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise OnnxImportError(f"{path} is not a valid ONNX model: {str(exc).splitlines()[0]}") from exc
    return model


class _GraphReader:
    """One pass over the ONNX nodes, writing the ``onnx_graph`` description and its state_dict."""

    def __init__(self, model: onnx.ModelProto, source: str) -> None:
        self.source = source
        graph = shape_inference.infer_shapes(model).graph
        self.consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        self.shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]  # 0: a dimension not known
                       for v in [*graph.input, *graph.value_info, *graph.output] if v.type.tensor_type.HasField("shape")}
        inputs = [v.name for v in graph.input if v.name not in self.consts]
        if len(inputs) != 1 or len(graph.output) != 1:
            raise OnnxImportError(f"{source}: the graph has inputs {inputs} and {len(graph.output)} outputs; a face "
                                  "model has one image input and one embedding output")
        self.alias = {inputs[0]: "input"}
        self.input_shape = self.shapes.get(inputs[0], [])
        self.graph, self.nodes, self.state = graph, [], {}
        self.output = graph.output[0].name

    def value(self, name: str, node: onnx.NodeProto) -> str:
        if name in self.consts:
            raise OnnxImportError(f"{self.source}: node '{node.name}' ({node.op_type}) takes the constant '{name}' "
                                  "where a computed tensor is expected; only weights may be constants here")
        return self.alias.get(name, name)

    def const(self, name: str, node: onnx.NodeProto) -> np.ndarray:
        if name not in self.consts:
            raise OnnxImportError(f"{self.source}: node '{node.name}' ({node.op_type}) computes its weight '{name}' "
                                  "at run time; only constant weights are supported")
        return self.consts[name]

    def emit(self, node: onnx.NodeProto, op: str, inputs: list[str], attrs: dict[str, Any],
             params: dict[str, np.ndarray] | None = None, output: str | None = None) -> str:
        name = f"{op}{len(self.nodes)}"
        out = output or node.output[0]
        self.nodes.append({"op": op, "name": name, "inputs": inputs, "output": out, "attrs": attrs})
        for key, array in (params or {}).items():
            self.state[f"layers.{name}.{key}"] = torch.from_numpy(np.array(array, dtype=np.float32))
        return out

    def run(self) -> None:
        handlers: dict[str, Callable[[onnx.NodeProto, dict[str, Any]], None]] = {
            "Conv": self.conv, "BatchNormalization": self.batchnorm, "PRelu": self.prelu, "Gemm": self.gemm,
            "MatMul": self.matmul, "Reshape": self.reshape, "Flatten": self.flatten, "Pad": self.pad,
            "MaxPool": self.pool, "AveragePool": self.pool}
        simple = {"Relu": "relu", "Sigmoid": "sigmoid", "GlobalAveragePool": "global_avgpool", "Add": "add",
                  "Mul": "mul"}
        for node in self.graph.node:
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            if node.op_type == "Constant":
                self.consts[node.output[0]] = numpy_helper.to_array(attrs["value"])
            elif node.op_type in ("Identity", "Dropout"):
                source = node.input[0]
                if source in self.consts:
                    self.consts[node.output[0]] = self.consts[source]
                else:
                    self.alias[node.output[0]] = self.value(source, node)
            elif node.op_type in simple:
                self.emit(node, simple[node.op_type], [self.value(i, node) for i in node.input], {})
            elif node.op_type in handlers:
                handlers[node.op_type](node, attrs)
            else:
                raise OnnxImportError(f"{self.source}: node '{node.name}' is a {node.op_type}, which has no PyTorch "
                                      f"layer here (supported: {', '.join(SUPPORTED)})")
        self.output = self.alias.get(self.output, self.output)

    # ---- ops ----------------------------------------------------------------------------------------
    def conv(self, node: onnx.NodeProto, a: dict[str, Any]) -> None:
        weight = self.const(node.input[1], node)
        bias = self.const(node.input[2], node) if len(node.input) > 2 and node.input[2] else None
        if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID") or weight.ndim != 4:
            raise OnnxImportError(f"{self.source}: node '{node.name}': only 2-D convolutions with explicit pads")
        top, left, bottom, right = a.get("pads", [0, 0, 0, 0])
        x = self.value(node.input[0], node)
        if (top, left) != (bottom, right):  # asymmetric: pad first, as TensorFlow-style SAME does
            x = self.emit(node, "pad", [x], {"padding": [left, right, top, bottom]}, output=f"{node.output[0]}:pad")
            top = left = 0
        groups = int(a.get("group", 1))
        attrs = {"in_channels": int(weight.shape[1] * groups), "out_channels": int(weight.shape[0]),
                 "kernel": list(weight.shape[2:]), "stride": list(a.get("strides", [1, 1])), "padding": [top, left],
                 "dilation": list(a.get("dilations", [1, 1])), "groups": groups, "bias": bias is not None}
        self.emit(node, "conv", [x], attrs, {"weight": weight, **({"bias": bias} if bias is not None else {})})

    def batchnorm(self, node: onnx.NodeProto, a: dict[str, Any]) -> None:
        scale, shift, mean, var = (self.const(i, node) for i in node.input[1:5])
        rank = len(self.shapes[node.input[0]]) if node.input[0] in self.shapes else None
        if rank not in (2, 4):
            raise OnnxImportError(f"{self.source}: node '{node.name}': BatchNormalization of a rank-{rank} tensor")
        self.emit(node, "batchnorm2d" if rank == 4 else "batchnorm1d", [self.value(node.input[0], node)],
                  {"features": int(scale.size), "eps": float(a.get("epsilon", 1e-5))},
                  {"weight": scale, "bias": shift, "running_mean": mean, "running_var": var})
        self.state[f"layers.{self.nodes[-1]['name']}.num_batches_tracked"] = torch.tensor(0)

    def prelu(self, node: onnx.NodeProto, a: dict[str, Any]) -> None:
        slope = self.const(node.input[1], node).reshape(-1)
        self.emit(node, "prelu", [self.value(node.input[0], node)], {"channels": int(slope.size)}, {"weight": slope})

    def _linear(self, node: onnx.NodeProto, weight: np.ndarray, bias: np.ndarray | None) -> None:
        attrs = {"in_features": int(weight.shape[1]), "out_features": int(weight.shape[0]), "bias": bias is not None}
        self.emit(node, "linear", [self.value(node.input[0], node)], attrs,
                  {"weight": weight, **({"bias": bias} if bias is not None else {})})

    def gemm(self, node: onnx.NodeProto, a: dict[str, Any]) -> None:
        if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
            raise OnnxImportError(f"{self.source}: node '{node.name}': Gemm with transA/alpha/beta is not supported")
        weight = self.const(node.input[1], node)
        weight = weight if a.get("transB", 0) else weight.T
        bias = self.const(node.input[2], node).reshape(-1) if len(node.input) > 2 and node.input[2] else None
        self._linear(node, weight, bias)

    def matmul(self, node: onnx.NodeProto, a: dict[str, Any]) -> None:
        self._linear(node, self.const(node.input[1], node).T, None)

    def flatten(self, node: onnx.NodeProto, a: dict[str, Any]) -> None:
        if a.get("axis", 1) != 1:
            raise OnnxImportError(f"{self.source}: node '{node.name}': Flatten(axis={a.get('axis')}) (only axis 1)")
        self.emit(node, "flatten", [self.value(node.input[0], node)], {})

    def reshape(self, node: onnx.NodeProto, a: dict[str, Any]) -> None:
        """Only the embedding's [N, C, 1, 1] -> [N, C] (or any [N, ...] -> [N, -1]): a flatten per sample."""
        target = [int(v) for v in self.const(node.input[1], node).reshape(-1)]
        shape = self.shapes.get(node.input[0], [])
        per_sample = int(np.prod(shape[1:])) if len(shape) > 1 and all(shape[1:]) else None
        batch = shape[0] if shape else None
        if len(target) != 2 or target[0] not in (-1, 0, batch) or target[1] not in (-1, per_sample):
            raise OnnxImportError(f"{self.source}: node '{node.name}': Reshape {shape} -> {target} is not a flatten "
                                  "of each sample (the only Reshape supported)")
        self.emit(node, "flatten", [self.value(node.input[0], node)], {})

    def pad(self, node: onnx.NodeProto, a: dict[str, Any]) -> None:
        pads = [int(v) for v in (self.const(node.input[1], node) if len(node.input) > 1 else a.get("pads", []))]
        value = float(self.const(node.input[2], node)) if len(node.input) > 2 and node.input[2] else 0.0
        mode = a.get("mode", b"constant")
        if len(pads) != 8 or any(pads[i] for i in (0, 1, 4, 5)) or value != 0.0 or mode != b"constant" or min(pads) < 0:
            raise OnnxImportError(f"{self.source}: node '{node.name}': Pad {pads} {mode!r} value {value} (only zero "
                                  "padding of height and width)")
        self.emit(node, "pad", [self.value(node.input[0], node)], {"padding": [pads[3], pads[7], pads[2], pads[6]]})

    def pool(self, node: onnx.NodeProto, a: dict[str, Any]) -> None:
        top, left, bottom, right = a.get("pads", [0, 0, 0, 0])
        if (top, left) != (bottom, right) or a.get("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID"):
            raise OnnxImportError(f"{self.source}: node '{node.name}': {node.op_type} with asymmetric padding")
        kernel = list(a["kernel_shape"])
        attrs = {"kind": "max" if node.op_type == "MaxPool" else "avg", "kernel": kernel,
                 "stride": list(a.get("strides", [1, 1])), "padding": [top, left], "ceil": bool(a.get("ceil_mode", 0)),
                 "count_include_pad": bool(a.get("count_include_pad", 0))}
        self.emit(node, "pool", [self.value(node.input[0], node)], attrs)


def read_onnx_graph(path: str | os.PathLike, spec: InputSpec = ARCFACE
                    ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(network_kwargs, state_dict)`` of the ``onnx_graph`` backbone computing the file's graph."""
    reader = _GraphReader(load_onnx(path), str(path))
    reader.run()
    side = reader.input_shape[2:] if len(reader.input_shape) == 4 else []
    if side and all(side) and side != [spec.size, spec.size]:
        raise OnnxImportError(f"{path}: the graph takes {side[0]}x{side[1]} images, the input spec says "
                              f"{spec.size}x{spec.size}")
    weighted = [n for n in reader.nodes if n["op"] in ("conv", "linear")]
    if not weighted:
        raise OnnxImportError(f"{path}: the graph has no convolution or linear layer; not a face model")
    last = weighted[-1]["attrs"]
    kwargs = {"nodes": reader.nodes, "input_spec": spec.to_dict(), "output": reader.output,
              "num_features": int(last.get("out_channels", last.get("out_features"))), "source": Path(path).name}
    return kwargs, reader.state


# ---- onto a backbone of this project ----------------------------------------------------------------
_UNIT_TYPES = (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm, nn.PReLU)


def _units(model: nn.Module, side: int) -> list[tuple[str, nn.Module, str | None, nn.Module | None]]:
    """Parametric layers in execution order, a BatchNorm right after the conv/linear whose output it takes
    paired with it: ``(name, layer, bn_name, bn)``."""
    names = {m: n for n, m in model.named_modules()}
    calls: list[tuple[nn.Module, torch.Tensor, torch.Tensor]] = []  # tensors kept alive: ids stay unique
    hooks = [m.register_forward_hook(lambda m, i, o: calls.append((m, i[0], o)))
             for m in model.modules() if isinstance(m, _UNIT_TYPES)]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, side, side))
    finally:
        for hook in hooks:
            hook.remove()
    units: list[tuple[str, nn.Module, str | None, nn.Module | None]] = []
    produced_by = {}
    for module, source, out in calls:
        is_bn = isinstance(module, nn.modules.batchnorm._BatchNorm)
        prev = produced_by.get(id(source))
        if is_bn and isinstance(prev, (nn.Conv2d, nn.Linear)) and units[-1][1] is prev and units[-1][3] is None:
            units[-1] = (units[-1][0], prev, names[module], module)
        else:
            units.append((names[module], module, None, None))
        produced_by[id(out)] = module
    return units


def _describe(layer: nn.Module) -> str:
    return f"{type(layer).__name__}{tuple(layer.weight.shape)}"


def _fill(state: dict[str, torch.Tensor], name: str, layer: nn.Module, bn_name: str | None, bn: nn.Module | None,
          g_layer: nn.Module, g_bn: nn.Module | None, where: str) -> None:
    """Copy one graph unit into one backbone unit (see the module docstring for the BatchNorm cases)."""
    if type(layer) is not type(g_layer) or layer.weight.shape != g_layer.weight.shape:
        raise OnnxImportError(f"{where}: the graph's {_describe(g_layer)} does not match backbone layer '{name}' "
                              f"{_describe(layer)} (another variant? set network_kwargs, e.g. mbf's {{'scale': 1}})")
    weight = g_layer.weight.detach().clone()
    bias = getattr(g_layer, "bias", None)
    bias = bias.detach().clone() if bias is not None else torch.zeros(weight.shape[0])
    if isinstance(layer, nn.PReLU) or isinstance(layer, nn.modules.batchnorm._BatchNorm):
        for key, value in g_layer.state_dict().items():
            state[f"{name}.{key}"] = value.clone()
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):  # same function under the backbone's eps
            state[f"{name}.running_var"] = g_layer.running_var + g_layer.eps - layer.eps
        return
    if g_bn is not None and bn is None:  # fold the graph's BN into the backbone's conv
        scale = g_bn.weight / torch.sqrt(g_bn.running_var + g_bn.eps)
        weight = weight * scale.view(-1, *[1] * (weight.dim() - 1))
        bias = (bias - g_bn.running_mean) * scale + g_bn.bias
        g_bn = None
    state[f"{name}.weight"] = weight
    if layer.bias is not None:
        state[f"{name}.bias"] = bias
    elif bn is None and bias.abs().max() > 0:
        raise OnnxImportError(f"{where}: the graph's {_describe(g_layer)} has a bias, backbone layer '{name}' none")
    if bn is None:
        return
    prefix = f"{bn_name}."
    if g_bn is not None:
        for key, value in g_bn.state_dict().items():
            state[prefix + key] = value.clone()
        state[prefix + "running_var"] = g_bn.running_var + g_bn.eps - bn.eps
        if layer.bias is None:  # the graph conv's own bias moves into the BN's mean
            state[prefix + "running_mean"] = g_bn.running_mean - bias
        return
    channels = weight.shape[0]  # the exporter folded this BN into the conv: an identity BN adds the bias
    state.update({prefix + "weight": torch.full((channels,), float(np.sqrt(1.0 + bn.eps))),
                  prefix + "bias": bias if layer.bias is None else torch.zeros(channels),
                  prefix + "running_mean": torch.zeros(channels), prefix + "running_var": torch.ones(channels),
                  prefix + "num_batches_tracked": torch.tensor(0)})


def map_onto_backbone(kwargs: dict[str, Any], state: dict[str, torch.Tensor], network: str, source: str,
                      network_kwargs: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(network_kwargs, state_dict)`` of backbone ``network`` (built with ``network_kwargs``, e.g. ``scale``)
    computing the graph ``read_onnx_graph`` read."""
    graph = load_state_strict(OnnxGraphNet(**kwargs), state, source)
    backbone_kwargs = {**(network_kwargs or {}), "num_features": kwargs["num_features"]}
    backbone = get_model(network, **backbone_kwargs)
    side = backbone.input_spec.size
    ours, theirs = _units(backbone, side), _units(graph, side)
    if len(ours) != len(theirs):
        raise OnnxImportError(f"{source}: the graph has {len(theirs)} conv/linear/BatchNorm/PReLU units, backbone "
                              f"'{network}' has {len(ours)}; it was not exported from a {network}")
    mapped: dict[str, torch.Tensor] = {}
    for index, ((name, layer, bn_name, bn), (g_name, g_layer, _, g_bn)) in enumerate(zip(ours, theirs)):
        _fill(mapped, name, layer, bn_name, bn, g_layer, g_bn, f"{source}: unit {index} ('{g_name}')")
    load_state_strict(backbone, mapped, source)
    torch.manual_seed(0)
    probe = torch.randn(2, 3, side, side)
    with torch.no_grad():
        expected, got = graph.eval()(probe), backbone.eval()(probe)
    error = float((expected - got).abs().max() / expected.abs().max().clamp_min(1e-12))
    if error > MAP_TOLERANCE:
        raise OnnxImportError(f"{source}: the weights map onto '{network}' layer by layer, but the result differs "
                              f"from the graph by {error:.2e} (relative); the graph is wired differently. Use "
                              "network='onnx_graph' to take it as it is")
    return backbone_kwargs, mapped


def onnx_checkpoint(path: str | os.PathLike, network: str | None = None, spec: InputSpec = ARCFACE,
                    network_kwargs: dict[str, Any] | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(state_dict, meta)`` of the float model in an ONNX file, as ``utils.checkpoint.read_checkpoint``
    gives for a checkpoint: mapped onto ``network``, or an ``onnx_graph`` when ``network`` is None or
    'onnx_graph'."""
    kwargs, state = read_onnx_graph(path, spec)
    meta: dict[str, Any] = {"network": "onnx_graph", "network_kwargs": kwargs, "input_spec": spec.to_dict(),
                            "embedding_size": kwargs["num_features"], "source": Path(path).name}
    if network not in (None, "", "onnx_graph"):
        meta["network_kwargs"], state = map_onto_backbone(kwargs, state, network, str(path), network_kwargs)
        meta["network"] = network
    return state, meta



def write_onnx_checkpoint(onnx_path: str | os.PathLike, out_path: str | os.PathLike, spec: InputSpec,
                          network: str | None = None) -> Path:
    """Convert ``onnx_path`` (see ``onnx_checkpoint``) and save it as a project checkpoint with its provenance."""
    state, meta = onnx_checkpoint(onnx_path, network, spec)
    return write_converted(out_path, state, meta["network"], meta["embedding_size"], onnx_path, CONVERTER_VERSION,
                           meta["network_kwargs"])
