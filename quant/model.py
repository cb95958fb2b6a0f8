"""``quantize_model``: place quantizers on a copy of a float model, generically, by module type."""
from __future__ import annotations

import copy
import fnmatch
from dataclasses import dataclass
from typing import Iterator

from torch import fx, nn
from torch.nn.modules.batchnorm import _BatchNorm

from quant.bn import fold_batchnorms, freeze_batchnorms
from quant.config import QuantConfig, is_float_bits
from quant.graph import ModelGraph, trace
from quant.layers import QUANT_CLASSES, QuantWeighted, attach_quantizers
from quant.quantizer import FakeQuantizer, act_quantizer, weight_quantizer
from backbones.layers import Add, Mul
from utils.errors import InputError


# deploy mode: a grouped conv with fewer input channels per group than this (not depthwise) reads a float
# input: onnxruntime's integer kernel for it is slower than the float one at groups of 2 channels and no faster
# at 8 (docs/deployment.md, What decides the speed, (5) Grouped convs)
MIN_INTEGER_GROUP_CHANNELS = 4


def _narrow_groups(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and 1 < m.groups < m.in_channels and m.in_channels // m.groups < \
        MIN_INTEGER_GROUP_CHANNELS


def _read_by_float_prelus(graph: ModelGraph, name: str) -> bool:
    """Whether every reader of module ``name``'s output (through BatchNorms) is a PReLU (whose input the
    default deploy placement leaves float): then onnxruntime runs that conv in float whatever its input."""
    users = graph.consumers(name)
    return bool(users) and all(
        u is not None and (isinstance(graph.modules[u], nn.PReLU) or (
            isinstance(graph.modules[u], _BatchNorm) and _read_by_float_prelus(graph, u))) for u in users)


class QuantizeError(InputError, ValueError):
    """The model or the placement settings cannot be quantized as asked; the message says why."""


@dataclass
class _Plan:
    """Which tensors of one module get quantizers, and at which bit widths."""

    weight_bits: int
    act_bits: int
    weight: bool = False
    inputs: tuple[bool, ...] = ()
    output: bool = False
    bias_source: str | None = None  # deploy: the quantized Add/Mul whose output is this layer's (quantized) input


def quantizers(model: nn.Module) -> Iterator[tuple[str, FakeQuantizer]]:
    """Every fake quantizer in ``model`` with its dotted name."""
    for name, module in model.named_modules():
        if isinstance(module, FakeQuantizer):
            yield name, module


def layer_bits(names: list[str], qcfg: QuantConfig) -> dict[str, tuple[int, int]]:
    """``(weight_bits, act_bits)`` per module name: defaults, overridden by ``qcfg.layer_bits`` (last match wins)."""
    bits = {name: (qcfg.weight_bits, qcfg.act_bits) for name in names}
    for pattern, (w_bits, a_bits) in qcfg.layer_bits.items():
        matched = [name for name in names if fnmatch.fnmatchcase(name, pattern)]
        if not matched:
            raise QuantizeError(
                f"layer_bits pattern {pattern!r} matches no quantizable module; patterns are fnmatch globs on "
                f"dotted module names such as {', '.join(names[:3])}, ..., {names[-1]} ({len(names)} modules)")
        for name in matched:
            bits[name] = (w_bits, a_bits)
    return bits


def _plan(model: nn.Module, graph: ModelGraph | None, qcfg: QuantConfig) -> dict[str, _Plan]:
    """Placement per module name (the two modes are described in the ``quant`` package docstring)."""
    targets = {name: m for name, m in model.named_modules() if type(m) in QUANT_CLASSES}
    if not targets:
        raise QuantizeError(f"{type(model).__name__} has no Conv2d, Linear, PReLU, ReLU or backbones.layers Add/Mul "
                            "to quantize")
    plans = {name: _Plan(*bits) for name, bits in layer_bits(list(targets), qcfg).items()}
    for name, plan in plans.items():
        module, acts = targets[name], not is_float_bits(plan.act_bits)
        binary, relu = isinstance(module, (Add, Mul)), isinstance(module, nn.ReLU)
        plan.inputs = (False, False) if binary else () if relu else (False,)
        plan.output = acts and (binary or (relu and qcfg.quant_mode == "deploy"))
        if isinstance(module, nn.PReLU):  # QuantFace: slope and output; deploy: float (or its input quantized)
            plan.weight = plan.output = acts and qcfg.quant_mode == "quantface"
        else:
            plan.weight = not (binary or relu) and not is_float_bits(plan.weight_bits)
    if qcfg.quant_mode == "deploy":
        for name, plan in plans.items():
            users = graph.consumers(name) if graph is not None else []
            if not users or is_float_bits(plan.act_bits):
                continue
            if isinstance(targets[name], (Add, Mul)) and all(  # read only by ReLUs: theirs is its int8 output
                    u in plans and isinstance(targets[u], nn.ReLU) and plans[u].output for u in users):
                plan.output = False
        quantized = {name for name, plan in plans.items() if plan.output}
        for name, plan in plans.items():
            if (isinstance(targets[name], nn.PReLU) and not qcfg.quantize_prelu_input) or is_float_bits(plan.act_bits):
                continue
            if _narrow_groups(targets[name]) or (qcfg.float_conv_inputs and graph is not None and isinstance(
                    targets[name], (nn.Conv2d, nn.Linear)) and _read_by_float_prelus(graph, name)):
                plan.inputs = (False,)
                continue
            sources = graph.input_sources(name) if graph is not None else []
            plan.inputs = tuple(not (i < len(sources) and all(s in quantized for s in sources[i]))
                                for i in range(len(plan.inputs)))
            if plan.weight and not plan.inputs[0] and len(set(sources[0])) == 1:
                plan.bias_source = sources[0][0]
    return plans


def _shared_inputs(graph: ModelGraph | None, plans: dict[str, _Plan]) -> list[list[tuple[str, int]]]:
    """Deploy: the quantized inputs that read one and the same tensor, as ``(module, input index)`` groups of
    two or more at one bit width.  Each group gets one quantizer: in the exported graph that is one
    QuantizeLinear, so the conv producing the tensor has the single quantized reader onnxruntime needs to
    run it as an integer kernel (two readers, e.g. a MobileFaceNet block's expansion conv and residual sum,
    leave it in float)."""
    if graph is None:
        return []
    readers: dict[fx.Node, list[tuple[str, int]]] = {}
    for name, plan in plans.items():
        sites = graph.call_sites.get(name, [])
        if len(sites) != 1:
            continue
        for index, arg in enumerate(sites[0].args[:len(plan.inputs)]):
            if plan.inputs[index] and isinstance(arg, fx.Node):
                readers.setdefault(arg, []).append((name, index))
    return [group for group in readers.values()
            if len(group) > 1 and len({plans[name].act_bits for name, _ in group}) == 1]


def _act(plan: _Plan, qcfg: QuantConfig, name: str, on: bool, nonnegative: bool = False) -> FakeQuantizer | None:
    if not on:
        return None
    return act_quantizer(plan.act_bits, qcfg.act_observer, qcfg.percentile(plan.act_bits), qcfg.ema_momentum, name,
                         qcfg.lsq_init, nonnegative)


def _attach(model: nn.Module, plans: dict[str, _Plan], qcfg: QuantConfig,
            shared: list[list[tuple[str, int]]]) -> None:
    tensors = [*model.parameters(), *model.buffers()]
    device = tensors[0].device if tensors else None
    learnable = qcfg.weight_observer == "lsq"
    for name, plan in plans.items():
        module = model.get_submodule(name)
        weight = None
        if plan.weight and isinstance(module, nn.PReLU):  # slope: per tensor, affine, activation bits
            weight = weight_quantizer(plan.act_bits, None, False, learnable, f"{name}.weight_quant")
        elif plan.weight:
            weight = weight_quantizer(plan.weight_bits, module.weight.shape[0], qcfg.weight_symmetric,
                                      learnable, f"{name}.weight_quant")
        input_names = QUANT_CLASSES[type(module)].input_names
        inputs = tuple(_act(plan, qcfg, f"{name}.{n}", on) for n, on in zip(input_names, plan.inputs))
        output = _act(plan, qcfg, f"{name}.output_quant", plan.output, nonnegative=isinstance(module, nn.ReLU))
        attach_quantizers(module, weight, inputs, output)
        if device is not None:
            module.to(device)
    for (first, first_index), *rest in shared:  # one module, registered under each reader's name
        owner = model.get_submodule(first)
        quantizer = getattr(owner, owner.input_names[first_index])
        for name, index in rest:
            reader = model.get_submodule(name)
            reader.register_module(reader.input_names[index], quantizer)
    if qcfg.quant_mode != "deploy":
        return
    for name, plan in plans.items():  # int32 bias at s_in * s_w, as the int8 kernel adds it
        module = model.get_submodule(name)
        if not isinstance(module, QuantWeighted) or module.weight_quant is None:
            continue
        if module.input_quant is None and plan.bias_source is not None:
            module.bias_input = (model.get_submodule(plan.bias_source).output_quant,)  # a tuple: not a child
        module.quantize_bias = module.input_quant is not None or plan.bias_source is not None


def quantize_model(model: nn.Module, qcfg: QuantConfig) -> nn.Module:
    """A quantization-aware copy of ``model`` (the float model is untouched); observers start enabled.

    Parameter key paths are unchanged (except that ``bn_mode='fold'`` removes folded BNs and gives
    their layers a ``bias``); quantizer state is added under ``<module>.<...>_quant.*``.  Passes that
    need calibration data (``qcfg.equalize``, ``qcfg.bias_correction``) are ``post_training_quantize``'s;
    a config asking for them is refused here rather than silently ignored.
    """
    if any(True for _ in quantizers(model)):
        raise QuantizeError("model is already quantized; pass the float model")
    if qcfg.equalize or qcfg.bias_correction:
        raise QuantizeError("equalize / bias_correction need calibration batches: use "
                            "quant.post_training_quantize(model, qcfg, batches)")
    return quantize_inplace(copy.deepcopy(model), qcfg)


def quantize_inplace(model: nn.Module, qcfg: QuantConfig) -> nn.Module:
    """``quantize_model`` without the copy, for models built only to be quantized (e.g. when loading)."""
    graph = trace(model)
    if qcfg.bn_mode == "fold":
        fold_batchnorms(model, graph)
        if graph is not None:
            graph.modules = dict(model.named_modules())
    elif qcfg.bn_mode == "frozen":
        freeze_batchnorms(model)
    plans = _plan(model, graph, qcfg)
    share = qcfg.quant_mode == "deploy" and qcfg.share_input_quantizers
    _attach(model, plans, qcfg, _shared_inputs(graph, plans) if share else [])
    return model
