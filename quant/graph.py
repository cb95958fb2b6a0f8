"""Who feeds whom: a torch.fx trace of the float model, read for BN folding and quantizer placement.

The trace treats ``backbones.layers.Add``/``Mul`` (and torch's own layers) as leaves, so every residual sum
is one ``call_module`` node named by its module path.  Backbones that cannot be traced (data-dependent
Python control flow) still quantize: placement then assumes no input is already quantized, and BN
folding reports that it needs a traceable model.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import fx, nn

from backbones.layers import Add, ChannelPad, Mul

log = logging.getLogger(__name__)

# ops that only rearrange values, so a quantized tensor stays on its grid through them
_PASS_FUNCTIONS = {torch.flatten, torch.reshape}
_PASS_METHODS = {"flatten", "reshape", "view", "contiguous"}
# zero padding and max pooling keep values on their grid too (0 is on every affine grid; max picks a value)
_PASS_MODULES = (nn.Identity, nn.Flatten, nn.ZeroPad2d, nn.MaxPool2d, ChannelPad)


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (Add, Mul)) or super().is_leaf_module(m, qualname)


@dataclass
class ModelGraph:
    """The traced graph plus the module table it refers to."""

    graph: fx.Graph
    modules: dict[str, nn.Module]

    def calls(self) -> list[fx.Node]:
        return [n for n in self.graph.nodes if n.op == "call_module"]

    @cached_property
    def call_sites(self) -> dict[str, list[fx.Node]]:
        """Every ``call_module`` node, grouped by module name."""
        sites: dict[str, list[fx.Node]] = {}
        for node in self.calls():
            sites.setdefault(node.target, []).append(node)
        return sites

    def source(self, node: fx.Node) -> fx.Node:
        """The node that produced ``node``'s values, looking through pure reshapes and identities."""
        while True:
            if node.op == "call_function" and node.target in _PASS_FUNCTIONS:
                node = node.args[0]
            elif node.op == "call_method" and node.target in _PASS_METHODS:
                node = node.args[0]
            elif node.op == "call_module" and isinstance(self.modules[node.target], _PASS_MODULES):
                node = node.args[0]
            else:
                return node

    def consumers(self, name: str) -> list[str | None]:
        """Modules taking module ``name``'s output (looking through pure reshapes and identities); None for
        any other use (a function, the graph output)."""
        found: list[str | None] = []
        todo = [user for node in self.call_sites.get(name, []) for user in node.users]
        while todo:
            user = todo.pop()
            if self.source(user) is not user:  # a pass-through op: its users read the same values
                todo.extend(user.users)
            else:
                found.append(user.target if user.op == "call_module" else None)
        return found

    def input_sources(self, name: str) -> list[list[str | None]]:
        """For module ``name``: per positional input, the module names producing it at each call site."""
        sources: list[list[str | None]] = []
        for node in self.call_sites.get(name, []):
            for i, arg in enumerate(node.args):
                if not isinstance(arg, fx.Node):
                    continue
                src = self.source(arg)
                while len(sources) <= i:
                    sources.append([])
                sources[i].append(src.target if src.op == "call_module" else None)
        return sources


def trace(model: nn.Module) -> ModelGraph | None:
    """Trace ``model``; ``None`` (with a logged reason) when it is not symbolically traceable."""
    try:
        graph = _Tracer().trace(model)
    except Exception as exc:  # any tracing failure means "analyse conservatively", not "fail"
        log.warning("torch.fx cannot trace %s (%s: %s); quantizing every layer input conservatively",
                    type(model).__name__, type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
        return None
    return ModelGraph(graph, dict(model.named_modules()))
