"""Convert the pretrained MobileFaceNet TFLite graph into a ``mfn_tflite`` checkpoint of this project.

The graph is read with the ``tflite`` flatbuffer package (no TensorFlow).  It is walked op by op and
every convolution is matched, in execution order, to a ``ConvAct`` of ``backbones.mfn_tflite``: kernel
shape, depthwise or not, stride, padding and whether a PReLU follows are all checked, so a graph that
does not have exactly this architecture is refused with the op index that differs.  PReLU appears in
the graph as ``relu(x) + c * (x - |x|)``, i.e. PReLU with slope ``2c``.  Weight tensors may be float32,
float16 or int8 (directly or behind a DEQUANTIZE op); they are converted to float32.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import tflite

from backbones.layers import Add
from backbones.converted import write_converted
from backbones.mfn_tflite import ConvAct, mfn_tflite
from utils.checkpoint import load_state_strict
from utils.errors import InputError

CONVERTER_VERSION = 2  # 2: metadata records the model's input spec instead of input_mean / input_std
NETWORK = "mfn_tflite"
_OP_NAMES = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}
_NUMPY_TYPES = {tflite.TensorType.FLOAT32: np.float32, tflite.TensorType.FLOAT16: np.float16,
                tflite.TensorType.INT8: np.int8, tflite.TensorType.UINT8: np.uint8,
                tflite.TensorType.INT32: np.int32}


class TFLiteImportError(InputError, ValueError):
    """The .tflite file is not the expected graph; the message names the op and what differs."""


@dataclass
class GraphConv:
    """One CONV_2D / DEPTHWISE_CONV_2D of the graph with its weights in PyTorch layout."""

    op_index: int
    weight: np.ndarray        # OIHW; depthwise: [C, 1, H, W]
    bias: np.ndarray
    depthwise: bool
    stride: int
    same: bool
    prelu: np.ndarray | None  # PReLU slopes when a PReLU follows


class TFLiteGraph:
    """Read access to subgraph 0 of a .tflite flatbuffer: ops, tensors, constants and consumers."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.buf = path.read_bytes()
        if self.buf[4:8] != b"TFL3":
            raise TFLiteImportError(f"{path} is not a TFLite model (no 'TFL3' file identifier)")
        self.model = tflite.Model.GetRootAsModel(self.buf, 0)
        if self.model.SubgraphsLength() != 1:
            raise TFLiteImportError(f"{path} has {self.model.SubgraphsLength()} subgraphs; expected one")
        self.graph = self.model.Subgraphs(0)
        self.ops = [self.graph.Operators(i) for i in range(self.graph.OperatorsLength())]
        self.producer: dict[int, int] = {}
        self.consumers: dict[int, list[int]] = {}
        for index, op in enumerate(self.ops):
            for tensor in op.OutputsAsNumpy().tolist():
                self.producer[tensor] = index
            for tensor in op.InputsAsNumpy().tolist():
                self.consumers.setdefault(tensor, []).append(index)

    def op_name(self, index: int) -> str:
        code = self.model.OperatorCodes(self.ops[index].OpcodeIndex())
        return _OP_NAMES.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "CUSTOM")

    def inputs(self, index: int) -> list[int]:
        return self.ops[index].InputsAsNumpy().tolist()

    def output(self, index: int) -> int:
        return int(self.ops[index].OutputsAsNumpy()[0])

    def options(self, index: int, kind: type) -> object:
        opts = kind()
        table = self.ops[index].BuiltinOptions()
        opts.Init(table.Bytes, table.Pos)
        return opts

    def constant(self, tensor_index: int) -> np.ndarray:
        """A constant tensor as float32, dequantizing float16/int8 data and following DEQUANTIZE ops."""
        tensor = self.graph.Tensors(tensor_index)
        shape = tuple(tensor.ShapeAsNumpy().tolist()) if tensor.ShapeLength() else ()
        data = self.model.Buffers(tensor.Buffer()).DataAsNumpy()
        if isinstance(data, np.ndarray) and data.size:
            dtype = _NUMPY_TYPES.get(tensor.Type())
            if dtype is None:
                raise TFLiteImportError(f"{self.path}: tensor {tensor.Name().decode()} has unsupported type "
                                        f"{tensor.Type()}")
            values = np.frombuffer(data.tobytes(), dtype=dtype).reshape(shape)
            quant = tensor.Quantization()
            if dtype in (np.int8, np.uint8) and quant is not None and quant.ScaleLength():
                scale, zero = quant.ScaleAsNumpy(), quant.ZeroPointAsNumpy()
                axis = quant.QuantizedDimension()
                view = [1] * values.ndim
                view[axis] = -1
                if scale.size > 1:
                    scale, zero = scale.reshape(view), zero.reshape(view)
                return ((values.astype(np.float32) - zero) * scale).astype(np.float32)
            return values.astype(np.float32)
        producer = self.producer.get(tensor_index)
        if producer is not None and self.op_name(producer) == "DEQUANTIZE":
            return self.constant(self.inputs(producer)[0])
        raise TFLiteImportError(f"{self.path}: tensor {tensor.Name().decode()} is not a constant")

    def prelu_after(self, tensor_index: int) -> tuple[np.ndarray, set[int]] | None:
        """If ``relu(x) + c*(x-|x|)`` follows tensor ``x``: (slopes ``2c``, the five op indices); else None."""
        users = self.consumers.get(tensor_index, [])
        if sorted(self.op_name(u) for u in users) != ["ABS", "RELU", "SUB"]:
            return None
        sub = next(u for u in users if self.op_name(u) == "SUB")
        relu = next(u for u in users if self.op_name(u) == "RELU")
        mul = self.consumers[self.output(sub)][0]
        add = self.consumers[self.output(mul)][0]
        if self.op_name(mul) != "MUL" or self.op_name(add) != "ADD" or self.output(relu) not in self.inputs(add):
            raise TFLiteImportError(f"{self.path}: op {sub}: unrecognised activation pattern after a conv")
        const = next(t for t in self.inputs(mul) if t != self.output(sub))
        return 2.0 * self.constant(const), {*users, mul, add}


def read_graph_convs(path: str | os.PathLike) -> tuple[list[GraphConv], int]:
    """Every convolution of the graph in execution order, and the number of residual sums."""
    graph = TFLiteGraph(Path(path))
    convs, residual_adds, prelu_ops = [], 0, set()
    for index in range(len(graph.ops)):
        name = graph.op_name(index)
        if index in prelu_ops or name in ("RESHAPE", "DEQUANTIZE"):
            continue
        if name == "ADD":
            residual_adds += 1
            continue
        if name not in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            raise TFLiteImportError(f"{path}: op {index} is {name}, which this converter does not handle")
        depthwise = name == "DEPTHWISE_CONV_2D"
        opts = graph.options(index, tflite.DepthwiseConv2DOptions if depthwise else tflite.Conv2DOptions)
        if opts.FusedActivationFunction() != tflite.ActivationFunctionType.NONE:
            raise TFLiteImportError(f"{path}: op {index} ({name}) has a fused activation; not expected")
        if opts.DilationHFactor() != 1 or opts.DilationWFactor() != 1 or opts.StrideH() != opts.StrideW():
            raise TFLiteImportError(f"{path}: op {index} ({name}) has dilation or unequal strides")
        if depthwise and opts.DepthMultiplier() != 1:
            raise TFLiteImportError(f"{path}: op {index}: depth multiplier {opts.DepthMultiplier()} != 1")
        inputs = graph.inputs(index)
        weight = graph.constant(inputs[1])  # conv OHWI, depthwise 1HWC
        weight = weight.transpose(3, 0, 1, 2) if depthwise else weight.transpose(0, 3, 1, 2)
        bias = graph.constant(inputs[2]) if len(inputs) > 2 and inputs[2] >= 0 else np.zeros(weight.shape[0])
        prelu = graph.prelu_after(graph.output(index))
        if prelu is not None:
            prelu_ops |= prelu[1]
        convs.append(GraphConv(index, np.ascontiguousarray(weight, dtype=np.float32), bias.astype(np.float32),
                               depthwise, opts.StrideH(), opts.Padding() == tflite.Padding.SAME,
                               None if prelu is None else prelu[0].astype(np.float32)))
    return convs, residual_adds


def _check_layer(path: Path, name: str, module: ConvAct, conv: GraphConv) -> None:
    mine = module.conv
    problems = []
    if tuple(mine.weight.shape) != conv.weight.shape:
        problems.append(f"weight {tuple(conv.weight.shape)} vs {tuple(mine.weight.shape)}")
    if (mine.groups > 1) != conv.depthwise:
        problems.append(f"depthwise {conv.depthwise} vs groups {mine.groups}")
    if mine.stride[0] != conv.stride:
        problems.append(f"stride {conv.stride} vs {mine.stride[0]}")
    if mine.kernel_size[0] > 1 and conv.same != module.same:
        problems.append(f"padding {'SAME' if conv.same else 'VALID'} vs {'SAME' if module.same else 'VALID'}")
    if (conv.prelu is not None) != isinstance(module.act, torch.nn.PReLU):
        problems.append(f"PReLU after it: graph {conv.prelu is not None}, "
                        f"model {isinstance(module.act, torch.nn.PReLU)}")
    if problems:
        raise TFLiteImportError(f"{path}: op {conv.op_index} does not match layer '{name}': " + "; ".join(problems))


def convert_tflite(tflite_path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The ``mfn_tflite`` state_dict holding the weights of the TFLite graph (architecture checked)."""
    path = Path(tflite_path)
    convs, residual_adds = read_graph_convs(path)
    if not convs:
        raise TFLiteImportError(f"{path}: the graph has no convolutions")
    model = mfn_tflite(num_features=convs[-1].weight.shape[0])
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, ConvAct)]
    adds = sum(isinstance(m, Add) for m in model.modules())
    if len(layers) != len(convs) or adds != residual_adds:
        raise TFLiteImportError(f"{path}: the graph has {len(convs)} convolutions and {residual_adds} residual "
                                f"sums, mfn_tflite has {len(layers)} and {adds}; it is a different network")
    state = {}
    for (name, module), conv in zip(layers, convs):
        _check_layer(path, name, module, conv)
        state[f"{name}.conv.weight"] = torch.from_numpy(conv.weight.copy())
        state[f"{name}.conv.bias"] = torch.from_numpy(conv.bias.copy())
        if conv.prelu is not None:
            state[f"{name}.act.weight"] = torch.from_numpy(conv.prelu.copy())
    load_state_strict(model, state, str(path))  # every parameter of the model is covered
    return state


def write_teacher_checkpoint(tflite_path: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """Convert ``tflite_path`` and save it as a project checkpoint (meta: network, input spec, source)."""
    state = convert_tflite(tflite_path)
    return write_converted(out_path, state, NETWORK, state["features.conv.bias"].numel(), tflite_path,
                           CONVERTER_VERSION)
