"""Every benchmark and study of lab/ runs end to end at tiny size and prints the ratio it exists for.

(The other tools have their own tests: fetch_assets in test_assets, generate_faces in test_data_generated,
model_info in test_model_info, demo_report in test_demo, export_model in test_deploy.)  compare_recipes, the
study tool, is here too.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from assets import ensure_asset
from backbones import get_model
from data import GeneratedFaces
from deploy import export_onnx
from deploy.baseline import quantize_static_baseline
from tests.helpers import optimized_ops, ran_in_own_process
from lab import bench_data, bench_deploy, bench_eval, bench_quant_step, bench_train, compare_recipes

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.usefixtures("one_thread")
NUMBER = r"[0-9]+\.[0-9]+"


def test_bench_quant_step_prints_quantized_over_float_ratios(capsys):
    bench_quant_step.main(["--networks", "mbf", "nope", "--batch-size", "2", "--steps", "2", "--warmup", "0",
                           "--device", "cpu"])
    out = capsys.readouterr().out
    assert "nope: not in the backbone registry" in out
    assert "freed memory reused, as training does" in out.splitlines()[0]
    for variant in ("deploy observing", "deploy frozen", "quantface observing", "quantface frozen"):
        row = re.search(rf"{variant}\s+wall\s+\d+ ms\s+ratio ({NUMBER}) \(({NUMBER})-({NUMBER})\)\s+"
                        rf"cpu\s+\d+ ms\s+ratio ({NUMBER}) \(({NUMBER})-({NUMBER})\)", out)
        assert row, out
        wall, wall_lo, wall_hi, cpu, cpu_lo, cpu_hi = map(float, row.groups())
        assert 0 < wall_lo <= wall <= wall_hi and 0 < cpu_lo <= cpu <= cpu_hi


def test_bench_train_runs_the_real_loop_and_prints_its_table(capsys):
    bench_train.main(["--networks", "mbf", "--batch-size", "2", "--steps", "4", "--observer-steps", "1",
                      "--ratio-steps", "1", "--device", "cpu"])
    out = capsys.readouterr().out
    row = re.search(rf"^mbf\s+({NUMBER})\s+({NUMBER})\s+({NUMBER})$", out, re.MULTILINE)
    assert row, out
    assert all(float(value) > 0 for value in row.groups())


def test_bench_eval_prints_verify_over_bare_forward(capsys):
    bench_eval.main(["--network", "mbf", "--batch-size", "8", "--pairs", "10", "--repeats", "1", "--device", "cpu",
                     "--workers", "1"])
    out = capsys.readouterr().out
    ratios = re.findall(rf"ratio to the faster bare forward ({NUMBER})", out)
    assert len(ratios) == 2 and all(float(r) > 0 for r in ratios), out


def test_bench_data_prints_each_source_against_the_network(capsys):
    rates = bench_data.main(["--count", "16", "--batch-size", "4", "--workers", "0", "--device", "cpu"])
    out = capsys.readouterr().out
    assert len(rates) == 4 and all(rate > 0 for rate in rates.values())
    for source in ("folder (PNG", "recordio (JPEG q95", "generator (on cpu)"):
        assert re.search(rf"^{re.escape(source)}.*\s{NUMBER}\s+{NUMBER}$", out, re.MULTILINE), out


def test_bench_deploy_times_the_chosen_variants_each_in_its_own_process(capsys, request):
    if ran_in_own_process(request):  # its agreement columns load OpenVINO
        return
    timed = ["quantize_static int8", "ours int8", "ours int8 PReLU-in", "plain quantize_static"]  # one of each kind
    assert bench_deploy.main(["--networks", "mbf", "--batches", "2", "--threads", "1", "--repeats", "1",
                              "--variants", *timed]) == 0
    out = capsys.readouterr().out
    openvino = "OpenVINO columns skipped" not in out
    assert "ours int8 fci" not in out  # the other variants are built, not timed
    for variant in ("fp32 pytorch", *bench_deploy.FP32, *timed):
        for runtime in ("torch",) if variant == "fp32 pytorch" else ("ort", "ov") if openvino else ("ort",):
            row = re.search(rf"^mbf\s+{variant} @{runtime}\s+({NUMBER})\s+(\d+)\s+({NUMBER})$", out, re.MULTILINE)
            assert row and float(row.group(1)) > 0 and float(row.group(3)) > 0, (variant, runtime, out)
    fastest = re.search(r"^mbf\s+(fp32 \w+ @\w+)$", out, re.MULTILINE)  # the baseline: an fp32 file's best runtime
    assert fastest and fastest.group(1).split(" @")[0] in bench_deploy.FP32, out
    nncf = r"\s+/ nncf\s+" + NUMBER if "NNCF baseline skipped" not in out else ""
    for mine in timed:
        assert re.search(rf"^mbf\s+{mine} @ort\s+/ fastest fp32\s+{NUMBER}{nncf}$", out, re.MULTILINE), out
    size = re.search(rf"size ours / fp32 onnx\s+({NUMBER})", out)
    assert size and 0.2 < float(size.group(1)) < 0.35


@pytest.mark.parametrize("network", ["r18", "mbf"])
def test_the_plain_reference_runs_every_conv_on_an_integer_kernel(network, tmp_path):
    """bench_deploy's reference: the plain twin has no PReLU or BatchNorm left (the network itself keeps them),
    and onnxruntime runs its quantize_static file with no float conv, linear or activation between."""
    model = get_model(network).eval()
    twin = bench_deploy.plain_twin(model)
    kinds = {type(m) for m in twin.modules()}
    assert torch.nn.PReLU not in kinds and not any(issubclass(k, torch.nn.modules.batchnorm._BatchNorm) for k in kinds)
    assert any(isinstance(m, torch.nn.PReLU) for m in model.modules())
    fp32 = export_onnx(twin, tmp_path / f"{network}_plain.onnx")
    spec = model.input_spec
    generator = GeneratedFaces(ensure_asset("gan_face_generate"), 8, seed=0, size=spec.size)
    faces = [spec.normalise(generator.generate(range(8)))]
    ops = optimized_ops(quantize_static_baseline(fp32, faces, tmp_path / f"{network}_plain_qs.onnx"), tmp_path)
    assert "QLinearConv" in ops and not {"Conv", "Gemm", "MatMul", "PRelu", "Relu"} & set(ops), ops


def test_compare_data_sources_distils_on_each_source(tmp_path, capsys):
    from lab import compare_data_sources
    assert compare_data_sources.main(["--network", "mbf", "--steps", "2", "--batch-size", "4", "--bn-stats-images",
                                      "4", "--bn-stats-steps", "2", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for source in compare_data_sources.SOURCES:
        row = re.search(rf"^\| [^|]+ \| {source} \| ({NUMBER}) \| ({NUMBER}) \| ({NUMBER}) \| ({NUMBER}) \|$", out,
                        re.MULTILINE)
        assert row and all(-1.0 <= float(v) <= 1.0 for v in row.groups()), (source, out)
    assert (tmp_path / "bn_stats" / "bn_stats_faces.pt").is_file() and (tmp_path / "report.md").is_file()


def test_compare_recipes_trains_each_variant_and_seed_once_and_reports_spreads(tmp_path, capsys):
    config = tmp_path / "tiny.py"
    config.write_text(f'_base_ = "{REPO / "config" / "demo_mbf_w8a8.py"}"\nnum_steps = 1\ncalibration_batches = 1\n'
                      "batch_size = 4\nsave_every = 100\neval_batch_size = 8\n")
    args = [str(config), "--variant", "plain:", "--variant", "crops: augment_crop=0.5 augment_rotate=20",
            "--seeds", "0", "1", "--out", str(tmp_path / "study"), "--holdout-count", "8"]
    assert compare_recipes.main(args) == 0
    out = capsys.readouterr().out
    assert "seeds 0, 1" in out and "| plain | - |" in out and "| crops | augment_crop=0.5 augment_rotate=20 |" in out
    results = json.loads((tmp_path / "study" / "report.json").read_text())
    crops = results["crops"]["seeds"]
    assert crops["0"]["real"]["cosine_mean"] != crops["1"]["real"]["cosine_mean"]  # another seed, another run
    assert json.loads((tmp_path / "study" / "crops" / "seed1" / "config.json").read_text())["augment_crop"] == 0.5
    spread = abs(crops["0"]["real"]["cosine_mean"] - crops["1"]["real"]["cosine_mean"])
    mean = (crops["0"]["real"]["cosine_mean"] + crops["1"]["real"]["cosine_mean"]) / 2
    assert f"{mean:.4f} ({spread:.4f})" in out
    student = tmp_path / "study" / "plain" / "seed0" / "student_final.pt"
    before = student.stat().st_mtime_ns
    assert compare_recipes.main(args) == 0  # finished runs and their scores are read back, not redone
    assert student.stat().st_mtime_ns == before
    assert compare_recipes.main([str(config), "--variant", "bad name: lr=1"]) == 1
    assert "start with a name of letters" in capsys.readouterr().err
