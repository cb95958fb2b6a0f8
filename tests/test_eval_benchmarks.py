"""eval_benchmarks.py as users run it: a float and a quantized checkpoint, a .bin and an IJB-C mini set."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import eval_benchmarks
from assets import ensure_asset
from backbones import get_model
from eval.report import benchmark_table, checkpoint_labels
from eval.verification import write_bin
from quant import QuantConfig, calibrate, quantize_model, save_quantized
from test_eval_ijb import build_mini_ijb
from test_eval_verification import real_face_pairs
from utils.checkpoint import save_checkpoint

from tests.helpers import ran_in_own_process

REPO = Path(__file__).resolve().parent.parent
TINY_MBF = {"num_features": 64, "blocks": [1, 1, 1, 1], "scale": 1}


def _checkpoints(folder: Path) -> tuple[Path, Path]:
    torch.manual_seed(0)
    model = get_model("mbf", **TINY_MBF).eval()
    meta = {"network": "mbf", "network_kwargs": TINY_MBF}
    float_path = save_checkpoint(folder / "teacher" / "model.pt", model.state_dict(), meta)
    student = quantize_model(model, QuantConfig(weight_bits=8, act_bits=8))
    calibrate(student, [torch.randn(4, 3, 112, 112)])
    quant_path = save_quantized(folder / "student" / "model.pt", student, "mbf", TINY_MBF, QuantConfig(8, 8),
                                meta={"input_spec": model.input_spec.to_dict()})
    return float_path, quant_path


def test_cli_writes_json_table_and_roc(tmp_path: Path) -> None:
    images, issame = real_face_pairs(40, seed=1)
    write_bin(tmp_path / "data" / "lfw.bin", images, issame)
    build_mini_ijb(tmp_path / "ijb" / "IJBC", crops=2)
    float_path, quant_path = _checkpoints(tmp_path)
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "eval_benchmarks.py", "--checkpoint", str(float_path), str(quant_path),
                          "--data-dir", str(tmp_path / "data"), "--targets", "lfw", "--ijb", "IJBC",
                          "--ijb-dir", str(tmp_path / "ijb"), "--batch-size", "32", "--device", "cpu",
                          "--workers", "2", "--out", str(out)],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]

    doc = json.loads((out / "results.json").read_text())
    teacher, student = doc["checkpoints"]
    assert (teacher["label"], teacher["bits"], student["label"], student["bits"]) == \
        ("teacher/model", "FP32", "student/model", "W8A8")
    assert teacher["input_spec"]["std"] == [127.5] * 3 and student["size_mb"] < 0.5 * teacher["size_mb"]
    for entry in (teacher, student):
        lfw = entry["verification"]["lfw"]
        assert lfw["pairs"] == 40 and 0.0 <= lfw["accuracy"] <= 1.0 and len(lfw["fold_accuracy"]) == 10
        ijbc = entry["ijb"]["IJBC"]
        assert set(ijbc["tar_at_far"]) == {"1e-06", "1e-05", "1e-04", "1e-03", "1e-02", "1e-01"}
        assert ijbc["templates"] == 28 and (out / f"{entry['label'].replace('/', '_')}_ijbc_scores.npy").is_file()

    table = (out / "results.md").read_text()
    lines = table.strip().splitlines()
    assert lines[0].startswith("| Model | Bits | Size (MB) | LFW | CFP-FP | AgeDB-30 | CALFW | CPLFW | IJB-B")
    assert len(lines) == 4 and table in run.stdout
    row = [cell.strip() for cell in lines[3].strip("|").split("|")]
    assert row[:2] == ["student/model", "W8A8"]
    assert row[3] == f"{student['verification']['lfw']['accuracy'] * 100:.2f}"
    assert row[4:8] == ["-"] * 4 and row[8] == "-"
    assert row[9] == f"{student['ijb']['IJBC']['tar_at_far']['1e-04'] * 100:.2f}"
    assert (out / "roc_ijbc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_input_errors_are_reported_before_any_model_runs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "lfw.bin").write_bytes(b"")
    code = eval_benchmarks.main(["--checkpoint", str(tmp_path / "none.pt"), "--data-dir", str(tmp_path),
                                 "--targets", "lfw", "--out", str(tmp_path / "out")])
    assert code == 2 and "none.pt" in capsys.readouterr().err
    bare = tmp_path / "backbone.pth"
    torch.save(get_model("mbf", **TINY_MBF).state_dict(), bare)
    code = eval_benchmarks.main(["--checkpoint", str(bare), "--data-dir", str(tmp_path),
                                 "--targets", "lfw,agedb_30,cplfw", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "agedb_30.bin" in err and "cplfw.bin" in err and "--targets" in err
    code = eval_benchmarks.main(["--checkpoint", str(bare), "--data-dir", str(tmp_path), "--targets", "lfw",
                                 "--out", str(tmp_path / "out")])
    assert code == 2 and "pass the network name" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        eval_benchmarks.parse_args(["--checkpoint", str(bare), "--ijb", "IJBC", "--out", str(tmp_path)])


def test_table_layout_and_labels() -> None:
    entries = [{"label": "a", "bits": "FP32", "size_mb": 261.2, "verification": {"lfw": {"accuracy": 0.99833},
                                                                                "cfp_ff": {"accuracy": 0.5}},
                "ijb": {"IJBB": {"tar_at_far": {"1e-04": 0.9421}}}},
               {"label": "b", "bits": "W4A4+mixed", "size_mb": 33.0, "verification": {}, "ijb": {}}]
    lines = benchmark_table(entries).splitlines()
    assert lines[0] == ("| Model | Bits | Size (MB) | LFW | CFP-FP | AgeDB-30 | CALFW | CPLFW | cfp_ff | "
                        "IJB-B (TAR@FAR=1e-04) | IJB-C (TAR@FAR=1e-04) |")
    assert lines[2] == "| a | FP32 | 261.20 | 99.83 | - | - | - | - | 50.00 | 94.21 | - |"
    assert lines[3] == "| b | W4A4+mixed | 33.00 | - | - | - | - | - | - | - | - |"
    assert checkpoint_labels(["/x/run1/model.pt", "/x/run2/model.pt", "/y/best.pt"]) == \
        ["run1/model", "run2/model", "y/best"]
    assert checkpoint_labels(["/x/a.pt", "/x/b.pt"]) == ["a", "b"]


def test_bare_arcface_state_dict_with_network(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    images, issame = real_face_pairs(10, seed=2)
    write_bin(tmp_path / "cfp_fp.bin", images, issame)
    torch.manual_seed(0)
    bare = tmp_path / "ms1mv3_mbf" / "backbone.pth"  # as arcface_torch saves it: a bare state_dict
    bare.parent.mkdir()
    torch.save(get_model("mbf").state_dict(), bare)
    code = eval_benchmarks.main(["--checkpoint", str(bare), "--network", "mbf", "--data-dir", str(tmp_path),
                                 "--targets", "cfp_fp", "--device", "cpu", "--out", str(tmp_path / "out")])
    assert code == 0
    entry = json.loads((tmp_path / "out" / "results.json").read_text())["checkpoints"][0]
    assert (entry["label"], entry["network"], entry["bits"]) == ("backbone", "mbf", "FP32")
    assert entry["input_spec"] == {"size": 112, "mean": [127.5] * 3, "std": [127.5] * 3, "channels": "RGB",
                                   "alignment": "arcface_112"}
    cfp = entry["verification"]["cfp_fp"]
    assert cfp["pairs"] == 10 and cfp["val"] is None  # folds of one pair: VAL undefined, accuracy still reported
    assert "VAL undefined" in capsys.readouterr().out


def test_a_foreign_onnx_model_is_evaluated_with_its_input_spec_given(tmp_path: Path, capsys, request) -> None:
    """The faceplugin .onnx as shipped (batch fixed at 1, BGR, no metadata of ours): the runtime ``auto`` picks
    runs it chunk by chunk with the spec given on the command line, and it verifies the real-face pairs."""
    if ran_in_own_process(request):  # auto may load OpenVINO
        return
    images, issame = real_face_pairs(20, seed=3)
    write_bin(tmp_path / "lfw.bin", images, issame)
    onnx_path = ensure_asset("faceplugin_onnx_source")
    common = ["--checkpoint", str(onnx_path), "--data-dir", str(tmp_path), "--targets", "lfw", "--device", "cpu",
              "--batch-size", "7", "--out", str(tmp_path / "out")]
    assert eval_benchmarks.main(common) != 0  # its input is unknown: the error says how to give it
    assert "--onnx-input-spec" in capsys.readouterr().err
    spec = '{"channels": "BGR", "std": [128, 128, 128]}'
    assert eval_benchmarks.main([*common, "--onnx-input-spec", spec]) == 0
    entry = json.loads((tmp_path / "out" / "results.json").read_text())["checkpoints"][0]
    assert entry["runtime"] in ("OnnxModel", "OpenVinoModel") and entry["input_spec"]["channels"] == "BGR"
    assert entry["runtime_choice"].split()[0] in ("onnxruntime", "openvino")  # --runtime auto says which ran
    assert entry["verification"]["lfw"]["accuracy"] >= 0.9  # a real model on real faces
    with pytest.raises(SystemExit):
        eval_benchmarks.parse_args([*common, "--onnx-input-spec", '{"chanels": "BGR"}'])
    assert "unknown input spec key(s) ['chanels']" in capsys.readouterr().err
