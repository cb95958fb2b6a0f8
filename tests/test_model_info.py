"""tools/model_info.py: MAC counting with hooks, parameter counts, QuantFace-style model size, CLI."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from backbones import get_model
from tools.model_info import count_macs, main, model_stats, size_mb


pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),              # 4 x 8 x 8 outputs x (3*3*3) = 6912 MACs
        nn.BatchNorm2d(4), nn.PReLU(4),             # not counted
        nn.Conv2d(4, 8, 3, padding=1, groups=2),    # 8 x 8 x 8 outputs x (2*3*3) = 9216 MACs
        nn.Conv2d(8, 8, 1, stride=2),               # 8 x 4 x 4 outputs x 8 = 1024 MACs
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 10))                   # 128 x 10 = 1280 MACs


def test_macs_count_convolutions_groups_strides_and_linears():
    assert count_macs(_tiny(), image_size=8) == 6912 + 9216 + 1024 + 1280


def test_counting_leaves_the_model_as_it_was():
    model = _tiny().train()
    count_macs(model, image_size=8)
    assert model.training
    assert all(not m._forward_hooks for m in model.modules())


def test_model_stats_of_mbf():
    stats = model_stats(get_model("mbf"), bits=(32, 8, 4))
    assert stats["params"] == sum(p.numel() for p in get_model("mbf").parameters())
    assert stats["params"] / 1e6 == pytest.approx(2.06, abs=0.005)
    assert stats["macs"] / 1e9 == pytest.approx(0.438, abs=0.001)
    assert stats["buffers"] > 0
    assert stats["size_mb"] == {32: pytest.approx(stats["params"] * 4 / 1e6),
                                8: pytest.approx(stats["params"] / 1e6),
                                4: pytest.approx(stats["params"] / 2e6)}


def test_vargfacenet_matches_the_published_cost():
    stats = model_stats(get_model("vargfacenet"), bits=(32,))
    assert stats["params"] / 1e6 == pytest.approx(5.2, rel=0.03)
    assert stats["macs"] / 1e6 == pytest.approx(1022 / 2, rel=0.03)  # authors: 1022 MFLOPs


def test_size_convention_reproduces_the_quantface_table():
    with torch.device("meta"):
        params = sum(p.numel() for p in get_model("r100").parameters())
    # QuantFace lists ResNet100 at 261.22 MB (FP32) and 65.31 MB (w8a8): decimal MB, not MiB (248.5)
    assert size_mb(params, 32) == pytest.approx(261.22, rel=3e-3)
    assert size_mb(params, 8) == pytest.approx(65.31, rel=3e-3)
    assert size_mb(params, 6) == pytest.approx(size_mb(params, 8) * 0.75)


def test_cli_prints_params_macs_and_sizes(capsys):
    stats = main(["mbf", "--bits", "8", "4", "--num-features", "128", "--kwargs", '{"scale": 1}'])
    out = capsys.readouterr().out
    assert set(stats["size_mb"]) == {8, 4}
    assert stats["params"] / 1e6 == pytest.approx(1.00, abs=0.005)
    assert "1.00 M parameters" in out and "GMACs" in out
    assert " 8-bit:" in out and " 4-bit:" in out and "MB" in out


def test_cli_rejects_an_unknown_network_with_a_suggestion(capsys):
    with pytest.raises(SystemExit) as info:
        main(["r1000"])
    assert info.value.code == 2
    assert "did you mean" in capsys.readouterr().err

