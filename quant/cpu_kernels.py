"""Fake quantization on CPU in one pass over memory: elementwise kernels that torch.compile
(inductor's C++ backend) generates from the functions below.

Activation fake quantization is memory-bound.  As torch's vectorised eager ops (``quant.fake_quant``'s
composed form) it reads and writes a batch of activations five times, as torch's fused CPU kernels it runs
a scalar loop; either is a sizeable share of an r18 or MobileFaceNet training step on CPU.  Compiled, the
forward reads the tensor once and writes output and mask, the LSQ backward reads input and gradient once,
which makes both several times faster than the eager forms and torch's learnable (LSQ) kernel (timings in
docs/quantization.md, The quantizer).  The arithmetic is the fused
kernels', in their order (``1/s`` and every product in float32, round half to even), so values and masks
are bit-equal to them;
only the LSQ scale and zero-point gradients, sums over the tensor, differ in float rounding (another
order of summation).  At exact ties of ``x / s`` torch's CPU backward rounds away from zero, this one to
even as the forward does (as torch's CUDA kernel); it takes the forward's zero point, where torch's
backward rounds a zero point of exactly k + 1/2 up.

Compiling needs a C++ compiler and takes seconds once per process (inductor caches the code on disk).
Where it fails (no compiler, an unsupported platform) one warning says so and the eager forms run;
``QUANTFACE_COMPILE=0`` skips compiling altogether.
"""
from __future__ import annotations

import os
import warnings
from typing import Callable

import torch

_enabled = os.environ.get("QUANTFACE_COMPILE", "1") != "0"
_compiled: dict[Callable, Callable] = {}
# Graphs a kernel may compile: dynamo makes one per thread count and shape class (one row, one column,
# square, more than 4096 elements, ...); its default limit (8) would turn a long run eager for good.
_RECOMPILE_LIMIT = 64


def compiling() -> bool:
    """Whether the compiled kernels are (still) in use."""
    return _enabled


def run(kernel: Callable, *args: torch.Tensor):
    """``kernel(*args)`` compiled; ``None`` when compiling is off or has failed (the caller runs its eager form)."""
    global _enabled
    if not _enabled:
        return None
    try:
        compiled = _compiled.get(kernel)
        if compiled is None:
            compiled = _compiled[kernel] = torch.compile(kernel, dynamic=True, fullgraph=True)
        # no autograd and no autocast inside (float32 in and out): one graph whatever requires grad or casts
        with torch.autocast("cpu", enabled=False), torch._dynamo.config.patch(recompile_limit=_RECOMPILE_LIMIT):
            return compiled(*(a.detach() for a in args))
    except Exception as error:  # any compiler or platform failure: the eager forms compute the same values
        _enabled = False
        warnings.warn(f"quant.cpu_kernels: torch.compile failed ({type(error).__name__}: {str(error)[:300]}); "
                      "CPU fake quantization falls back to eager ops (about 5x slower; "
                      "set QUANTFACE_COMPILE=0 to skip the attempt)", RuntimeWarning, stacklevel=2)
        return None


def fake_quant_mask(x: torch.Tensor, inv_scale: torch.Tensor, scale: torch.Tensor, low: torch.Tensor,
                    high: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 ``x`` (one row per channel, or a single row), float32 parameters, one per row (``[rows, 1]``;
    ``low``/``high``: the grid's ends minus the zero point): the fake-quantized values and a
    float32 mask of the values that were not clamped (inductor's code stores it faster than a bool one;
    docs/quantization.md)."""
    q = torch.round(x * inv_scale)
    clamped = torch.clamp(q, low, high)
    return clamped * scale, (clamped == q).to(x.dtype)


def fake_quant(x: torch.Tensor, inv_scale: torch.Tensor, scale: torch.Tensor, low: torch.Tensor,
               high: torch.Tensor) -> torch.Tensor:
    """``fake_quant_mask`` without the mask (a range that covers the tensor)."""
    return torch.clamp(torch.round(x * inv_scale), low, high) * scale


def lsq_backward(x: torch.Tensor, grad: torch.Tensor, inv_scale: torch.Tensor, scale: torch.Tensor,
                 zero_point: torch.Tensor, quant_min: torch.Tensor, quant_max: torch.Tensor,
                 grad_factor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of LSQ+ per-tensor fake quantization, term by term those of
    ``torch._fake_quantize_learnable_per_tensor_affine`` (its CUDA kernel's form: the grid value is the
    forward's, ``round(x / s) + z``): input, scale and zero point."""
    q = torch.round(x * inv_scale) + zero_point
    inside = (q >= quant_min) & (q <= quant_max)
    grad_x = torch.where(inside, grad, 0.0)
    fq = (torch.clamp(q, quant_min, quant_max) - zero_point) * scale
    clipped = torch.where(q < quant_min, grad * (quant_min - zero_point), grad * (quant_max - zero_point))
    grad_scale = torch.where(inside, grad * (fq - x) * inv_scale * grad_factor, clipped * grad_factor)
    grad_zero_point = torch.where(inside, 0.0, grad * -1.0 * scale * grad_factor)
    return grad_x, grad_scale.sum(), grad_zero_point.sum()
