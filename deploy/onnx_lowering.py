"""From a torch.fx trace to ONNX nodes: a registry from layer type to the function that lowers it, and the
walk that calls them.  A registry (as onnxruntime's quantization tools map op types to handlers) lets each
layer's lowering live next to its helpers, and a subclass (``QuantConv2d``) reach its base's lowering
unless it registers its own."""
from __future__ import annotations

from typing import Callable, TypeVar

from torch import fx, nn
from torch.nn.modules.batchnorm import _BatchNorm

from backbones.layers import Add, ChannelPad, Mul
from deploy.onnx_graph import INPUT, ExportError, Graph
from quant.quantizer import FakeQuantizer

Lowering = Callable[["Exporter", fx.Node, nn.Module], str]
F = TypeVar("F", bound=Lowering)
LOWERINGS: dict[type, Lowering] = {}
EXACT: set[type] = set()  # types whose lowering does not reach their subclasses


def lowers(*types: type, subclasses: bool = True) -> Callable[[F], F]:
    """Register the decorated function as the lowering of ``types`` and, unless ``subclasses`` is False, of
    their subclasses (False where a subclass may compute something else: ``ReLU6`` is an ``nn.ReLU``)."""
    def register(fn: F) -> F:
        for t in types:
            LOWERINGS[t] = fn
            if not subclasses:
                EXACT.add(t)
        return fn
    return register


def lowering_for(m: nn.Module) -> Lowering | None:
    """The lowering registered for the nearest class in ``type(m)``'s MRO that covers ``m``, or None."""
    return next((LOWERINGS[cls] for cls in type(m).__mro__
                 if cls in LOWERINGS and (cls not in EXACT or cls is type(m))), None)


class Tracer(fx.Tracer):
    """Every torch layer, quantized layer, Add/Mul and FakeQuantizer is one node (never traced into)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (nn.Conv2d, nn.Linear, nn.PReLU, nn.ReLU, _BatchNorm, Add, Mul, ChannelPad, FakeQuantizer)) or \
            super().is_leaf_module(m, qualname)


class Exporter:
    """Walks the fx graph once, writing ONNX nodes; ``values`` maps fx nodes to ONNX tensor names."""

    def __init__(self, model: nn.Module, int8_weights: bool, native_prelu: bool) -> None:
        self.model, self.int8_weights, self.native_prelu = model, int8_weights, native_prelu
        self.modules = dict(model.named_modules())
        self.graph = Tracer().trace(model)
        self.g = Graph()
        self.values: dict[fx.Node, str] = {}
        self.folded: dict[fx.Node, _BatchNorm] = {}  # conv/linear node -> BN folded into it

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
        """The ONNX tensor of the node's ``index``-th argument."""
        return self.values[node.args[index]]

    def function(self, node: fx.Node) -> str:
        """A function call in the trace: only ``flatten(x, 1)`` has an export (layers go through modules)."""
        name = getattr(node.target, "__name__", str(node.target))
        if name == "flatten":
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            if start != 1:
                raise ExportError(f"node {node.name}: flatten(start_dim={start}) is not supported (only 1)")
            return self.g.passthrough(self.arg(node), lambda x: self.g.op("Flatten", [x], node.name, axis=1))
        raise ExportError(f"node {node.name}: {node.op} {name} has no ONNX export here; route it through a module")

    def module(self, node: fx.Node, m: nn.Module) -> str:
        """A layer in the trace, through its registered lowering."""
        lower = lowering_for(m)
        if lower is None:
            raise ExportError(f"{node.target}: {type(m).__name__} has no ONNX export here")
        return lower(self, node, m)
