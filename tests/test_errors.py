"""Every bad input and fault of docs/errors.md, made for real (bad files written, a full tmpfs, a file size
limit, a real SIGINT): each ends in one ``error:`` line naming the file or setting, with exit 2 for bad input
and 1 for a failed run, and loses nothing that was written before.  One test per row of the table; the
first test checks that the table and the tests match."""
from __future__ import annotations

import ast
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import eval_benchmarks
import export_model
import quant
import train_quantization as tq
from backbones import get_model
from deploy.packed import load_packed, save_packed
from distill.train_state import list_checkpoints, load_training_state
from eval.verification import write_bin
from tests.helpers import run_inprocess, write_config
from tests.test_train_run import MBF, write_faces, write_teacher
from utils.checkpoint import CheckpointError, read_checkpoint

ROOT = Path(__file__).resolve().parent.parent
TABLE = ROOT / "docs" / "errors.md"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("error_assets")
    faces = write_faces(root / "faces", 22, seed=3)
    images = [cv2.imread(str(p))[:, :, ::-1] for p in sorted(faces.iterdir())]
    return {"teacher": write_teacher(root / "mbf.pt", "mbf", **MBF), "faces": faces, "images": images,
            "bins": root / "bins"}


def train_config(tmp_path: Path, assets: dict[str, Path], **fields) -> Path:
    """A tiny MobileFaceNet run (64-D, batches of 2) on the 22 test faces, overridden by ``fields``."""
    common = {"network": "mbf", "network_kwargs": MBF, "embedding_size": 64, "teacher": str(assets["teacher"]),
              "data_path": str(assets["faces"]), "batch_size": 2, "num_steps": 2, "lr": 0.01,
              "output": str(tmp_path / "run")}
    return write_config(tmp_path / "cfg.py", **{**common, **fields})


def one_error_line(err: str) -> str:
    """The error line of ``err``, checked to be the only one and without a traceback."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith(("error", "warning"))]
    assert len(lines) == 1 and lines[0].startswith("error"), err
    return lines[0]


def table_rows() -> list[dict[str, str]]:
    """The rows of docs/errors.md's case table as {id, exit, test}."""
    rows = []
    for line in TABLE.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0].startswith("`"):
            rows.append({"id": cells[0].strip("`"), "exit": cells[3], "test": cells[4].strip("`")})
    return rows


def test_every_row_of_the_table_has_its_test():
    rows = table_rows()
    assert len(rows) >= 17
    for row in rows:
        file, name = row["test"].split("::")
        functions = {node.name for node in ast.walk(ast.parse((ROOT / file).read_text()))
                     if isinstance(node, ast.FunctionDef)}
        assert name in functions, row
        if file == "tests/test_errors.py":
            assert name == f"test_{row['id']}", row
    ours = {node.name for node in ast.parse(Path(__file__).read_text()).body
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}
    assert ours - {f"test_{row['id']}" for row in rows} == {"test_every_row_of_the_table_has_its_test"}


# ---- deployment and evaluation files --------------------------------------------------------------------

def quantized_student() -> tuple[torch.nn.Module, dict]:
    torch.manual_seed(0)
    qcfg = quant.QuantConfig(weight_bits=4, act_bits=8, bn_mode="fold")
    model = get_model("mbf", **MBF).eval()
    student = quant.post_training_quantize(model, qcfg, [torch.randn(2, 3, 112, 112)], 1).student.eval()
    return student, {"network": "mbf", "network_kwargs": MBF, "quant": qcfg.to_dict()}


def test_packed_damaged(assets, tmp_path, capsys):
    student, meta = quantized_student()
    path = save_packed(tmp_path / "w4.qfpack", student, meta)
    load_packed(path)  # intact: loads
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    path.write_bytes(bytes(data))
    write_bin(assets["bins"] / "lfw.bin", assets["images"][:20], [k % 2 == 0 for k in range(10)])
    code = eval_benchmarks.main(["--checkpoint", str(path), "--data-dir", str(assets["bins"]), "--targets", "lfw",
                                 "--out", str(tmp_path / "eval"), "--device", "cpu"])
    line = one_error_line(capsys.readouterr().err)
    assert code == 2 and f"{path} is damaged: its contents do not match the sha256" in line
    with pytest.raises(CheckpointError, match="is damaged"):
        load_packed(path)


def run_eval(tmp_path: Path, checkpoint: Path, bins: Path, out: Path | None = None) -> int:
    return eval_benchmarks.main(["--checkpoint", str(checkpoint), "--data-dir", str(bins), "--targets", "lfw",
                                 "--out", str(out or tmp_path / "eval"), "--device", "cpu", "--workers", "0",
                                 "--batch-size", "8"])


def test_bin_too_few_pairs(assets, tmp_path, capsys):
    write_bin(tmp_path / "bins" / "lfw.bin", assets["images"][:10], [k % 2 == 0 for k in range(5)])
    code = run_eval(tmp_path, assets["teacher"], tmp_path / "bins")
    captured = capsys.readouterr()
    line = one_error_line(captured.err)
    assert code == 2 and f"{tmp_path / 'bins' / 'lfw.bin'}: 5 pairs; the 10-fold protocol needs at least 10" in line
    assert "accuracy" not in captured.out and not (tmp_path / "eval").exists()


def test_bin_extra_images(assets, tmp_path, capsys):
    bin_path = tmp_path / "bins" / "lfw.bin"
    write_bin(bin_path, assets["images"][:20], [k % 2 == 0 for k in range(10)])
    blobs, issame = pickle.loads(bin_path.read_bytes())
    bin_path.write_bytes(pickle.dumps((blobs + blobs[:2], issame)))  # 22 images for 10 pairs
    assert run_eval(tmp_path, assets["teacher"], tmp_path / "bins") == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning")]
    assert warnings == [f"warning: {bin_path}: 22 images for 10 pairs; the last 2 are not in any pair and are "
                        "ignored (as insightface does)"], err
    assert json.loads((tmp_path / "eval" / "results.json").read_text())["checkpoints"][0]["verification"]["lfw"][
        "pairs"] == 10


# ---- training data and folders --------------------------------------------------------------------------

def faces_with_a_corrupt_jpeg(tmp_path: Path, assets: dict[str, Path]) -> tuple[Path, Path]:
    folder = tmp_path / "faces"
    shutil.copytree(assets["faces"], folder)
    for extra in sorted(folder.iterdir())[5:]:
        extra.unlink()
    bad = folder / "003_broken.jpg"  # six images in batches of 2: all met in epoch 0
    bad.write_bytes(cv2.imencode(".jpg", assets["images"][0])[1].tobytes()[:200])
    return folder, bad


def test_corrupt_training_image(assets, tmp_path, capsys):
    folder, bad = faces_with_a_corrupt_jpeg(tmp_path, assets)
    config = train_config(tmp_path, assets, data_path=str(folder), num_workers=2, num_steps=4)
    assert tq.main([str(config)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"cannot decode image {bad}" in line and "skip_unreadable_images=True" in line


def test_corrupt_training_image_skipped(assets, tmp_path, capsys):
    folder, bad = faces_with_a_corrupt_jpeg(tmp_path, assets)
    config = train_config(tmp_path, assets, data_path=str(folder), num_workers=2, num_steps=4,
                          skip_unreadable_images=True)
    assert tq.main([str(config)]) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning")]
    assert len(warnings) == 1 and "1 unreadable image(s) were left out" in warnings[0] and str(bad) in warnings[0]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["unreadable_images_skipped"] == 1


def blocked_path(tmp_path: Path) -> Path:
    """A folder path that cannot be created, even by root: its parent is a regular file."""
    (tmp_path / "a_file").write_text("")
    return tmp_path / "a_file" / "out"


def test_output_not_writable_train(assets, tmp_path, capsys):
    # the teacher is missing too: the output is checked first, before anything loads
    config = train_config(tmp_path, assets, teacher=str(tmp_path / "missing.pt"), output=str(blocked_path(tmp_path)))
    assert tq.main([str(config)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"cannot write to output {blocked_path(tmp_path)}: {tmp_path / 'a_file'} is a file" in line


def test_output_not_writable_eval(tmp_path, capsys):
    write_bin(tmp_path / "bins" / "lfw.bin", [np.zeros((112, 112, 3), np.uint8)] * 20, [True, False] * 5)
    assert run_eval(tmp_path, tmp_path / "missing.pt", tmp_path / "bins", blocked_path(tmp_path)) == 2
    assert f"cannot write to --out {blocked_path(tmp_path)}" in one_error_line(capsys.readouterr().err)


def test_output_not_writable_export(tmp_path, capsys):
    target = blocked_path(tmp_path) / "x.onnx"
    assert export_model.main([str(tmp_path / "missing.pt"), "-o", str(target)]) == 2
    assert f"cannot write to -o folder {target.parent}" in one_error_line(capsys.readouterr().err)


# ---- faults while writing ---------------------------------------------------------------------------------

def _script_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def test_disk_full_checkpoint(assets, tmp_path):
    """A real full disk: a 12 MB tmpfs (mounted in a private user+mount namespace) holds the first
    checkpoint of the tiny run but not the second."""
    if shutil.which("unshare") is None or subprocess.run(
            ["unshare", "-rm", "true"], capture_output=True).returncode != 0:
        pytest.skip("no user+mount namespaces here: a tmpfs cannot be mounted without privileges")
    out, kept = tmp_path / "full", tmp_path / "kept"
    out.mkdir()
    config = train_config(tmp_path, assets, output=str(out), save_every=1, num_steps=3)
    script = (f"mount -t tmpfs -o size=12m tmpfs {out} || exit 99; "
              f"{sys.executable} {ROOT / 'train_quantization.py'} {config}; code=$?; "
              f"cp -r {out} {kept}; exit $code")
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=ROOT, env=_script_env(),
                          capture_output=True, text=True, timeout=300)
    if done.returncode == 99:
        pytest.skip(f"tmpfs cannot be mounted here: {done.stderr.strip()}")
    line = one_error_line(done.stderr)
    assert done.returncode == 1, done.stdout + done.stderr
    target = out / "checkpoints" / "step_00000002.pt"
    assert (f"the disk is full while writing {target} (No space left on device); no step_00000002.pt was "
            "written" in line and "it continues from step 1, the last checkpoint" in line), line
    assert sorted(p.name for p in (kept / "checkpoints").iterdir()) == ["step_00000001.pt"]  # no temp file
    assert load_training_state(kept / "checkpoints" / "step_00000001.pt")["step"] == 1


FILE_SIZE_LIMIT = """
import resource, signal, sys, torch
from utils.errors import QuantFaceError, report
from utils.fileio import atomic_torch_save
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, 1_000_000))
atomic_torch_save({"w": torch.ones(1000)}, sys.argv[1])
try:
    atomic_torch_save({"w": torch.zeros(1_000_000)}, sys.argv[1])
except QuantFaceError as exc:
    sys.exit(report(exc))
"""


def test_file_size_limit(tmp_path):
    target = tmp_path / "state.pt"
    done = subprocess.run([sys.executable, "-c", FILE_SIZE_LIMIT, str(target)], cwd=ROOT, env=_script_env(),
                          capture_output=True, text=True, timeout=120)
    line = one_error_line(done.stderr)
    assert done.returncode == 1 and (f"the file size limit was reached while writing {target} (File too large); "
                                     "the previous state.pt is intact" in line), line
    assert torch.equal(torch.load(target, weights_only=True)["w"], torch.ones(1000))
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]  # the temp file is gone


def test_interrupted_training(assets, tmp_path):
    out = tmp_path / "run"
    config = train_config(tmp_path, assets, num_steps=10000, save_every=1, keep_last=2)
    process = subprocess.Popen([sys.executable, str(ROOT / "train_quantization.py"), str(config)], cwd=ROOT,
                               env=_script_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while len(list_checkpoints(out)) < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    line = one_error_line(err)
    found = re.fullmatch(r"error: interrupted at step (\d+); resume with resume=true \(it continues from step "
                         r"(\d+), the last checkpoint\)", line)
    assert process.returncode == 1 and found, err
    assert list_checkpoints(out)[-1][0] == int(found.group(2)) <= int(found.group(1))
    assert all(p.suffix == ".pt" for p in (out / "checkpoints").iterdir())  # no half-written temp file
    for _, path in list_checkpoints(out):
        load_training_state(path)


def test_interrupted_evaluation(assets, tmp_path):
    """A real SIGINT while the checkpoint is being evaluated: one line, exit 1, no half-written results."""
    write_bin(tmp_path / "bins" / "lfw.bin", [assets["images"][k % 10] for k in range(1200)],
              [k % 2 == 0 for k in range(600)])
    out = tmp_path / "eval"
    process = subprocess.Popen([sys.executable, str(ROOT / "eval_benchmarks.py"), "--checkpoint", str(assets["teacher"]),
                                "--data-dir", str(tmp_path / "bins"), "--targets", "lfw", "--out", str(out),
                                "--device", "cpu", "--workers", "0", "--batch-size", "8"], cwd=ROOT,
                               env=_script_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not process.stdout.readline().startswith("== "):  # the checkpoint is loaded: its sets come next
        assert process.poll() is None, process.stderr.read()
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 1, err
    assert one_error_line(err) == ("error: interrupted: the evaluation stopped before it finished; run the command "
                                   "again")
    assert not (out / "results.json").exists() and not [p for p in out.glob("*") if p.name.startswith(".")]


# ---- checkpoints and settings -----------------------------------------------------------------------------

def test_export_exported_file(tmp_path, capsys):
    for name in ("student.onnx", "student.qfpack"):
        (tmp_path / name).write_bytes(b"exported")
        assert export_model.main([str(tmp_path / name), "-o", str(tmp_path / "again.onnx")]) == 2
        line = one_error_line(capsys.readouterr().err)
        assert line == (f"error: {tmp_path / name}: export takes a training checkpoint (.pt); this is already an "
                        "exported file")


class _RunsCode:
    """Pickles as a call of ``os.system``: what a malicious checkpoint holds."""

    def __reduce__(self):
        return os.system, ("touch pwned",)


def test_malicious_checkpoint(tmp_path, capsys):
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "meta": _RunsCode()}, evil)
    assert export_model.main([str(evil), "-o", str(tmp_path / "x.onnx")]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"checkpoint {evil} is refused: it holds pickled objects other than tensors" in line
    assert "system" in line and "weights_only" not in line and "will likely succeed" not in line
    assert not (tmp_path / "pwned").exists() and not (ROOT / "pwned").exists()
    with pytest.raises(CheckpointError, match="is refused"):
        read_checkpoint(evil)


def test_bad_quant_setting(assets, tmp_path, capsys):
    # the teacher is missing: each setting is named before anything loads
    cases = [({"weight_bits": 9}, "error: weight_bits=9 is out of range: use an integer 2..8, or 16/32 to keep float"),
             ({"layer_bits": {"conv1": [8, 9]}}, "error: layer_bits['conv1'] activation bits=9 is out of range")]
    for fields, message in cases:
        config = train_config(tmp_path, assets, teacher=str(tmp_path / "missing.pt"), **fields)
        assert tq.main([str(config)]) == 2
        assert one_error_line(capsys.readouterr().err).startswith(message), fields


def test_eval_fails_early(assets, tmp_path, capsys):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    write_bin(tmp_path / "bins" / "lfw.bin", assets["images"][:20], [k % 2 == 0 for k in range(10)])
    out = tmp_path / "results" / "eval"
    assert run_eval(tmp_path, junk, tmp_path / "bins", out) == 2
    assert f"cannot read checkpoint {junk}" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "results").exists()


def test_resumed_summary(assets, tmp_path):
    out = tmp_path / "run"
    config = train_config(tmp_path, assets, num_steps=4, save_every=2, log_every=4)
    _, unbroken = run_inprocess(config)
    for path in (out / "checkpoints" / "step_00000004.pt", out / "student_final.pt", out / "summary.json"):
        path.unlink()  # as if stopped after step 2
    before = load_training_state(out / "checkpoints" / "step_00000002.pt")["wall_time_s"]
    began = time.time()
    _, resumed = run_inprocess(config, "resume=true")
    session = time.time() - began
    assert resumed["final_loss"] == unbroken["final_loss"]
    assert before > 0 and resumed["wall_time_s"] >= round(before + session - 0.1, 1)
