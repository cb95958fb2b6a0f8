"""Fake quantizers against the textbook formula, on random tensors, for every bit width and mode."""
from __future__ import annotations

import math

import pytest
import torch

from quant.quantizer import (EMAMinMax, FakeQuantizer, PercentileRange, act_quantizer, int_grid,
                             qparams_from_range, weight_quantizer)

BITS = range(2, 9)


def textbook(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """q = clamp(round(x / s) + z, qmin, qmax); x_hat = (q - z) s."""
    q = torch.clamp(torch.round(x / scale) + zero_point, qmin, qmax)
    return (q - zero_point) * scale


def inside(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """Where the unclamped integer lies on the grid: the straight-through estimator passes gradient there."""
    q = torch.round(x / scale) + zero_point
    return (q >= qmin) & (q <= qmax)


def channel_view(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, *([1] * (like.dim() - 1))).to(torch.float32)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("symmetric", [True, False])
def test_per_channel_weights_match_formula_and_stay_on_grid(bits: int, symmetric: bool) -> None:
    torch.manual_seed(bits)
    w = torch.randn(16, 8, 3, 3) * torch.linspace(0.1, 3.0, 16).reshape(-1, 1, 1, 1) + 0.2
    w.requires_grad_()
    quantizer = weight_quantizer(bits, 16, symmetric)
    out = quantizer(w)
    qmin, qmax = int_grid(bits, symmetric)
    assert (int(quantizer.qmin), int(quantizer.qmax), int(quantizer.bits)) == (qmin, qmax, bits)
    s, z = channel_view(quantizer.scale, w), channel_view(quantizer.zero_point, w)
    torch.testing.assert_close(out, textbook(w.detach(), s, z, qmin, qmax), rtol=0, atol=1e-6)
    # per-channel scales come from each channel's own range
    flat = w.detach().reshape(16, -1)
    lo, hi = flat.min(1).values.clamp(max=0), flat.max(1).values.clamp(min=0)
    expected = torch.maximum(-lo, hi) / qmax if symmetric else (hi - lo) / (qmax - qmin)
    torch.testing.assert_close(quantizer.scale, expected)
    assert quantizer.scale.unique().numel() == 16
    if symmetric:
        assert torch.count_nonzero(quantizer.zero_point) == 0
    for c in range(16):
        levels = torch.round(out[c].detach() / quantizer.scale[c]).unique()
        assert levels.numel() <= 2 ** bits
        assert torch.allclose(out[c].detach() / quantizer.scale[c], torch.round(out[c].detach() / quantizer.scale[c]),
                              atol=1e-4)
    # current min/max puts every weight inside the range: gradient passes unchanged
    out.backward(torch.arange(w.numel(), dtype=torch.float32).reshape(w.shape))
    assert torch.equal(w.grad, torch.arange(w.numel(), dtype=torch.float32).reshape(w.shape))


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("observer", ["minmax", "ema", "percentile", "lsq"])
def test_per_tensor_activations_match_formula_and_clip_gradients(bits: int, observer: str) -> None:
    torch.manual_seed(100 + bits)
    quantizer = act_quantizer(bits, observer, percentile=99.0, momentum=0.5)
    quantizer(torch.rand(4, 8, 5, 5) * 3 - 0.5)          # observe a range of about [-0.5, 2.5]
    quantizer.observer_enabled = False
    x = (torch.randn(4, 8, 5, 5) * 2).requires_grad_()   # partly outside the observed range
    out = quantizer(x)
    qmin, qmax = 0, 2 ** bits - 1
    s = quantizer.scale.detach()
    z = torch.round(quantizer.zero_point.detach()).float()
    assert s.shape == (1,) and 0 <= float(z) <= qmax
    torch.testing.assert_close(out, textbook(x.detach(), s, z, qmin, qmax), rtol=0, atol=1e-6)
    assert torch.round(out.detach() / s + z).unique().numel() <= 2 ** bits
    out.backward(torch.ones_like(x))
    mask = inside(x.detach(), s, z, qmin, qmax)
    assert 0 < int(mask.sum()) < x.numel()
    assert torch.equal(x.grad, mask.float())


def test_affine_range_maps_min_and_max_onto_grid_ends() -> None:
    scale, zero_point = qparams_from_range(torch.tensor([-1.0]), torch.tensor([3.0]), 0, 255, False)
    assert torch.allclose(scale, torch.tensor([4.0 / 255]))
    assert int(zero_point) == round(1.0 / (4.0 / 255))
    assert zero_point.dtype == torch.int32
    # ranges are widened to include 0, so zero is exactly representable
    scale, zero_point = qparams_from_range(torch.tensor([0.5]), torch.tensor([2.0]), 0, 15, False)
    assert int(zero_point) == 0 and torch.allclose(scale, torch.tensor([2.0 / 15]))


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_lsq_scale_gradient_follows_lsq_formula(bits: int) -> None:
    torch.manual_seed(bits)
    quantizer = act_quantizer(bits, "lsq")
    quantizer(torch.rand(2, 6, 4, 4))
    quantizer.observer_enabled = False
    assert isinstance(quantizer.scale, torch.nn.Parameter) and isinstance(quantizer.zero_point, torch.nn.Parameter)
    x = torch.randn(2, 6, 4, 4) * 1.5
    quantizer(x).sum().backward()
    s, z, qmin, qmax = quantizer.scale.detach(), torch.round(quantizer.zero_point.detach()), 0, 2 ** bits - 1
    q = torch.round(x / s) + z
    ds = torch.where(q < qmin, qmin - z, torch.where(q > qmax, qmax - z, torch.round(x / s) - x / s))
    grad_factor = 1.0 / math.sqrt(x[0].numel() * qmax)
    torch.testing.assert_close(quantizer.scale.grad, ds.sum().reshape(1) * grad_factor, rtol=1e-4, atol=1e-5)
    assert quantizer.zero_point.grad is not None and float(quantizer.zero_point.grad.abs()) > 0


@pytest.mark.parametrize("bits", BITS)
def test_lsq_per_channel_weights_match_formula(bits: int) -> None:
    torch.manual_seed(bits)
    w = torch.randn(6, 4, 3, 3).requires_grad_()
    quantizer = weight_quantizer(bits, 6, True, learnable=True)
    quantizer(w)                                   # observing: scale initialised from min/max
    init = quantizer.scale.detach().clone()
    torch.testing.assert_close(init, w.detach().reshape(6, -1).abs().max(1).values / int_grid(bits, True)[1])
    quantizer.observer_enabled = False
    with torch.no_grad():
        quantizer.scale.mul_(0.5)                  # a learned, smaller step clips the largest weights
    out = quantizer(w)
    qmin, qmax = int_grid(bits, True)
    s = channel_view(quantizer.scale.detach(), w)
    torch.testing.assert_close(out, textbook(w.detach(), s, torch.zeros_like(s), qmin, qmax), rtol=0, atol=1e-6)
    out.sum().backward()
    assert torch.equal(w.grad, inside(w.detach(), s, torch.zeros_like(s), qmin, qmax).float())
    assert quantizer.scale.grad.shape == (6,) and bool((quantizer.scale.grad != 0).all())


def test_range_estimators_follow_their_definitions() -> None:
    a, b = torch.tensor([-1.0, 2.0]), torch.tensor([-3.0, 1.0])
    running = act_quantizer(8, "minmax")
    ema = FakeQuantizer(8, False, EMAMinMax(momentum=0.25))
    for quantizer in (running, ema):
        quantizer(a)
        quantizer(b)
    assert (float(running.estimator.min_val), float(running.estimator.max_val)) == (-3.0, 2.0)
    assert float(ema.estimator.min_val) == pytest.approx(-1.0 + 0.25 * (-3.0 + 1.0))
    assert float(ema.estimator.max_val) == pytest.approx(2.0 + 0.25 * (1.0 - 2.0))
    percentile = FakeQuantizer(8, False, PercentileRange(percentile=90.0))
    x1 = torch.linspace(0, 10, 1001)
    x2 = torch.linspace(0, 20, 1001)
    percentile(x1)
    percentile(x2)
    assert float(percentile.estimator.max_val) == pytest.approx((9.0 + 18.0) / 2, rel=1e-4)
    assert float(percentile.estimator.min_val) == pytest.approx((1.0 + 2.0) / 2, rel=1e-4)


def test_lsq_ranges_start_from_the_chosen_estimator_and_are_then_learned() -> None:
    x = torch.linspace(0, 20, 1001)
    minmax_init = act_quantizer(4, "lsq")
    percentile_init = act_quantizer(4, "lsq", percentile=90.0, lsq_init="percentile")
    for quantizer in (minmax_init, percentile_init):
        assert quantizer.learnable and isinstance(quantizer.scale, torch.nn.Parameter)
        quantizer(x)
    assert minmax_init.scale.item() == pytest.approx(20.0 / 15)
    assert percentile_init.scale.item() == pytest.approx(18.0 / 15, rel=1e-4)  # top 10% clipped (0 kept in range)
    percentile_init.observer_enabled = False
    percentile_init(x).sum().backward()
    assert percentile_init.scale.grad is not None and float(percentile_init.scale.grad) != 0.0


def test_frozen_activation_quantizer_without_range_names_itself() -> None:
    quantizer = act_quantizer(8, "minmax", name="layer1.0.add.output_quant")
    quantizer.observer_enabled = False
    with pytest.raises(RuntimeError, match="layer1.0.add.output_quant.*calibrate"):
        quantizer(torch.randn(3))


def test_quantized_weight_cached_in_eval_until_the_weight_changes() -> None:
    w = torch.randn(4, 3)
    quantizer = weight_quantizer(8, 4, True).eval()
    first = quantizer(w)
    assert quantizer(w) is first                    # unchanged weight: no recomputation
    w.mul_(4)                                       # in-place update moves the version counter
    second = quantizer(w)
    torch.testing.assert_close(second, first * 4, rtol=0, atol=1e-5)
    torch.testing.assert_close(quantizer.scale, w.abs().max(1).values / 127)
    trainable = w.clone().requires_grad_()
    assert quantizer(trainable).requires_grad       # gradients needed: never served from the cache
    assert quantizer.train()(w) is not second
