"""Per-layer sensitivity, the knapsack that fits a size budget, and training with ``size_budget``."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

import quant
from assets import ensure_asset
from backbones import get_model
from deploy.packed import load_packed, save_packed
from quant.config import QuantConfigError
from quant.sensitivity import act_sensitivity, allocate_weight_bits, weight_sensitivity, weighted_layers
from tests.helpers import run_inprocess, write_config
from tests.test_train_run import write_faces, write_teacher

pytestmark = pytest.mark.usefixtures("one_thread")
MBF = {"num_features": 32, "blocks": [1, 1, 1, 1], "scale": 1}


def test_the_knapsack_finds_the_exhaustive_optimum():
    rng = np.random.default_rng(0)
    counts = {f"l{i}": int(rng.integers(100, 5000)) for i in range(5)}
    sensitivity = {n: {b: float(rng.uniform(0, 1) * 2.0 ** -b) for b in (2, 4, 8)} for n in counts}
    for budget in (3.0, 4.5, 6.0):
        bits_budget = budget * sum(counts.values())
        got = allocate_weight_bits(sensitivity, counts, bits_budget)
        assert sum(counts[n] * b for n, b in got.items()) <= bits_budget
        feasible = [dict(zip(counts, choice)) for choice in itertools.product((2, 4, 8), repeat=len(counts))
                    if sum(counts[n] * b for n, b in zip(counts, choice)) <= bits_budget * (1 - 1e-3)]
        best = min(sum(sensitivity[n][b] for n, b in c.items()) for c in feasible)
        assert sum(sensitivity[n][b] for n, b in got.items()) <= best + 1e-12


def test_a_budget_below_the_narrowest_widths_is_refused():
    with pytest.raises(QuantConfigError, match="size budget too small"):
        allocate_weight_bits({"a": {2: 0.1, 8: 0.0}}, {"a": 1000}, 1000.0)


@pytest.fixture(scope="module")
def model_and_faces():
    torch.manual_seed(0)
    model = get_model("mbf", **MBF).eval()
    faces = [torch.randn(8, 3, 112, 112, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    return model, faces


def test_narrower_widths_move_every_layer_more(model_and_faces):
    model, faces = model_and_faces
    before = {k: v.clone() for k, v in model.state_dict().items()}
    table = weight_sensitivity(model, faces, widths=(2, 8))
    assert set(table) == set(weighted_layers(model))
    assert all(row[2] > row[8] >= 0 for row in table.values()), table
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # weights put back
    acts = act_sensitivity(model, faces, widths=(2, 8))
    assert sum(row[2] for row in acts.values()) > sum(row[8] for row in acts.values())
    assert not model._forward_pre_hooks and all(not m._forward_pre_hooks for m in model.modules())


def test_training_with_a_size_budget_ships_a_packed_file_within_it(tmp_path):
    teacher = write_teacher(tmp_path / "mbf.pt", "mbf", **MBF)
    out = tmp_path / "run"
    config = write_config(tmp_path / "cfg.py", network="mbf", embedding_size=32, teacher=str(teacher),
                          data_path=str(write_faces(tmp_path / "faces", 4)), batch_size=2, num_steps=1,
                          size_budget=0.2, assets_dir=str(tmp_path / "cache"), output=str(out),
                          generator_weights=str(ensure_asset("gan_face_generate")))
    student, _ = run_inprocess(config)
    widths = {q.num_bits for name, q in quant.quantizers(student) if name.endswith("weight_quant")}
    assert len(widths) > 1  # mixed
    saved = json.loads((out / "config.json").read_text())["layer_bits"]
    assert saved and all(v[1] == 8 for v in saved.values())
    fp32_bytes = teacher.stat().st_size  # the float checkpoint
    final, meta = quant.load_any_model(out / "student_final.pt")
    packed = save_packed(tmp_path / "s.qfpack", final.eval(), meta)
    assert 0.17 * fp32_bytes < packed.stat().st_size <= 0.2 * fp32_bytes  # the budget, nearly filled
    restored, _ = load_packed(packed)
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        assert torch.equal(restored.eval()(x), final(x))  # each layer at its own width, restored exactly
    assert len(list((tmp_path / "cache" / "sensitivity").glob("*.json"))) == 1  # measured once, cached
    run_inprocess(config, f"output={tmp_path / 'again'}")
    assert json.loads((tmp_path / "again" / "config.json").read_text())["layer_bits"] == saved


def test_the_sensitivity_command_prints_plots_and_allocates(tmp_path, capsys):
    from tools import sensitivity
    teacher = write_teacher(tmp_path / "mbf.pt", "mbf", **MBF)
    assert sensitivity.main([str(teacher), "--budget", "0.3", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    table = json.loads((tmp_path / "out" / "sensitivity.json").read_text())["sensitivity"]
    assert set(table) == set(weighted_layers(get_model("mbf", **MBF))) and (tmp_path / "out" / "sensitivity.png").is_file()
    assert "size_budget=0.3: mean weight width" in out
    assert sensitivity.main([str(tmp_path / "out" / "sensitivity.json")]) == 2  # not a model: one line


def test_the_front_scores_uniform_and_allocated_students_by_packed_size(tmp_path, capsys):
    from lab import front
    teacher = write_teacher(tmp_path / "mbf.pt", "mbf", **MBF)
    config = write_config(tmp_path / "cfg.py", network="mbf", embedding_size=32, teacher=str(teacher),
                          data_path=str(write_faces(tmp_path / "faces", 4)), batch_size=2, calibration_batches=1,
                          observer_steps=0, generator_weights=str(ensure_asset("gan_face_generate")))
    assert front.main([str(config), "--uniform", "8", "4", "--budgets", "0.2", "--out", str(tmp_path / "f")]) == 0
    points = json.loads((tmp_path / "f" / "front.json").read_text())
    assert [p.get("weight_bits", p.get("budget")) for p in points] == [8, 4, 0.2]
    sizes = [p["size_ratio"] for p in points]
    assert sizes[0] > sizes[1] and sizes[2] <= 0.2 and (tmp_path / "f" / "front.png").is_file()
    assert all(-1 <= p["real_cos_mean"] <= 1 and p["seeds"] == [0] and "spread" in p for p in points)
