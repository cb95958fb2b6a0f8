"""Lowerings of convs, linears and BatchNorms: integer weights in their containers, int32 biases, and
BatchNorm folded into the layer before it (exact with per-channel symmetric weights: the integers stay,
the channel scales take the BatchNorm factor)."""
from __future__ import annotations

import numpy as np
import torch
from torch import fx, nn
from torch.nn.modules.batchnorm import _BatchNorm

from deploy.onnx_graph import ExportError, act_qparams, quantize_act
from deploy.onnx_lowering import Exporter, lowers
from quant.layers import QuantConv2d, QuantLinear, bias_scale, input_scale
from quant.quantizer import FakeQuantizer, used_scale

SAFE_INT8_BITS = 7  # |w| <= 63: two uint8 x int8 products never leave int16


def int8_container(m: nn.Conv2d | nn.Linear, int8_weights: bool) -> bool:
    """Whether the quantized weights of ``m`` are written as int8 (else uint8 with zero point 128).  x86 CPUs
    without VNNI saturate int16 pair sums of uint8 x int8 products once ``|w|`` uses all 8 bits; int8 is
    safe with ``int8_weights`` (VNNI / ARM targets), for depthwise convs (no pair sums) and for weights of
    ``SAFE_INT8_BITS`` or fewer."""
    depthwise = isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels
    return int8_weights or depthwise or m.weight_quant.num_bits <= SAFE_INT8_BITS


def weight_ints(layer: nn.Module, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(int weights as int64, per-output-channel float64 scales) of a quantized conv/linear."""
    q: FakeQuantizer = layer.weight_quant
    if not q.symmetric or not q.per_channel:
        raise ExportError(f"{where}: weights are quantized {q.extra_repr()}; int8 kernels need per-channel "
                          "symmetric weights (quant_mode='deploy', weight_symmetric=True)")
    if q.num_bits > 8:
        raise ExportError(f"{where}: {q.num_bits}-bit weights do not fit int8 containers")
    with torch.no_grad():
        fake = q(layer.weight.detach())  # exactly the student's quantized weight (and its current scale)
        scale = used_scale(q.scale).double()
        view = (-1,) + (1,) * (layer.weight.dim() - 1)
        ints = torch.round(fake.double() / scale.view(view)).clamp(q.quant_min, q.quant_max)
    return ints.long(), scale


def bn_factors(bn: _BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BatchNorm as ``y = x * a + b`` per channel (float64)."""
    a = torch.rsqrt(bn.running_var.double() + bn.eps)
    if bn.affine:
        a = a * bn.weight.detach().double()
    b = -bn.running_mean.double() * a + (bn.bias.detach().double() if bn.affine else 0.0)
    return a, b


def foldable_bn(ex: Exporter, node: fx.Node, m: nn.Module) -> _BatchNorm | None:
    """The BN that reads only this layer's output (and the layer has no output quantizer), else None."""
    if len(node.users) != 1 or getattr(m, "output_quant", None) is not None:
        return None
    user = next(iter(node.users))
    bn = ex.modules.get(user.target) if user.op == "call_module" else None
    expected = nn.BatchNorm2d if isinstance(m, nn.Conv2d) else nn.BatchNorm1d
    if isinstance(bn, expected) and bn.running_mean is not None and bn.num_features == m.weight.shape[0]:
        return bn
    return None


@lowers(nn.Conv2d, nn.Linear)
def lower_weighted(ex: Exporter, node: fx.Node, m: nn.Conv2d | nn.Linear) -> str:
    """A conv or linear with the BatchNorm after it folded in; quantized, its bias is int32 at ``s_in * s_w``
    (the form onnxruntime fuses into ``QLinearConv``/``QGemm``)."""
    where, g = node.target, ex.g
    quantized = isinstance(m, (QuantConv2d, QuantLinear)) and m.weight_quant is not None
    x = quantize_act(g, ex.arg(node), getattr(m, "input_quant", None), f"{where}.input")
    a, shift = torch.ones(m.weight.shape[0], dtype=torch.float64), 0.0
    bn = foldable_bn(ex, node, m)
    if bn is not None:
        a, shift = bn_factors(bn)
        ex.folded[node] = bn
    if quantized:
        w, weight_scale = _weight(ex, m, where, a)
    else:
        view = (-1,) + (1,) * (m.weight.dim() - 1)
        w = g.const(f"{where}.weight", (m.weight.detach().double() * a.view(view)).float().numpy())
    bias = m.effective_bias() if quantized else m.bias  # after _weight: the weight scales are current
    bias = (torch.zeros_like(a) if bias is None else bias.detach().double()) * a + shift
    if quantized and m.quantize_bias:  # int32 bias at s_in * s_w, as the student and the kernel add it
        grid = (bias_scale(m).double() * a.abs()).float()
        ints = torch.round(bias / grid.double()).clamp(-2**31, 2**31 - 1).to(torch.int32).numpy()
        b = g.int32_bias(where, ints, float(input_scale(m)), weight_scale)
    else:
        b = g.const(f"{where}.bias", bias.float().numpy())
    if isinstance(m, nn.Conv2d):
        out = _conv(ex, node, m, x, w, b)
    else:
        out = g.op("Gemm", [x, w, b], where, transB=1)
    return quantize_act(g, out, getattr(m, "output_quant", None), f"{where}.output")


def _weight(ex: Exporter, m: nn.Conv2d | nn.Linear, where: str, a: torch.Tensor) -> tuple[str, str]:
    """(DequantizeLinear of the stored integer weights, their channel scales), the BN factor ``a`` folded
    into the channel scales."""
    g = ex.g
    ints, scale = weight_ints(m, where)
    view = (-1,) + (1,) * (m.weight.dim() - 1)
    ints, scale = ints * torch.sign(a).view(view).long(), scale * a.abs()  # BN folded exactly
    inputs = [None, g.const(f"{where}.weight_scale", scale.float().numpy())]
    if int8_container(m, ex.int8_weights):
        inputs[0] = g.const(f"{where}.weight", ints.to(torch.int8).numpy())
        if isinstance(m, nn.Linear):  # onnxruntime fuses Gemm into QGemm only with an explicit zero point
            inputs.append(g.const(f"{where}.weight_zero", np.zeros(len(scale), np.int8)))
    else:
        inputs[0] = g.const(f"{where}.weight", (ints + 128).to(torch.uint8).numpy())
        inputs.append(g.const(f"{where}.weight_zero", np.full(len(scale), 128, np.uint8)))
    return g.op("DequantizeLinear", inputs, f"{where}.weight_dq", axis=0), inputs[1]


def _conv(ex: Exporter, node: fx.Node, m: nn.Conv2d, x: str, w: str, b: str) -> str:
    if m.padding_mode != "zeros" or isinstance(m.padding, str):
        raise ExportError(f"{node.target}: padding {m.padding!r} / {m.padding_mode} is not supported")
    ph, pw = m.padding
    return ex.g.op("Conv", [x, w, b], node.target, kernel_shape=list(m.kernel_size), strides=list(m.stride),
                   pads=[ph, pw, ph, pw], dilations=list(m.dilation), group=m.groups)


@lowers(_BatchNorm)
def lower_batchnorm(ex: Exporter, node: fx.Node, bn: _BatchNorm) -> str:
    """Nothing when folded into the layer before it; on a quantized tensor an integer conv; else ``x*a + b``."""
    source = node.args[0]
    if ex.folded.get(source) is bn:
        return ex.values[source]  # folded into the conv/linear that produced it
    a, b = bn_factors(bn)
    x = ex.arg(node)
    if isinstance(bn, nn.BatchNorm2d) and x in ex.g.grid:
        integer = _integer_affine(ex, node.target, x, a, b)
        if integer is not None:
            return integer
    shape = (-1, 1, 1) if isinstance(bn, nn.BatchNorm2d) else (-1,)
    scaled = ex.g.op("Mul", [x, ex.g.const(f"{node.target}.a", a.float().numpy().reshape(shape))], node.target)
    return ex.g.op("Add", [scaled, ex.g.const(f"{node.target}.b", b.float().numpy().reshape(shape))],
                   node.target)


def _integer_affine(ex: Exporter, where: str, x: str, a: torch.Tensor, b: torch.Tensor) -> str | None:
    """A BatchNorm on a quantized tensor (iResNet's pre-activation ``bn1``/``bn2``, which no conv before it
    can absorb) as a depthwise 1x1 conv with int8 weights ``±127`` at channel scale ``|a| / 127`` and its
    shift as an int32 bias on that conv's grid (off by at most half a step of it), so onnxruntime runs one
    ``QLinearConv`` instead of a dequantize, a float multiply-add and a quantize.  None when a channel's
    shift does not fit int32 on its grid (a near-zero ``a``): then it stays float."""
    g = ex.g
    s_in = float(act_qparams(g.grid[x], where)[0])
    scale = a.abs().clamp_min(1e-30) / 127.0
    bias = torch.round(b / (s_in * scale.float().double()))
    if bias.abs().max() >= 2 ** 31:
        return None
    channels, weight_scale = len(a), g.const(f"{where}.weight_scale", scale.float().numpy())
    w = g.op("DequantizeLinear", [
        g.const(f"{where}.weight", (127 * torch.sign(a)).to(torch.int8).numpy().reshape(channels, 1, 1, 1)),
        weight_scale], f"{where}.weight_dq", axis=0)
    bias_dq = g.int32_bias(where, bias.to(torch.int32).numpy(), s_in, weight_scale)
    return g.op("Conv", [x, w, bias_dq], where, kernel_shape=[1, 1], group=channels)
