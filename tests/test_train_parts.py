"""The training loop's parts: lr schedules, distillation losses, RNG/checkpoint state, metrics file."""
from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distill.margin import MarginHead
from distill.losses import DistillationLoss
from utils.logging import MetricsLogger, read_metrics
from distill.schedule import lr_lambda, milestone_steps, scaled_lr, total_steps
from distill.train_state import (capture_rng_state, list_checkpoints, load_training_state, restore_rng_state,
                               rng_isolated, save_training_state)


# ---- schedules ----------------------------------------------------------------------------------

def test_quantface_lr_rule_and_step_counts():
    assert scaled_lr(0.0, 128, 4) == pytest.approx(0.1)          # 0.1 x 512 / 512
    assert scaled_lr(0.0, 64, 1) == pytest.approx(0.0125)
    assert scaled_lr(0.02, 64, 8) == 0.02                          # an explicit lr is kept
    assert total_steps(0, 11, 100) == 1100
    assert total_steps(250, 11, 100) == 250                        # num_steps wins over epochs
    with pytest.raises(ValueError, match="nothing to train"):
        total_steps(0, 0, 100)


def test_step_schedule_decays_in_the_last_eleventh():
    steps = 1100  # 11 epochs of 100 batches; QuantFace drops lr x 0.1 for the last epoch
    factor = lr_lambda("step", steps, milestones=[0.909], gamma=0.1)
    assert milestone_steps([0.909], steps) == [1000]
    assert factor(0) == 1.0 and factor(999) == 1.0
    assert factor(1000) == pytest.approx(0.1) and factor(1099) == pytest.approx(0.1)
    two = lr_lambda("step", 100, milestones=[0.5, 0.75], gamma=0.5)
    assert [two(s) for s in (49, 50, 74, 75)] == [1.0, 0.5, 0.5, 0.25]
    with pytest.raises(ValueError, match="fractions"):
        lr_lambda("step", 100, milestones=[50])


def test_warmup_cosine_and_poly():
    cosine = lr_lambda("cosine", 110, warmup_steps=10)
    assert cosine(0) == pytest.approx(0.1) and cosine(9) == pytest.approx(1.0)
    assert cosine(10) == pytest.approx(1.0)
    assert cosine(60) == pytest.approx(0.5)                        # half way through the decay
    assert cosine(109) == pytest.approx(0.5 * (1 + math.cos(math.pi * 99 / 100)))
    poly = lr_lambda("poly", 100)
    assert poly(0) == 1.0 and poly(50) == pytest.approx(0.25)
    values = [poly(s) for s in range(100)]
    assert all(a > b for a, b in zip(values, values[1:]))
    with pytest.raises(ValueError, match="unknown scheduler"):
        lr_lambda("linear", 100)
    with pytest.raises(ValueError, match="warmup_steps"):
        lr_lambda("cosine", 100, warmup_steps=100)


# ---- distillation losses ------------------------------------------------------------------------

def test_losses_match_their_definitions():
    torch.manual_seed(0)
    s, t = torch.randn(6, 32), torch.randn(6, 32)
    cos = F.cosine_similarity(s, t, dim=1)
    mse = DistillationLoss("mse", 32, 32)(s, t)
    assert mse == pytest.approx(torch.nn.MSELoss()(F.normalize(s), F.normalize(t)).item(), rel=1e-6)
    assert mse == pytest.approx((2 * (1 - cos) / 32).mean().item(), rel=1e-5)
    assert DistillationLoss("cosine", 32, 32)(s, t) == pytest.approx((1 - cos).mean().item(), rel=1e-5)
    assert DistillationLoss("angular", 32, 32)(s, t) == pytest.approx(((1 - cos) ** 2).mean().item(), rel=1e-5)
    # only directions count: scaling either embedding changes nothing; identical directions give 0
    for kind in ("mse", "cosine", "angular"):
        loss = DistillationLoss(kind, 32, 32)
        assert loss(3 * s, 0.5 * t).item() == pytest.approx(loss(s, t).item(), rel=1e-5)
        assert loss(2 * t, t).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="loss=.kl. is not one of"):
        DistillationLoss("kl", 32, 32)


def test_projection_for_differing_embedding_sizes_is_trainable():
    torch.manual_seed(0)
    loss = DistillationLoss("mse", 16, 48)
    assert loss.projection is not None and loss.projection.weight.shape == (48, 16)
    assert DistillationLoss("mse", 48, 48).projection is None
    s = torch.randn(64, 16)
    t = s @ torch.randn(16, 48)  # a teacher that is a linear map of the student: the projection can match it
    opt = torch.optim.SGD(loss.parameters(), lr=20.0, momentum=0.9)
    first = loss(s, t).item()
    for _ in range(15):
        opt.zero_grad()
        value = loss(s, t)
        value.backward()
        opt.step()
    assert value.item() < 0.1 * first
    with pytest.raises(ValueError, match="differ in shape"):
        DistillationLoss("mse", 16, 16)(torch.randn(2, 16), torch.randn(2, 8))


def test_margin_heads_match_a_hand_computation():
    torch.manual_seed(0)
    head = MarginHead(4, 3, "arcface", s=10.0, m=0.5)
    embedding, labels = torch.randn(2, 4), torch.tensor([2, 0])
    cos = F.normalize(embedding) @ F.normalize(head.weight.detach()).T
    expected = cos.clone()
    for row, label in enumerate(labels.tolist()):
        theta = math.acos(float(cos[row, label]))
        expected[row, label] = math.cos(theta + 0.5) if theta + 0.5 < math.pi else \
            float(cos[row, label]) - math.sin(math.pi - 0.5) * 0.5
    torch.testing.assert_close(head.logits(embedding, labels).detach(), 10.0 * expected, rtol=1e-5, atol=1e-5)
    cosface = MarginHead(4, 3, "cosface", s=10.0, m=0.35)
    cosface.weight.data.copy_(head.weight.data)
    shifted = cos.clone()
    shifted[torch.arange(2), labels] -= 0.35
    torch.testing.assert_close(cosface.logits(embedding, labels).detach(), 10.0 * shifted, rtol=1e-5, atol=1e-5)
    assert head(embedding, labels).item() == pytest.approx(
        F.cross_entropy(10.0 * expected, labels).item(), rel=1e-5)
    # theta + m past pi: insightface's monotonic fallback, not cos(theta + m) turning back up
    opposite = -F.normalize(head.weight.detach()[1:2])
    assert head.logits(opposite, torch.tensor([1]))[0, 1].item() == pytest.approx(
        10.0 * (-1.0 - math.sin(math.pi - 0.5) * 0.5), rel=1e-4)
    with pytest.raises(ValueError, match=r"class labels must lie in 0..2, the batch has \[3\]"):
        head(embedding, torch.tensor([0, 3]))
    loss = DistillationLoss("mse", 4, 4, head, head_weight=0.5)
    teacher = torch.randn(2, 4)
    assert loss(embedding, teacher, labels).item() == pytest.approx(
        DistillationLoss("mse", 4, 4)(embedding, teacher).item() + 0.5 * head(embedding, labels).item(), rel=1e-5)
    assert loss.learns and not DistillationLoss("mse", 4, 4).learns


# ---- RNG and checkpoint state -------------------------------------------------------------------

def _draw() -> tuple:
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)], \
        float(np.random.randn()), random.gauss(0, 1)


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    np.random.randn(), random.gauss(0, 1)  # leave cached gaussians in both generators
    state = capture_rng_state()
    expected = _draw()
    path = save_training_state(tmp_path, 7, {"student": {}, "optimizer": {}, "scheduler": {}, "rng": [state]},
                               keep_last=2)
    _draw(), _draw()
    restored = load_training_state(path)  # torch.load(weights_only=True) inside
    restore_rng_state(restored["rng"][0])
    assert _draw() == expected
    assert restored["step"] == 7


@pytest.mark.parametrize("device", ["meta", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_rng_state_restores_from_a_checkpoint_mapped_to_another_device(tmp_path, device):
    # resuming on a GPU maps the checkpoint there; the RNG states must still come back as CPU tensors
    torch.manual_seed(5), np.random.seed(6), random.seed(7)
    state = capture_rng_state()
    expected = _draw()
    path = save_training_state(tmp_path, 3, {"student": {"w": torch.ones(2)}, "optimizer": {}, "scheduler": {},
                                             "rng": [state]}, keep_last=1)
    _draw()
    restored = load_training_state(path, map_location=device)
    assert restored["student"]["w"].device.type == device
    restore_rng_state(restored["rng"][0])
    assert _draw() == expected


def test_checkpoints_keep_only_the_last(tmp_path):
    for step in (10, 20, 30, 40):
        save_training_state(tmp_path, step, {"student": {"w": torch.full((2,), step)}, "optimizer": {},
                                             "scheduler": {}, "rng": []}, keep_last=2)
    found = list_checkpoints(tmp_path)
    assert [s for s, _ in found] == [30, 40]
    assert torch.equal(load_training_state(found[-1][1])["student"]["w"], torch.full((2,), 40))
    assert not list(tmp_path.rglob("*.tmp"))
    (tmp_path / "bogus.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(Exception, match="cannot read training checkpoint"):
        load_training_state(tmp_path / "bogus.pt")


def test_data_loading_does_not_shift_the_training_random_stream():
    loader = torch.utils.data.DataLoader(torch.arange(6.0), batch_size=2)  # draws a seed per epoch
    torch.manual_seed(0)
    expected = torch.rand(2)
    torch.manual_seed(0)
    batches = list(rng_isolated(loader))
    assert torch.equal(torch.rand(2), expected)
    assert [b.tolist() for b in batches] == [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]
    torch.manual_seed(0)
    list(loader)
    assert not torch.equal(torch.rand(2), expected)  # what rng_isolated protects against


# ---- metrics ------------------------------------------------------------------------------------

def test_metrics_file_is_json_lines_and_resume_drops_later_steps(tmp_path):
    logger = MetricsLogger(tmp_path)
    for step in (10, 20, 30):
        logger.log({"step": step, "epoch": 0, "loss": 1.0 / step, "lr": 0.1, "images_per_s": 5.0})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[0])["step"] == 10 and "time" in json.loads(lines[0])
    with (tmp_path / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 40, "lo')  # a line torn by a kill
    MetricsLogger(tmp_path, resume_step=20).log({"step": 30, "loss": 0.5})
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [10, 20, 30]
    assert read_metrics(tmp_path / "metrics.jsonl")[-1]["loss"] == 0.5
    MetricsLogger(tmp_path / "other", enabled=False).log({"step": 1})
    assert not (tmp_path / "other").exists()


# ---- optimizer parameter groups -----------------------------------------------------------------

def test_weight_decay_skips_norms_biases_and_quantizer_scales():
    import quant
    from backbones import get_model
    from distill.setup import param_groups

    model = quant.quantize_model(get_model("mbf", num_features=32, scale=1),
                                 quant.QuantConfig(weight_observer="lsq", act_observer="lsq"))
    decay, no_decay = param_groups([model], 5e-4)
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    exempt = {names[id(p)] for p in no_decay["params"]}
    assert decayed.isdisjoint(exempt) and decayed | exempt == {n for n, p in model.named_parameters()}
    assert {"layers.0.layers.0.weight", "layers.0.layers.2.weight", "features.layers.2.weight"} <= decayed  # conv, PReLU, fc
    assert {"layers.0.layers.1.weight", "layers.0.layers.1.bias", "features.layers.3.weight",   # BatchNorm
            "layers.0.layers.0.weight_quant.scale", "layers.0.layers.0.input_quant.scale",     # LSQ(+)
            "layers.0.layers.0.input_quant.zero_point"} <= exempt
    assert not any("_quant." in n or n.endswith("bias") for n in decayed)
    # with their own learning rate, quantizer parameters move to a third group, and only they do
    decay2, no_decay2, quantizer = param_groups([model], 5e-4, quantizer_lr=0.1)
    assert quantizer["lr"] == 0.1 and quantizer["weight_decay"] == 0.0
    assert {names[id(p)] for p in quantizer["params"]} == {n for n in exempt if "_quant." in n}
    assert {names[id(p)] for p in no_decay2["params"]} == {n for n in exempt if "_quant." not in n}
    assert [id(p) for p in decay2["params"]] == [id(p) for p in decay["params"]]
