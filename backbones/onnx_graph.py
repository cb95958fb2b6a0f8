"""``onnx_graph``: a face network given as an ONNX graph, rebuilt from torch modules quant/ can quantize.

The network is described by plain data (``nodes``: op, module name, inputs, output, attributes), so a
checkpoint stores it in its metadata like any constructor keyword, and the weights in the state_dict
like any backbone.  Every parametric op is a torch layer (Conv2d, Linear, BatchNorm, PReLU) and every
sum a ``backbones.layers.Add``, so quant/ wraps it without knowing where it came from.  The reader that
turns an ``.onnx`` file into this description is ``backbones.onnx_import``.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn

from backbones.layers import Add, Mul
from backbones.spec import InputSpec


def _conv(a: Mapping[str, Any]) -> nn.Module:
    return nn.Conv2d(a["in_channels"], a["out_channels"], tuple(a["kernel"]), tuple(a["stride"]),
                     tuple(a["padding"]), tuple(a["dilation"]), a["groups"], bias=a["bias"])


def _pool(a: Mapping[str, Any]) -> nn.Module:
    if a["kind"] == "max":
        return nn.MaxPool2d(tuple(a["kernel"]), tuple(a["stride"]), tuple(a["padding"]), ceil_mode=a["ceil"])
    return nn.AvgPool2d(tuple(a["kernel"]), tuple(a["stride"]), tuple(a["padding"]), ceil_mode=a["ceil"],
                        count_include_pad=a["count_include_pad"])


_BUILDERS = {
    "conv": _conv,
    "linear": lambda a: nn.Linear(a["in_features"], a["out_features"], bias=a["bias"]),
    "batchnorm2d": lambda a: nn.BatchNorm2d(a["features"], eps=a["eps"]),
    "batchnorm1d": lambda a: nn.BatchNorm1d(a["features"], eps=a["eps"]),
    "prelu": lambda a: nn.PReLU(a["channels"]),
    "relu": lambda a: nn.ReLU(),
    "sigmoid": lambda a: nn.Sigmoid(),
    "add": lambda a: Add(),
    "mul": lambda a: Mul(),
    "flatten": lambda a: nn.Flatten(),
    "global_avgpool": lambda a: nn.AdaptiveAvgPool2d(1),
    "pool": _pool,
    "pad": lambda a: nn.ZeroPad2d(tuple(a["padding"])),  # (left, right, top, bottom)
}
OPS = tuple(_BUILDERS)


class OnnxGraphNet(nn.Module):
    """Runs ``nodes`` in order on the input; ``layers.<name>`` holds each node's module."""

    def __init__(self, nodes: Sequence[Mapping[str, Any]], input_spec: Mapping[str, Any], output: str,
                 num_features: int | None = None, source: str = "") -> None:
        super().__init__()
        self.input_spec = InputSpec.from_dict(input_spec)
        self.layers = nn.ModuleDict()
        self.steps: list[tuple[str, tuple[str, ...], str]] = []
        for node in nodes:
            if node["op"] not in _BUILDERS:
                raise ValueError(f"onnx_graph: unknown op '{node['op']}' in node {node['name']} (known: {OPS})")
            self.layers[node["name"]] = _BUILDERS[node["op"]](node.get("attrs", {}))
            self.steps.append((node["name"], tuple(node["inputs"]), node["output"]))
        self.output, self.source = output, source
        weighted = [m for m in self.layers.values() if isinstance(m, (nn.Linear, nn.Conv2d))]
        last = weighted[-1].weight.shape[0] if weighted else None
        if num_features is not None and last != num_features:
            raise ValueError(f"onnx_graph {source}: the graph's last layer gives {last} features, not {num_features}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values = {"input": x}
        for name, inputs, output in self.steps:
            values[output] = self.layers[name](*[values[i] for i in inputs])
        return values[self.output]


def onnx_graph(nodes: Sequence[Mapping[str, Any]], input_spec: Mapping[str, Any], output: str,
               num_features: int | None = None, source: str = "") -> OnnxGraphNet:
    return OnnxGraphNet(nodes, input_spec, output, num_features, source)
