"""Fake quantization with a straight-through gradient: torch's fused kernels, and an equal CPU form.

torch's fused fake-quant kernels (``torch.fake_quantize_per_tensor_affine`` / ``_per_channel_affine``)
are the reference.  On CUDA they are what runs.  On CPU they are scalar loops, a sizeable share of a
training step and several times slower than the same arithmetic as torch's vectorised elementwise ops
(timings in docs/quantization.md, The quantizer).  For float32 CPU tensors this module therefore computes
exactly what those kernels compute, in that order:

    q = round_half_even(x * (1 / s)),  out = clamp(q, qmin - z, qmax - z) * s,
    gradient = 1 where q was not clamped, else 0 (or 1 everywhere when the range covers the tensor)

``1 / s`` is taken in float32 as the kernels take it; every intermediate is an integer below 2^24, so
each step is exact and the result is bit-equal to the fused kernel (``tests/test_fake_quant.py`` checks
values and gradients with ``torch.equal``, ties included).  Where torch.compile works the same arithmetic
runs as one compiled pass (``quant.cpu_kernels``), per tensor and per channel along dim 0; LSQ's learnable
per-tensor quantization likewise (``fake_quantize_learnable``).  On a GPU nothing here reads a scale or zero
point on the host (each read would be a device sync per layer and step); only the CPU's eager fallback does.
"""
from __future__ import annotations

import torch

from quant import cpu_kernels


def _uses_fused(x: torch.Tensor) -> bool:
    return x.device.type != "cpu" or x.dtype != torch.float32


def _per_channel_view(t: torch.Tensor, x: torch.Tensor, axis: int) -> torch.Tensor:
    shape = [1] * x.dim()
    shape[axis] = -1
    return t.reshape(shape)


def _composed(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, quant_min: int, quant_max: int,
              axis: int | None, keep_mask: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The fused kernels' arithmetic as vectorised ops: ``(output, float32 mask of unclamped values or None)``.
    The mask is float32 (4 bytes per element, against the kernels' 1): comparing into and multiplying by a
    float mask is faster on CPU than with a bool one (docs/quantization.md); it reuses the buffer of the
    unclamped values."""
    scale = scale.float()
    if axis is None:
        z = int(zero_point.reshape(()).item())
        s, low, high = float(scale.reshape(()).item()), quant_min - z, quant_max - z
        q = x.mul(float((1.0 / scale).reshape(()).item())).round_()  # 1/s in float32, as the kernels take it
    else:
        s = _per_channel_view(scale, x, axis)
        if bool(zero_point.any()):
            z = _per_channel_view(zero_point.float(), x, axis)
            low, high = quant_min - z, quant_max - z
        else:
            low, high = quant_min, quant_max
        q = x.mul(_per_channel_view(1.0 / scale, x, axis)).round_()
    clamped = q.clamp(low, high)
    mask = torch.eq(clamped, q, out=q) if keep_mask else None
    return clamped.mul_(s), mask


def _compilable(x: torch.Tensor) -> bool:
    """Whether the compiled kernels take ``x`` (a float32 CPU tensor): contiguous, at least two values."""
    return cpu_kernels.compiling() and x.is_contiguous() and x.numel() >= 2


def _compiled_form(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, quant_min: int,
                   quant_max: int, axis: int | None, keep_mask: bool
                   ) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """``_composed`` as one compiled pass; None where it does not apply (the caller composes)."""
    if not _compilable(x) or axis not in (None, 0):
        return None
    # Always one row per channel (per tensor: one row) and a column of parameters, so that the compiled code
    # sees one rank; its other variants are only single-column and square tensors (size specialisation).
    s = scale.detach().float().reshape(-1, 1)
    z = zero_point.detach().float().reshape(-1, 1)
    rows = x.view(1 if axis is None else x.shape[0], -1)
    kernel = cpu_kernels.fake_quant_mask if keep_mask else cpu_kernels.fake_quant
    result = cpu_kernels.run(kernel, rows, 1.0 / s, s, quant_min - z, quant_max - z)
    if result is None:
        return None
    if keep_mask:
        return result[0].view(x.shape), result[1].view(x.shape)
    return result.view(x.shape), None


def _cpu_form(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, quant_min: int, quant_max: int,
              axis: int | None, keep_mask: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    result = _compiled_form(x, scale, zero_point, quant_min, quant_max, axis, keep_mask)
    if result is not None:
        return result
    return _composed(x, scale, zero_point, quant_min, quant_max, axis, keep_mask)


def _fused(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, quant_min: int, quant_max: int,
           axis: int | None) -> torch.Tensor:
    """torch's fused kernel, fed so that it never reads a parameter on the host: per tensor its tensor-parameter
    form; per channel on CUDA a float zero point (with an int32 one the kernel checks the zero points' range
    with ``.item()``, a device sync per call; its CUDA arithmetic is the same for both, the CPU kernel's is not)."""
    if axis is None:
        return torch.fake_quantize_per_tensor_affine(x, scale, zero_point.to(torch.int32), quant_min, quant_max)
    zero_point = zero_point.to(torch.float32 if x.is_cuda else torch.int32)
    return torch.fake_quantize_per_channel_affine(x, scale, zero_point, axis, quant_min, quant_max)


class _ClippedCPU(torch.autograd.Function):
    """The composed form with the fused kernels' gradient: zero where the value was clamped."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, quant_min: int, quant_max: int, axis: int | None):
        out, mask = _cpu_form(x, scale, zero_point, quant_min, quant_max, axis, ctx.needs_input_grad[0])
        if mask is not None:
            ctx.save_for_backward(mask)
        return out

    @staticmethod
    def backward(ctx, grad):
        inside, = ctx.saved_tensors
        return grad * inside, None, None, None, None, None


class _Covering(torch.autograd.Function):
    """For a range taken from the tensor itself: nothing is clipped, so the gradient is exactly the identity
    and no mask is kept (fused kernel, or the composed form on CPU)."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, quant_min: int, quant_max: int, axis: int | None):
        if _uses_fused(x):
            return _fused(x, scale, zero_point, quant_min, quant_max, axis)
        return _cpu_form(x, scale, zero_point, quant_min, quant_max, axis, False)[0]

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None, None, None, None


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, quant_min: int, quant_max: int,
                  axis: int | None = None) -> torch.Tensor:
    """Quantize-dequantize ``x`` per tensor (``axis`` None) or per channel along ``axis``; the gradient is
    the straight-through estimator with clipping, as ``torch.fake_quantize_per_*_affine``'s."""
    if _uses_fused(x):
        return _fused(x, scale, zero_point, quant_min, quant_max, axis)
    return _ClippedCPU.apply(x, scale, zero_point, quant_min, quant_max, axis)


def fake_quantize_covering(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, quant_min: int,
                           quant_max: int, axis: int | None = None) -> torch.Tensor:
    """``fake_quantize`` for a range that covers ``x`` (its own min/max): the gradient is exactly the identity,
    so no mask is kept."""
    return _Covering.apply(x, scale, zero_point, quant_min, quant_max, axis)


class _Learnable(torch.autograd.Function):
    """LSQ+ per tensor: the values and input gradient of ``torch._fake_quantize_learnable_per_tensor_affine``,
    its scale and zero-point gradients to float rounding (``quant.cpu_kernels.lsq_backward``), with scale and
    zero point kept on the device (torch's kernel reads both with ``.item()`` in forward and backward, a
    device sync each).  On CPU forward and backward are compiled; elsewhere the forward is torch's fused
    kernel in its tensor-parameter form and the backward runs eagerly."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, quant_min: int, quant_max: int, grad_factor: float):
        # the kernel's forward zero point: rounded half to even, clamped to the grid
        z = zero_point.detach().float().reshape(1).round().clamp(quant_min, quant_max)
        ctx.save_for_backward(x, scale, z)
        ctx.grid, ctx.grad_factor = (quant_min, quant_max), grad_factor
        if _uses_fused(x):
            return torch.fake_quantize_per_tensor_affine(x, scale.detach().float().reshape(1), z.to(torch.int32),
                                                         quant_min, quant_max)
        return _cpu_form(x, scale, z, quant_min, quant_max, None, False)[0]

    @staticmethod
    def backward(ctx, grad):
        x, scale, z = ctx.saved_tensors
        s = scale.detach().float().reshape(())
        quant_min, quant_max = ctx.grid
        flat_x, flat_grad = x.reshape(-1), grad.contiguous().view(-1)
        result = None
        if not _uses_fused(x):
            result = cpu_kernels.run(cpu_kernels.lsq_backward, flat_x, flat_grad, 1.0 / s, s, z.reshape(()),
                                     torch.tensor(float(quant_min)), torch.tensor(float(quant_max)),
                                     torch.tensor(ctx.grad_factor))
        if result is None:  # on a GPU, or compiling failed: the same arithmetic eagerly (numbers stay on the host)
            result = cpu_kernels.lsq_backward(flat_x, flat_grad, 1.0 / s, s, z.reshape(()), quant_min, quant_max,
                                              ctx.grad_factor)
        grad_x, grad_scale, grad_zero_point = result
        return grad_x.view(x.shape), grad_scale.reshape(1), grad_zero_point.reshape(1), None, None, None


def fake_quantize_learnable(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, quant_min: int,
                            quant_max: int, grad_factor: float) -> torch.Tensor:
    """LSQ+ per-tensor fake quantization with learnable (1-element) ``scale`` and ``zero_point``:
    ``torch._fake_quantize_learnable_per_tensor_affine``'s values and gradients without device syncs
    (``_Learnable``); torch's own kernel only on CPU where nothing compiles."""
    if _uses_fused(x) or _compilable(x):
        return _Learnable.apply(x, scale, zero_point, quant_min, quant_max, grad_factor)
    return torch._fake_quantize_learnable_per_tensor_affine(x, scale, zero_point, quant_min, quant_max,
                                                             grad_factor)
