"""Bias correction and post-training quantization (quant/bias_correction.py, quant/ptq.py) on a real
MobileFaceNet whose BatchNorms are folded into its convolutions (so its layers have biases)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import quant
from backbones import get_model
from quant.bias_correction import correctable_layers
from quant.layers import bias_scale

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def teacher() -> torch.nn.Module:
    """mbf with BatchNorm statistics from real forward passes (random init, fixed seed)."""
    torch.manual_seed(0)
    model = get_model("mbf", num_features=64, scale=1)
    with torch.no_grad():
        model.train()(torch.randn(16, 3, 112, 112))
    return model.eval()


def batches(seed: int, count: int = 2) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(8, 3, 112, 112, generator=generator) for _ in range(count)]


def channel_means(model: torch.nn.Module, names: list[str], images: torch.Tensor) -> dict[str, torch.Tensor]:
    means = {}
    modules = dict(model.named_modules())
    handles = [modules[n].register_forward_hook(
        lambda _m, _i, out, n=n: means.__setitem__(n, out.mean(dim=(0, 2, 3)) if out.dim() == 4 else out.mean(0)))
        for n in names]
    with torch.no_grad():
        model.eval()(images)
    for handle in handles:
        handle.remove()
    return means


def qcfg(**fields) -> quant.QuantConfig:
    return quant.QuantConfig(weight_bits=4, act_bits=8, bn_mode="fold", **fields)


def test_corrected_layers_reproduce_the_float_mean_outputs(teacher):
    calibration = batches(0)
    student = quant.post_training_quantize(teacher, qcfg(bias_correction=True), calibration).student
    names = correctable_layers(student)
    assert len(names) > 20  # every conv of mbf has a bias once its BatchNorm is folded
    images = torch.cat(calibration)
    # the float twin: the folded teacher (same names, unquantized, uncorrected biases)
    folded = quant.quantize_model(teacher, quant.QuantConfig(weight_bits=32, act_bits=32, bn_mode="fold"))
    float_means = channel_means(folded, names, images)
    corrected = channel_means(student, names, images)
    uncorrected = channel_means(quant.post_training_quantize(teacher, qcfg(), calibration).student, names, images)

    modules = dict(student.named_modules())

    def worst(means: dict[str, torch.Tensor], allowance: bool = False) -> float:
        """Largest shift relative to the layer's largest mean; with ``allowance``, beyond half a step of the
        int32 bias grid s_in * s_w, which the deploy student (like an int8 kernel) rounds its bias onto."""
        shifts = {n: (means[n] - float_means[n]).abs() for n in names}
        if allowance:
            shifts = {n: (s - 0.5 * bias_scale(modules[n])).clamp_min(0.0) for n, s in shifts.items()}
        return max(float(shifts[n].max() / (float_means[n].abs().max() + 1e-3)) for n in names)
    # exact up to rounding: adding the shift after a layer and inside its (int32-gridded) bias differ by
    # rounding, which can also flip an 8-bit activation rounding downstream
    assert all(modules[n].quantize_bias for n in names)
    assert worst(corrected, allowance=True) < 0.1 * worst(uncorrected), (worst(corrected, True), worst(uncorrected))
    assert worst(uncorrected) > 1e-2  # without the correction the 4-bit weights did shift the means


def test_correction_brings_unseen_embeddings_closer_to_the_teacher(teacher):
    calibration, unseen = batches(0), torch.cat(batches(1))
    with torch.no_grad():
        target = teacher(unseen)
    cosines = {}
    for corrected in (False, True):
        student = quant.post_training_quantize(teacher, qcfg(bias_correction=corrected), calibration).student
        with torch.no_grad():
            cosines[corrected] = float(F.cosine_similarity(student(unseen), target).mean())
    assert cosines[True] > cosines[False], cosines


def test_post_training_quantize_leaves_the_model_alone_and_freezes_ranges(teacher):
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    result = quant.post_training_quantize(teacher, qcfg(bias_correction=True, equalize=True), batches(0))
    student = result.student
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert all(not q.observer_enabled and q.calibrated for _, q in quant.quantizers(student))
    images = torch.randn(2, 3, 112, 112)
    with torch.no_grad():  # the equalised reference: another model, the same function
        assert result.reference is not teacher
        assert torch.allclose(result.reference.eval()(images), teacher.eval()(images), atol=1e-4, rtol=1e-4)
    plain = quant.post_training_quantize(teacher, qcfg(), batches(0), calibration_batches=0)
    assert plain.reference is teacher and all(q.observer_enabled for _, q in quant.quantizers(plain.student))
    with pytest.raises(ValueError, match="got no batches"):
        quant.post_training_quantize(teacher, qcfg(), [])
    with pytest.raises(ValueError, match="bias_correction=True corrects biases after calibration"):
        quant.post_training_quantize(teacher, qcfg(bias_correction=True), batches(0), calibration_batches=0)


def test_reference_of_another_architecture_is_an_error(teacher):
    student = quant.post_training_quantize(teacher, qcfg(), batches(0)).student
    with pytest.raises(ValueError, match="the float reference has no module"):
        quant.correct_biases(student, get_model("r18", num_features=64), torch.randn(2, 3, 112, 112))
