"""Quantized students saved and rebuilt from real checkpoint files."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from backbones import get_model
from quant import (QuantConfig, calibrate, load_any_model, load_quantized, quantize_model, quantizers,
                   refresh_weight_qparams, save_quantized)
from utils.checkpoint import CheckpointError, read_checkpoint, save_checkpoint

KWARGS = {"num_features": 64}

pytestmark = pytest.mark.usefixtures("one_thread")


def trained_student(qcfg: QuantConfig) -> torch.nn.Module:
    """A small r18 student, calibrated, whose weights and learned scales then moved as training would."""
    torch.manual_seed(0)
    student = quantize_model(get_model("r18", **KWARGS), qcfg)
    calibrate(student, [torch.randn(1, 3, 112, 112)])
    with torch.no_grad():
        for name, p in student.named_parameters():
            if name.endswith("scale"):
                p.mul_(1.0 + 0.05 * torch.rand_like(p))
            else:
                p.add_(0.01 * torch.randn_like(p))
    return student.eval()


@pytest.mark.parametrize("qcfg", [
    QuantConfig(),
    QuantConfig(quant_mode="quantface", act_observer="lsq", bn_mode="fold", weight_bits=4, act_bits=4),
    QuantConfig(act_observer="percentile", bn_mode="frozen", layer_bits={"conv1": [8, 8], "layer4.*": [6, 32]}),
], ids=["deploy-w8a8", "quantface-lsq-fold-w4a4", "deploy-percentile-frozen-mixed"])
def test_save_then_load_gives_identical_outputs(tmp_path: Path, qcfg: QuantConfig) -> None:
    student = trained_student(qcfg)
    path = save_quantized(tmp_path / "student.pt", student, "r18", KWARGS, qcfg, meta={"teacher": "t.pt"})
    state, meta = read_checkpoint(path)
    assert meta["network"] == "r18" and meta["network_kwargs"] == KWARGS and meta["teacher"] == "t.pt"
    assert meta["quant"] == qcfg.to_dict()
    loaded = load_quantized(path).eval()
    assert all(not q.observer_enabled and q.calibrated for _, q in quantizers(loaded))
    x = torch.randn(1, 3, 112, 112)
    with torch.no_grad():
        assert torch.equal(loaded(x), student(x))
    model, meta = load_any_model(path)
    assert meta["quant"] == qcfg.to_dict()
    refresh_weight_qparams(model)  # weight scales as the forwards above left them in ``student``
    assert model.state_dict().keys() == student.state_dict().keys()
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in model.state_dict().items())


def test_load_any_model_returns_float_models_too(tmp_path: Path) -> None:
    float_model = get_model("r18", **KWARGS).eval()
    save_checkpoint(tmp_path / "float.pt", float_model.state_dict(), {"network": "r18", "network_kwargs": KWARGS})
    torch.save(float_model.state_dict(), tmp_path / "backbone.pth")  # bare arcface_torch state_dict
    x = torch.randn(1, 3, 112, 112)
    with torch.no_grad():
        expected = float_model(x)
        model, meta = load_any_model(tmp_path / "float.pt")
        assert "quant" not in meta and torch.equal(model.eval()(x), expected)
        model, meta = load_any_model(tmp_path / "backbone.pth", network="r18")
        assert meta == {} and torch.equal(model.eval()(x), expected)
    with pytest.raises(CheckpointError, match="float checkpoint"):
        load_quantized(tmp_path / "float.pt")


def test_checkpoint_with_other_bit_widths_is_refused(tmp_path: Path) -> None:
    qcfg = QuantConfig()
    student = quantize_model(get_model("r18", **KWARGS), qcfg)
    state = student.state_dict()
    wrong = QuantConfig(weight_bits=4).to_dict()
    save_checkpoint(tmp_path / "bad.pt", state, {"network": "r18", "network_kwargs": KWARGS, "quant": wrong})
    with pytest.raises(RuntimeError, match="conv1.weight_quant.qmin: checkpoint grid -127 differs"):
        load_quantized(tmp_path / "bad.pt")
    save_checkpoint(tmp_path / "typo.pt", state, {"network": "r18", "quant": {**qcfg.to_dict(), "bn_mode": "fodl"}})
    with pytest.raises(CheckpointError, match="typo.pt.*did you mean 'fold'"):
        load_quantized(tmp_path / "typo.pt")


def test_shared_input_quantizers_round_trip_and_older_checkpoints_keep_separate_ones(tmp_path: Path) -> None:
    """Learned step sizes: a shared quantizer is one parameter after loading; a checkpoint written before
    ``share_input_quantizers`` existed (no such key in its metadata) rebuilds one quantizer per reader, so
    its two learned scales both survive."""
    kwargs, x = {"num_features": 64, "blocks": [1, 1, 1, 1]}, torch.randn(2, 3, 112, 112)
    names = ("layers.3.layers.0.layers.0.layers.0.input_quant.scale", "layers.3.layers.0.add.input1_quant.scale")
    for share in (True, False):
        qcfg = QuantConfig(act_observer="lsq", share_input_quantizers=share)
        torch.manual_seed(0)
        student = quantize_model(get_model("mbf", **kwargs), qcfg)
        calibrate(student, [torch.randn(2, 3, 112, 112)])
        with torch.no_grad():
            student.get_parameter(names[0]).mul_(1.1)  # as training moves a learned step
        student.eval()
        path = save_quantized(tmp_path / f"share_{share}.pt", student, "mbf", kwargs, qcfg)
        if not share:  # what an older checkpoint of this placement holds: no key
            state, meta = read_checkpoint(path)
            del meta["quant"]["share_input_quantizers"]
            path = save_checkpoint(tmp_path / "old.pt", state, meta)
        loaded = load_quantized(path).eval()
        scales = [loaded.get_parameter(n) for n in names]
        assert (scales[0] is scales[1]) is share and torch.equal(scales[0], student.get_parameter(names[0]))
        assert share or not torch.equal(scales[0], scales[1])
        with torch.no_grad():
            assert torch.equal(loaded(x), student(x))


def test_a_checkpoint_written_under_the_settings_older_names_loads_as_it_was_trained(tmp_path: Path) -> None:
    """Metadata written before each setting had its config key as its one name (``mode``, ``prelu_input``)
    loads under the new names: the same placement, the same outputs."""
    kwargs, x = {"num_features": 64, "blocks": [1, 1, 1, 1]}, torch.randn(2, 3, 112, 112)
    qcfg = QuantConfig(quantize_prelu_input=True, bn_mode="fold")
    torch.manual_seed(0)
    student = quantize_model(get_model("mbf", **kwargs), qcfg)
    calibrate(student, [torch.randn(2, 3, 112, 112)])
    state, meta = read_checkpoint(save_quantized(tmp_path / "new.pt", student.eval(), "mbf", kwargs, qcfg))
    quant_meta = meta["quant"]
    quant_meta["mode"], quant_meta["prelu_input"] = quant_meta.pop("quant_mode"), quant_meta.pop("quantize_prelu_input")
    loaded = load_quantized(save_checkpoint(tmp_path / "old.pt", state, meta)).eval()
    assert QuantConfig.from_dict(quant_meta) == qcfg
    with torch.no_grad():
        assert torch.equal(loaded(x), student(x))
