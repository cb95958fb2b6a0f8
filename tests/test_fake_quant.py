"""quant.fake_quant's CPU forms (compiled and eager) are bit-equal to torch's fused fake-quant kernels,
values and gradients; the compiled LSQ form matches torch's learnable kernel."""
import pytest
import torch

from quant import cpu_kernels
from quant.fake_quant import _fused, _Learnable, fake_quantize, fake_quantize_covering, fake_quantize_learnable


@pytest.fixture(params=[True, False], ids=["compiled", "eager"])
def compiled(request, monkeypatch):
    """Run a test with the compiled kernels and again with the eager forms they fall back to."""
    monkeypatch.setattr(cpu_kernels, "_enabled", request.param)
    return request.param


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
def test_cpu_form_equals_fused_kernel(axis, channels, qmin, qmax, zeros, seed, compiled):
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


def test_covering_form_has_identity_gradient_and_fused_values(compiled):
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


@pytest.mark.parametrize("zero_point", [7.3, 6.6, -2.0, 70.0])  # (at exact halves torch rounds z up in backward)
def test_learnable_form_matches_torch_lsq_kernel(zero_point, compiled):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(8, 16, 6, 6, generator=g) * 0.8  # part of it beyond the grid [0, 63] * 0.03
    grad = torch.randn(x.shape, generator=g)
    results = []
    for fn in (fake_quantize_learnable, torch._fake_quantize_learnable_per_tensor_affine):
        leaf = x.clone().requires_grad_()
        scale = torch.tensor([0.03], requires_grad=True)
        zp = torch.tensor([zero_point], requires_grad=True)
        out = fn(leaf, scale, zp, 0, 63, 0.01)
        out.backward(grad)
        results.append((out, leaf.grad, scale.grad, zp.grad))
    (out, dx, ds, dz), (ref, ref_dx, ref_ds, ref_dz) = results
    assert torch.equal(out, ref) and torch.equal(dx, ref_dx)
    assert 0 < int((ref_dx == 0).sum()) < x.numel()
    torch.testing.assert_close(ds, ref_ds, rtol=1e-4, atol=1e-6)  # sums over the tensor: float rounding
    torch.testing.assert_close(dz, ref_dz, rtol=1e-4, atol=1e-6)


def test_a_network_of_shapes_stays_compiled(monkeypatch, recwarn):
    """Every tensor a face network quantizes (activations of every rank, per-channel weights with one row,
    one column or square, LSQ with zero points on and off the grid's ends), under autocast or not, on one
    thread or two, runs compiled: dynamo's recompile limit is not reached, which would silently turn the rest
    of a training run eager."""
    monkeypatch.setattr(cpu_kernels, "_enabled", True)
    shapes = [(4, 8, 5, 5), (4, 8, 6, 6), (2, 3), (7,), (16, 16, 3, 3), (16, 1, 3, 3), (1, 16, 3, 3), (8, 8),
              (64,), (5, 7, 1, 1), (32, 512), (3, 1), (9, 1, 1, 1), (1, 5), (2, 70, 70)]
    threads = torch.get_num_threads()
    try:
        for k, shape in enumerate(shapes):
            torch.set_num_threads(1 + k % 2)
            for axis, autocast in ((None, False), (0, True)):
                with torch.autocast("cpu", enabled=autocast):
                    _quantize_once(shape, axis, k)
    finally:
        torch.set_num_threads(threads)
    assert cpu_kernels.compiling(), [str(w.message) for w in recwarn]


def _quantize_once(shape: tuple[int, ...], axis: int | None, k: int) -> None:
    channels = shape[0] if axis == 0 else 1
    scale = torch.full((channels,), 0.1)
    zero_point = torch.zeros(channels, dtype=torch.int32)
    x = torch.randn((2,) + shape)[1]  # a view, as activations often are
    fake_quantize(x.clone().requires_grad_(), scale, zero_point, -128, 127, axis).sum().backward()
    fake_quantize_covering(x, scale, zero_point, -128, 127, axis)
    learnable = torch.randn(shape).requires_grad_()
    zero = torch.tensor([(3.0, -2.0, 300.0)[k % 3]], requires_grad=True)  # inside, below and above [0, 255]
    fake_quantize_learnable(learnable, torch.tensor([0.1], requires_grad=True), zero, 0, 255, 1.0).sum().backward()


def test_a_kernel_that_cannot_compile_falls_back_with_one_warning(monkeypatch):
    monkeypatch.setattr(cpu_kernels, "_enabled", True)

    def untraceable(x):
        torch._dynamo.graph_break()  # fullgraph compilation refuses this
        return x * 2

    with pytest.warns(RuntimeWarning, match="falls back to eager ops"):
        assert cpu_kernels.run(untraceable, torch.ones(4)) is None
    assert not cpu_kernels.compiling()
    assert cpu_kernels.run(cpu_kernels.fake_quant, torch.ones(4), *[torch.tensor(1.0)] * 4) is None
    x = torch.randn(64)  # and fake quantization still computes the fused kernel's values
    scale, zp = torch.tensor([0.05]), torch.tensor([4], dtype=torch.int32)
    assert torch.equal(fake_quantize(x, scale, zp, 0, 15), torch.fake_quantize_per_tensor_affine(x, scale, zp, 0, 15))


@pytest.mark.cuda
@pytest.mark.parametrize("axis,channels,qmin,qmax,zeros", CASES)
def test_cuda_fused_kernels_never_sync_and_equal_the_int_zero_point_kernels(axis, channels, qmin, qmax, zeros):
    # per channel the library passes a float zero point (an int32 one makes torch check its range with .item())
    g = torch.Generator().manual_seed(7)
    scale = torch.rand(channels, generator=g) * 0.05 + 1e-3
    zero_point = (torch.randint(qmin, qmax + 1, (channels,), generator=g, dtype=torch.int32) if zeros == "random"
                  else torch.zeros(channels, dtype=torch.int32))
    x = _tensor_with_ties(scale, (channels, 24, 5, 5), axis, 0).cuda()
    scale, zero_point, grad = scale.cuda(), zero_point.cuda(), torch.randn(x.shape, generator=g).cuda()
    mine, ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = fake_quantize(mine, scale, zero_point, qmin, qmax, axis)
        out.backward(grad)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    if axis is None:
        expected = torch.fake_quantize_per_tensor_affine(ref, scale, zero_point, qmin, qmax)
    else:
        expected = torch.fake_quantize_per_channel_affine(ref, scale, zero_point, axis, qmin, qmax)
    expected.backward(grad)
    assert torch.equal(out, expected) and torch.equal(mine.grad, ref.grad)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("zero_point", [7.3, -2.0, 70.0])
def test_learnable_form_off_the_compiled_path_matches_torch_lsq_kernel_without_host_reads(zero_point, device,
                                                                                         monkeypatch):
    # cpu: the eager backward (what a GPU runs), compiling off; cuda: the fused forward too, with syncs as errors
    monkeypatch.setattr(cpu_kernels, "_enabled", False)
    g = torch.Generator().manual_seed(4)
    x = (torch.randn(8, 16, 6, 6, generator=g) * 0.8).to(device)
    grad = torch.randn(x.shape, generator=g).to(device)
    results = []
    for fn in (_Learnable.apply, torch._fake_quantize_learnable_per_tensor_affine):
        leaf = x.clone().requires_grad_()
        scale = torch.tensor([0.03], device=device, requires_grad=True)
        zp = torch.tensor([zero_point], device=device, requires_grad=True)
        if device == "cuda" and fn is _Learnable.apply:
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
        try:
            out = fn(leaf, scale, zp, 0, 63, 0.01)
            out.backward(grad)
        finally:
            if device == "cuda":
                torch.cuda.set_sync_debug_mode("default")
        results.append((out, leaf.grad, scale.grad, zp.grad))
    (out, dx, ds, dz), (ref, ref_dx, ref_ds, ref_dz) = results
    assert torch.equal(out, ref) and torch.equal(dx, ref_dx)
    assert 0 < int((ref_dx == 0).sum()) < x.numel()
    torch.testing.assert_close(ds, ref_ds, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(dz, ref_dz, rtol=1e-4, atol=1e-6)
