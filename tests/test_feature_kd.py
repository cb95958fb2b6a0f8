"""Feature distillation (utils/feature_kd.py) on a real MobileFaceNet and its quantized copy."""
from __future__ import annotations

import copy

import pytest
import torch

import quant
from backbones import get_model
from distill.features import FeatureDistillation, match_modules

pytestmark = pytest.mark.usefixtures("one_thread")
BLOCKS = ["layers.?", "conv_sep"]


@pytest.fixture(scope="module")
def teacher() -> torch.nn.Module:
    torch.manual_seed(0)
    return get_model("mbf", num_features=64, scale=1).eval()


def test_patterns_pick_modules_in_model_order_and_a_pattern_matching_nothing_is_an_error(teacher):
    names = match_modules(teacher, ["conv_sep", "layers.?"])
    assert names == [f"layers.{i}" for i in range(len(teacher.layers))] + ["conv_sep"]
    with pytest.raises(ValueError, match=r"'stages\.\*' matches no module; names look like layers"):
        match_modules(teacher, ["stages.*"])


def test_identical_student_has_zero_loss_and_a_quantized_one_a_relative_error(teacher):
    images = torch.randn(2, 3, 112, 112)
    student = copy.deepcopy(teacher)
    same = FeatureDistillation(teacher, student, BLOCKS)
    with torch.no_grad():
        teacher(images)
        student(images)
    assert same.loss().item() == 0.0
    assert not same.teacher_out and not same.student_out  # cleared for the next step
    same.close()

    w4 = quant.calibrate(quant.quantize_model(teacher, quant.QuantConfig(weight_bits=4, act_bits=4)), [images])
    w8 = quant.calibrate(quant.quantize_model(teacher, quant.QuantConfig(weight_bits=8, act_bits=8)), [images])
    errors = {}
    for label, model in (("w4", w4), ("w8", w8)):
        features = FeatureDistillation(teacher, model.eval(), BLOCKS)
        with torch.no_grad():
            teacher(images)
            model(images)
        errors[label] = features.loss().item()
        features.close()
    assert 0.0 < errors["w8"] < errors["w4"], errors  # more bits, closer intermediate features


def test_loss_trains_the_student_and_hooks_come_off(teacher):
    images = torch.randn(2, 3, 112, 112)
    student = quant.calibrate(quant.quantize_model(teacher, quant.QuantConfig(weight_bits=4, act_bits=4)), [images])
    features = FeatureDistillation(teacher, student.train(), BLOCKS)
    with torch.no_grad():
        teacher(images)
    student(images)
    features.loss().backward()
    first = student.get_submodule("layers.0.layers.0").weight  # the first conv gets a direct signal
    assert first.grad is not None and first.grad.abs().sum() > 0
    features.close()
    student(images)
    assert not features.student_out  # no hook left behind
    with pytest.raises(RuntimeError, match="did not run in both"):
        features.loss()


def test_student_without_the_named_module_is_an_error(teacher):
    other = get_model("r18", num_features=64)
    with pytest.raises(ValueError, match="the student has no module 'conv_sep'"):
        FeatureDistillation(teacher, other, ["conv_sep"])
