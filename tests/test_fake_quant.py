"""quant.fake_quant's CPU form is bit-equal to torch's fused fake-quant kernels, values and gradients."""
import pytest
import torch

from quant.fake_quant import _fused, fake_quantize, fake_quantize_covering


def _tensor_with_ties(scale: torch.Tensor, shape: tuple[int, ...], axis: int | None, seed: int) -> torch.Tensor:
    """Normal values, a tail beyond the grid, and values exactly on rounding ties (k + 1/2) * s."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * 4 * scale.max()
    flat = x.view(-1)
    s = scale.reshape(-1)[0] if axis is None else scale[0]
    ties = (torch.randint(-300, 300, (flat.numel() // 8,), generator=g).float() + 0.5) * s
    if axis is None:
        flat[: ties.numel()] = ties
    else:  # channel 0 along axis 0
        x.select(axis, 0).view(-1)[: ties.numel()] = ties[: x.select(axis, 0).numel()]
    return x


CASES = [  # (axis, channels, quant_min, quant_max, zero points)
    (None, 1, 0, 255, "random"),    # activation: unsigned affine
    (None, 1, 0, 15, "zero"),       # 4-bit unsigned, zero point 0 (a ReLU's output)
    (0, 16, -127, 127, "zero"),     # weight: per-channel symmetric narrow range
    (0, 16, -7, 7, "zero"),         # 4-bit weight
    (0, 16, 0, 255, "random"),      # per-channel affine (quantface mode's weights)
]


@pytest.mark.parametrize("axis,channels,qmin,qmax,zeros", CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_cpu_form_equals_fused_kernel(axis, channels, qmin, qmax, zeros, seed):
    g = torch.Generator().manual_seed(100 + seed)
    scale = torch.rand(channels, generator=g) * 0.05 + 1e-3
    zero_point = (torch.randint(qmin, qmax + 1, (channels,), generator=g, dtype=torch.int32) if zeros == "random"
                  else torch.zeros(channels, dtype=torch.int32))
    x = _tensor_with_ties(scale, (channels, 24, 5, 5), axis, seed)
    mine = x.clone().requires_grad_()
    ref = x.clone().requires_grad_()
    out = fake_quantize(mine, scale, zero_point, qmin, qmax, axis)
    expected = _fused(ref, scale, zero_point, qmin, qmax, axis)
    assert torch.equal(out, expected)
    grad = torch.randn(x.shape, generator=g)
    out.backward(grad)
    expected.backward(grad)
    assert torch.equal(mine.grad, ref.grad)
    assert 0 < int((ref.grad == 0).sum()) < x.numel()  # both regimes: clipped values get no gradient


def test_covering_form_has_identity_gradient_and_fused_values():
    w = torch.randn(8, 3, 3, 3)
    scale = w.abs().amax((1, 2, 3)) / 127
    zero_point = torch.zeros(8, dtype=torch.int32)
    leaf = w.clone().requires_grad_()
    out = fake_quantize_covering(leaf, scale, zero_point, -127, 127, 0)
    assert torch.equal(out, torch.fake_quantize_per_channel_affine(w, scale, zero_point, 0, -127, 127))
    grad = torch.randn_like(w)
    out.backward(grad)
    assert torch.equal(leaf.grad, grad)


def test_no_grad_input_and_float64_use_the_fused_kernel_semantics():
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    scale, zero_point = torch.tensor([0.02]), torch.tensor([3], dtype=torch.int32)
    assert torch.equal(fake_quantize(x, scale, zero_point, 0, 255),
                       torch.fake_quantize_per_tensor_affine(x, scale, zero_point, 0, 255))
    y = x.float()
    assert torch.equal(fake_quantize(y, scale, zero_point, 0, 255),
                       torch.fake_quantize_per_tensor_affine(y, scale, zero_point, 0, 255))
