"""Fake quantizers composed from small parts: an integer grid, a range estimator, and learnability.

``FakeQuantizer(bits, symmetric, estimator, channels, learnable)`` rounds a tensor onto the grid
``q = clamp(round(x / s) + z, qmin, qmax)``, ``x_hat = (q - z) * s`` with torch's fused fake-quant
kernels (or, on CPU, ``quant.fake_quant``'s bit-equal vectorised form of them), whose backward is the
straight-through estimator with clipping (gradient 1 inside the range, 0 outside).  Its state is
plain buffers: ``bits``, ``qmin``, ``qmax``, ``scale``, ``zero_point`` and the estimator's
``min_val``/``max_val`` (``scale``/``zero_point`` are parameters when learnable, LSQ/LSQ+).

Grids: symmetric = signed narrow range ``[-(2^(b-1)-1), 2^(b-1)-1]`` with zero point 0 (what int8
weight kernels expect); affine = ``[0, 2^b-1]`` with an integer zero point.  Ranges always include 0
so that zero is exact.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from quant.fake_quant import fake_quantize, fake_quantize_covering, fake_quantize_learnable

_EPS = torch.finfo(torch.float32).eps
_PERCENTILE_SAMPLES = 1 << 18   # percentile ranges are taken on at most this many sampled values


def int_grid(bits: int, symmetric: bool) -> tuple[int, int]:
    """``(qmin, qmax)`` of a ``bits``-bit grid (signed narrow range if symmetric, else unsigned)."""
    if symmetric:
        half = 2 ** (bits - 1) - 1
        return -half, half
    return 0, 2 ** bits - 1


def used_scale(scale: torch.Tensor) -> torch.Tensor:
    """A scale as the fake quantizers apply it: float32, no smaller than float32's eps (a learned scale can
    shrink towards 0).  What an exported graph or a packed file must use to match the student."""
    return scale.detach().float().clamp_min(_EPS)


def qparams_from_range(min_val: torch.Tensor, max_val: torch.Tensor, qmin: int, qmax: int,
                       symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and int32 zero point mapping ``[min_val, max_val]`` (widened to include 0) onto the grid."""
    min_val = min_val.clamp(max=0.0)
    max_val = max_val.clamp(min=0.0)
    if symmetric:
        scale = (torch.maximum(-min_val, max_val) / ((qmax - qmin) / 2)).clamp_min(_EPS)
        return scale, torch.zeros_like(scale, dtype=torch.int32)
    scale = ((max_val - min_val) / (qmax - qmin)).clamp_min(_EPS)
    zero_point = (qmin - torch.round(min_val / scale)).clamp(qmin, qmax)
    return scale, zero_point.to(torch.int32)


def _aminmax(x: torch.Tensor, per_channel: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 min and max over the whole tensor (shape [1]) or per output channel (dim 0; shape [C]).
    Per channel, ``amin`` and ``amax`` apart: ``torch.aminmax(dim=1)`` is several times slower on CPU
    (docs/quantization.md), and the weights' ranges are taken at every training step."""
    if per_channel:
        flat = x.reshape(x.shape[0], -1)
        return flat.amin(dim=1).float(), flat.amax(dim=1).float()
    mn, mx = torch.aminmax(x)
    return mn.reshape(1).float(), mx.reshape(1).float()


class RangeEstimator(nn.Module):
    """Observes tensors and returns the range ``(min, max)`` to quantize them with.

    Stateful estimators keep ``min_val``/``max_val`` buffers that ``sync_observers`` all-reduces;
    the stateless one (``CurrentMinMax``) recomputes the range from the tensor at every call.
    """

    stateless = False

    def __init__(self, channels: int | None = None):
        super().__init__()
        self.per_channel = channels is not None
        if not self.stateless:
            shape = (channels or 1,)
            self.register_buffer("min_val", torch.full(shape, math.inf))
            self.register_buffer("max_val", torch.full(shape, -math.inf))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mn, mx = self.batch_range(x)
        self.update(mn, mx)
        return self.min_val, self.max_val

    def batch_range(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _aminmax(x, self.per_channel)

    def update(self, mn: torch.Tensor, mx: torch.Tensor) -> None:
        raise NotImplementedError


class CurrentMinMax(RangeEstimator):
    """Range of the tensor itself at every call (weights: QuantFace's per-step min/max)."""

    stateless = True

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.batch_range(x)


class RunningMinMax(RangeEstimator):
    """Smallest min and largest max seen so far (QuantFace's activation ranges)."""

    def update(self, mn: torch.Tensor, mx: torch.Tensor) -> None:
        torch.minimum(self.min_val, mn, out=self.min_val)
        torch.maximum(self.max_val, mx, out=self.max_val)


class EMAMinMax(RangeEstimator):
    """Exponential moving average of per-batch min and max (the first batch initialises it)."""

    def __init__(self, channels: int | None = None, momentum: float = 0.01):
        super().__init__(channels)
        self.momentum = momentum

    def update(self, mn: torch.Tensor, mx: torch.Tensor) -> None:
        fresh = torch.isinf(self.min_val)
        self.min_val.copy_(torch.where(fresh, mn, torch.lerp(self.min_val, mn, self.momentum)))
        self.max_val.copy_(torch.where(fresh, mx, torch.lerp(self.max_val, mx, self.momentum)))


class PercentileRange(RangeEstimator):
    """Mean over batches of the per-batch ``(100-p)``-th and ``p``-th percentiles (per tensor; clips outliers)."""

    def __init__(self, percentile: float = 99.99):
        super().__init__(None)
        self.percentile = percentile
        self.register_buffer("num_batches", torch.zeros(1))

    def batch_range(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = x.reshape(-1).float()
        if flat.numel() > _PERCENTILE_SAMPLES:
            flat = flat[torch.randint(flat.numel(), (_PERCENTILE_SAMPLES,), device=flat.device)]
        tail = min(int(flat.numel() * (1.0 - self.percentile / 100.0)), flat.numel() - 1)
        lo = torch.kthvalue(flat, tail + 1).values
        hi = torch.kthvalue(flat, flat.numel() - tail).values
        return lo.reshape(1), hi.reshape(1)

    def update(self, mn: torch.Tensor, mx: torch.Tensor) -> None:
        self.num_batches += 1
        fresh = torch.isinf(self.min_val)
        self.min_val.copy_(torch.where(fresh, mn, self.min_val + (mn - self.min_val) / self.num_batches))
        self.max_val.copy_(torch.where(fresh, mx, self.max_val + (mx - self.max_val) / self.num_batches))


class FakeQuantizer(nn.Module):
    """Quantize-dequantize a tensor per tensor, or per output channel (dim 0) when ``channels`` is set.

    While ``observer_enabled`` the estimator updates the range and ``scale``/``zero_point`` follow it;
    once disabled they stay fixed (or, when ``learnable``, are trained by LSQ+ from where the
    observed range put them).  A stateless estimator (weights) recomputes the range at every call;
    in eval mode without gradients the quantized weight is cached until the weight changes (its
    version counter moves, as with optimizer steps and ``load_state_dict``; edits through ``.data``
    are not seen).
    """

    def __init__(self, bits: int, symmetric: bool, estimator: RangeEstimator, channels: int | None = None,
                 learnable: bool = False, name: str = "", nonnegative: bool = False):
        super().__init__()
        if estimator.per_channel != (channels is not None):
            raise ValueError("estimator and quantizer disagree on per-channel granularity")
        if nonnegative and symmetric:
            raise ValueError("a nonnegative quantizer uses the unsigned grid, not the symmetric one")
        self.symmetric, self.learnable, self.name = symmetric, learnable, name
        self.nonnegative = nonnegative  # a ReLU's output: unsigned grid, zero point fixed at 0
        self.per_channel = channels is not None
        self.num_bits = bits
        self.quant_min, self.quant_max = int_grid(bits, symmetric)
        self.register_buffer("bits", torch.tensor(bits, dtype=torch.int32))
        self.register_buffer("qmin", torch.tensor(self.quant_min, dtype=torch.int32))
        self.register_buffer("qmax", torch.tensor(self.quant_max, dtype=torch.int32))
        shape = (channels or 1,)
        if learnable:
            self.scale = nn.Parameter(torch.ones(shape))
            zero_point = torch.zeros(shape)
            if symmetric or nonnegative:
                self.register_buffer("zero_point", zero_point)
            else:
                self.zero_point = nn.Parameter(zero_point)
        else:
            self.register_buffer("scale", torch.ones(shape))
            self.register_buffer("zero_point", torch.zeros(shape, dtype=torch.int32))
        self.estimator = estimator
        self.observer_enabled = True
        self.calibrated = estimator.stateless and not learnable
        self.drop_prob = 0.0  # QDrop (block reconstruction): the share of values passed through unquantized
        self._cache_key: tuple[int, int] | None = None
        self._cache: torch.Tensor | None = None

    def extra_repr(self) -> str:
        kind = "per-channel" if self.per_channel else "per-tensor"
        grid = "symmetric" if self.symmetric else "affine"
        return (f"bits={self.num_bits}, {kind} {grid} [{self.quant_min}, {self.quant_max}], "
                f"estimator={type(self.estimator).__name__}, learnable={self.learnable}")

    @property
    def has_state(self) -> bool:
        """True when the estimator keeps observed ranges (i.e. it is an activation observer)."""
        return not self.estimator.stateless

    @torch.no_grad()
    def set_range(self, min_val: torch.Tensor, max_val: torch.Tensor) -> None:
        """Set ``scale``/``zero_point`` from a range (used by observation and by ``sync_observers``)."""
        if self.nonnegative:
            min_val = torch.zeros_like(min_val)
        scale, zero_point = qparams_from_range(min_val, max_val, self.quant_min, self.quant_max, self.symmetric)
        self.scale.copy_(scale)
        if not self.symmetric:  # a symmetric zero point stays 0 (and a nonnegative one: min_val is 0)
            self.zero_point.copy_(zero_point)

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        """Feed ``x`` to the estimator and move ``scale``/``zero_point`` to the new range."""
        self.set_range(*self.estimator(x.detach()))
        self.calibrated = True

    def train(self, mode: bool = True) -> "FakeQuantizer":
        self._cache_key = self._cache = None
        return super().train(mode)

    def _cached_fake_quant(self, x: torch.Tensor) -> torch.Tensor:
        """Eval without gradients: quantize a weight once and reuse it until it changes (version counter)."""
        key = (x.data_ptr(), x._version)
        if key != self._cache_key:
            self.observe(x)
            self._cache, self._cache_key = self._fake_quant(x), key
        return self._cache

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.estimator.stateless and (self.observer_enabled or not self.learnable):
            if not self.training and not (torch.is_grad_enabled() and x.requires_grad):
                return self._cached_fake_quant(x)
            self.observe(x)
        elif self.observer_enabled:
            self.observe(x)
        elif not self.calibrated:
            raise RuntimeError(
                f"quantizer '{self.name}' has no observed range: run quant.calibrate(model, batches) or keep "
                "observers enabled (quant.set_observers(model, True)) for the first training steps")
        out = self._fake_quant(x)
        if self.drop_prob:
            return torch.where(torch.rand_like(out) < self.drop_prob, x, out)
        return out

    def _fake_quant(self, x: torch.Tensor) -> torch.Tensor:
        axis = 0 if self.per_channel else None
        if self.estimator.stateless and not self.learnable:
            return fake_quantize_covering(x, self.scale, self.zero_point, self.quant_min, self.quant_max, axis)
        if not (self.learnable or self.scale.requires_grad):  # a fixed scale (a buffer may be set to learn)
            return fake_quantize(x, self.scale, self.zero_point, self.quant_min, self.quant_max, axis)
        # LSQ gradient scale 1/sqrt(N * qmax), N = elements per channel (weights) or per sample (activations)
        grad_factor = 1.0 / math.sqrt((x[0].numel() if x.dim() else 1) * self.quant_max)
        scale = self.scale.clamp_min(_EPS)
        zero_point = self.zero_point if self.zero_point.is_floating_point() else self.zero_point.float()
        xf = x.float()
        if self.per_channel:
            out = torch._fake_quantize_learnable_per_channel_affine(
                xf, scale, zero_point, 0, self.quant_min, self.quant_max, grad_factor)
        else:
            out = fake_quantize_learnable(xf, scale, zero_point, self.quant_min, self.quant_max, grad_factor)
        return out.to(x.dtype)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        for key, own in (("qmin", self.quant_min), ("qmax", self.quant_max)):
            stored = state_dict.get(prefix + key)
            if stored is not None and int(stored) != own:
                error_msgs.append(f"{prefix}{key}: checkpoint grid {int(stored)} differs from the model's {own} "
                                  "(built with other bit widths)")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        if prefix + "scale" in state_dict:  # this quantizer's state was loaded, not just its layer's weights
            stored_min = state_dict.get(prefix + "estimator.min_val")
            self.calibrated = bool(torch.isfinite(stored_min).all()) if stored_min is not None else True
        self._cache_key = self._cache = None


def weight_quantizer(bits: int, channels: int | None, symmetric: bool, learnable: bool = False,
                     name: str = "") -> FakeQuantizer:
    """Weights: range from the current weights at every step, per output channel unless ``channels`` is None."""
    return FakeQuantizer(bits, symmetric, CurrentMinMax(channels), channels, learnable, name)


def act_quantizer(bits: int, observer: str, percentile: float = 99.99, momentum: float = 0.01,
                  name: str = "", lsq_init: str = "minmax", nonnegative: bool = False) -> FakeQuantizer:
    """Activations: per-tensor affine with a stateful range estimator; ``lsq`` learns the range after
    the estimator named by ``lsq_init`` (minmax, ema or percentile) has initialised it.  ``nonnegative``
    (a ReLU's output) keeps the zero point at 0, so the runtime can fold the ReLU into the producer's
    integer output."""
    estimators = {"minmax": RunningMinMax,
                  "ema": lambda: EMAMinMax(momentum=momentum),
                  "percentile": lambda: PercentileRange(percentile=percentile)}
    learnable = observer == "lsq"
    return FakeQuantizer(bits, False, estimators[lsq_init if learnable else observer](), None, learnable, name,
                         nonnegative)
