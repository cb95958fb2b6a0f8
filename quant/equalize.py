"""Channel equalisation: rescale channels between adjacent layers so one per-tensor range fits them all.

A per-tensor activation quantizer wastes its levels when a few channels are far larger than the
rest (typical of networks whose BatchNorm was folded into the convolutions, such as the pretrained
MobileFaceNet of the demo: a few channels of one layer input range far wider than the others, which stay
near zero; its range is in docs/quantization.md).  For a chain
``producer -> [PReLU | ReLU | zero padding | identity] -> consumer`` in which the producer's output feeds
nothing else, dividing the producer's output channel ``i`` by ``s_i`` and multiplying the consumer's input
channel ``i`` by ``s_i`` leaves the network's function unchanged, because those in-between operations
are positively homogeneous per channel (``prelu(x/s) = prelu(x)/s`` for ``s > 0``).  ``s_i`` follows
SmoothQuant: ``s_i = sqrt(a_i / w_i)`` (normalised), balancing the activation range ``a_i`` observed on
calibration data against the consumer's weight range ``w_i``; for a depthwise consumer (weights quantized
per channel, so its weight range costs nothing) the activation ranges are made equal outright.

Producers: Conv2d, Linear, BatchNorm (their ``weight[i]`` and ``bias[i]`` scale).  Consumers: Conv2d
(ungrouped or depthwise) and Linear.  The model is found by tracing (``quant.graph``); nothing is
known about any particular backbone.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import fx, nn

from quant.batches import batch_input
from quant.graph import trace
from utils.modes import eval_mode

_HOMOGENEOUS = (nn.PReLU, nn.ReLU, nn.ZeroPad2d, nn.Identity, nn.Dropout)
_PRODUCERS = (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.BatchNorm1d)


def _is_depthwise(conv: nn.Module) -> bool:
    return isinstance(conv, nn.Conv2d) and conv.groups == conv.in_channels and conv.groups > 1


def _consumer_ok(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, nn.Conv2d) and (module.groups == 1 or _is_depthwise(module))


def find_chains(model: nn.Module) -> list[tuple[str, list[str], str]]:
    """``(producer, in-between modules, consumer)`` names of every chain that can be rescaled exactly."""
    graph = trace(model)
    if graph is None:
        return []
    chains = []
    for node in graph.calls():
        consumer = graph.modules[node.target]
        if type(consumer) not in (nn.Conv2d, nn.Linear) or not _consumer_ok(consumer):
            continue
        if len(graph.call_sites[node.target]) != 1 or not node.args or not isinstance(node.args[0], fx.Node):
            continue
        between, current = [], node.args[0]
        while (current.op == "call_module" and isinstance(graph.modules[current.target], _HOMOGENEOUS)
               and len(current.users) == 1 and len(graph.call_sites[current.target]) == 1):
            module = graph.modules[current.target]
            if isinstance(module, nn.ZeroPad2d) and module.value != 0:
                break
            between.append(current.target)
            current = current.args[0]
        if current.op != "call_module" or len(current.users) != 1:
            continue
        producer = graph.modules[current.target]
        if type(producer) not in _PRODUCERS or len(graph.call_sites[current.target]) != 1:
            continue
        if getattr(producer, "weight", None) is None:
            continue
        channels = producer.weight.shape[0]
        consumer_in = consumer.in_channels if isinstance(consumer, nn.Conv2d) else consumer.in_features
        prelus = [graph.modules[n] for n in between if isinstance(graph.modules[n], nn.PReLU)]
        if consumer_in != channels or any(p.num_parameters not in (1, channels) for p in prelus):
            continue
        chains.append((current.target, between[::-1], node.target))
    return chains


def _input_ranges(model: nn.Module, consumers: list[str], batches: Iterable[torch.Tensor],
                  max_batches: int) -> dict[str, torch.Tensor]:
    """Per input channel, the largest absolute value each consumer sees on the calibration batches."""
    ranges: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def record(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            x = inputs[0].detach()
            dims = [d for d in range(x.dim()) if d != 1] if x.dim() > 2 else [0]
            value = x.abs().amax(dim=dims)
            ranges[name] = value if name not in ranges else torch.maximum(ranges[name], value)
        return record

    handles = [model.get_submodule(name).register_forward_pre_hook(hook(name)) for name in consumers]
    device = next(model.parameters()).device
    try:
        with eval_mode(model), torch.no_grad():
            for i, batch in enumerate(batches):
                if i >= max_batches:
                    break
                model(batch_input(batch).to(device))
    finally:
        for handle in handles:
            handle.remove()
    if not ranges:
        raise ValueError("equalize() got no calibration batches")
    return ranges


@torch.no_grad()
def equalize(model: nn.Module, batches: Iterable[torch.Tensor], max_batches: int = 4,
             alpha: float = 0.5) -> list[str]:
    """Rescale every exact chain of the float ``model`` in place; returns the consumer names rescaled.

    The model computes the same function afterwards (to float rounding).  Call it before
    ``quantize_model``; ``batches`` (input tensors) give the activation ranges.
    """
    chains = find_chains(model)
    if not chains:
        return []
    ranges = _input_ranges(model, [c for _, _, c in chains], batches, max_batches)
    for producer_name, between, consumer_name in chains:
        producer, consumer = model.get_submodule(producer_name), model.get_submodule(consumer_name)
        act = ranges[consumer_name].float().clamp_min(1e-8)
        if _is_depthwise(consumer):
            scale = act / act.max()
        else:
            weight = consumer.weight.detach().abs().transpose(0, 1).reshape(act.numel(), -1).amax(1)
            scale = act.pow(alpha) / weight.clamp_min(1e-8).pow(1 - alpha)
            scale = scale / scale.max()
        alive = ranges[consumer_name] > 1e-6
        scale = torch.where(alive, scale.clamp_min(1e-4), torch.ones_like(scale)).to(producer.weight.dtype)
        shape = (-1,) + (1,) * (producer.weight.dim() - 1)
        producer.weight.div_(scale.view(shape))
        if getattr(producer, "bias", None) is not None:
            producer.bias.div_(scale)
        if _is_depthwise(consumer):
            per_group = consumer.out_channels // consumer.groups
            consumer.weight.mul_(scale.repeat_interleave(per_group).view(-1, 1, 1, 1))
        else:
            consumer.weight.mul_(scale.view((1, -1) + (1,) * (consumer.weight.dim() - 2)))
    return [c for _, _, c in chains]
