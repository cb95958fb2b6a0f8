"""Blocks of a quantized model, found from its torch.fx trace, each runnable on its own.

Block reconstruction fits one block at a time to the float model's output, so the model is cut where a
single tensor carries everything forward: after a node, when that node's output is the only value a later
node still reads.  In a residual network those cuts fall after every residual sum (never inside a block:
the shortcut keeps a second value alive); in a plain chain they fall after every layer.  The pieces
between cuts are merged, in order, until each holds ``min_layers`` quantized Conv2d/Linear layers, so a
chain of single layers is fitted a few layers at a time and a residual block as a whole.  Nothing is
looked up by backbone or module name.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import fx, nn

from quant.graph import _Tracer
from quant.layers import QuantWeighted
from utils.errors import InputError

_CONTAINERS = (nn.Module, nn.Sequential, nn.ModuleList, nn.ModuleDict)


class BlockError(InputError, ValueError):
    """The model cannot be cut into blocks (untraceable, several inputs or outputs); the message says why."""


class _QuantTracer(_Tracer):
    """Keeps every module built on a torch.nn layer (the quantized layers, frozen BatchNorms) as one call."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        layer_classes = (c for c in type(m).__mro__ if issubclass(c, nn.Module) and c not in _CONTAINERS)
        return super().is_leaf_module(m, qualname) or any(c.__module__.startswith("torch.nn") for c in layer_classes)


@dataclass
class Block:
    """One block: ``module`` maps the tensor at the previous cut to the tensor at this one; ``layers`` names
    its quantized Conv2d/Linear modules (the ones whose weight rounding is learned)."""

    name: str
    module: fx.GraphModule
    layers: list[str]


def _cuts(nodes: list[fx.Node]) -> list[int]:
    """Indices of the nodes after which exactly that node's output is live (the placeholder first)."""
    index = {node: i for i, node in enumerate(nodes)}
    last_use = {i: max((index[u] for u in node.users), default=i) for i, node in enumerate(nodes)
                if node.op != "get_attr"}
    cuts, open_values = [], set()
    for i, node in enumerate(nodes):
        if node.op == "output":
            break
        if i in last_use:
            open_values.add(i)
        open_values = {j for j in open_values if last_use[j] > i}
        if open_values == {i}:
            cuts.append(i)
    return cuts


def _segment(root: nn.Module, nodes: list[fx.Node], start: int, end: int) -> fx.GraphModule:
    """Nodes ``start+1 .. end`` as a module taking the value of node ``start`` and returning node ``end``'s."""
    graph = fx.Graph()
    env = {nodes[start]: graph.placeholder("x")}

    def arg(node: fx.Node) -> fx.Node:
        if node not in env:  # only constants (get_attr) come from before the cut
            env[node] = graph.node_copy(node)
        return env[node]

    for node in nodes[start + 1:end + 1]:
        env[node] = graph.node_copy(node, arg)
    graph.output(env[nodes[end]])
    return fx.GraphModule(root, graph)


def find_blocks(model: nn.Module, min_layers: int = 2) -> list[Block]:
    """``model`` (a quantized student) cut into consecutive blocks sharing its modules; composing the blocks'
    modules in order computes ``model``."""
    try:
        graph = _QuantTracer().trace(model)
    except Exception as exc:
        raise BlockError(f"torch.fx cannot trace {type(model).__name__} ({type(exc).__name__}: {exc}); block "
                         "reconstruction needs a traceable model (set reconstruct_iters=0)") from exc
    nodes = list(graph.nodes)
    if sum(node.op == "placeholder" for node in nodes) != 1:
        raise BlockError(f"{type(model).__name__}.forward takes several inputs; block reconstruction cuts models "
                         "of one input tensor")
    result = nodes[-1].args[0]
    if not isinstance(result, fx.Node):
        raise BlockError(f"{type(model).__name__}.forward returns {type(result).__name__}, not one tensor")
    cuts = _cuts(nodes)
    modules = dict(model.named_modules())

    def layers(start: int, end: int) -> list[str]:
        return [n.target for n in nodes[start + 1:end + 1] if n.op == "call_module"
                and isinstance(modules[n.target], QuantWeighted) and modules[n.target].weight_quant is not None]

    final, ends, start, end = nodes.index(result), [], cuts[0], None
    for cut in cuts[1:]:  # a block ends at the last cut before the layer that would be one too many
        if end is not None and len(layers(start, cut)) > len(layers(start, end)):
            ends.append(end)
            start, end = end, None
        if len(layers(start, cut)) >= min_layers or cut == final:
            end = cut
    if end != final:
        raise BlockError(f"{type(model).__name__}'s output is not a single value after its last cut")
    ends.append(end)
    starts = [cuts[0], *ends[:-1]]
    return [Block(_block_name(nodes[end]), _segment(model, nodes, start, end), layers(start, end))
            for start, end in zip(starts, ends)]


def _block_name(node: fx.Node) -> str:
    return str(node.target) if node.op == "call_module" else node.name
