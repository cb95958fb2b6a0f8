"""tools.gpu_check at its tiny size, as a machine without CUDA runs it: every stage, one table."""
from __future__ import annotations

import json

import pytest
import torch

from tools import gpu_check


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA make gpu-check runs the full size")
def test_tiny_gpu_check_runs_every_stage_and_meets_its_goals(tmp_path, capsys):
    status = gpu_check.main(["--tiny", "--work", str(tmp_path)])
    out = capsys.readouterr().out
    assert status == 0, out
    assert out.count("\nstage ") == 1, out  # one summary table
    rows = {stage: (result, ok) for stage, result, _, ok in json.loads((tmp_path / "gpu_check.json").read_text())}
    assert "skipped" in rows["tests marked cuda"][0] and rows["tests marked cuda"][1]
    assert rows["distill mbf W8A8, 4 steps"][1]  # the loss fell
    assert rows["killed at step 2, resumed"] == ("bit-identical weights", True)
    syncs, ok = rows["host syncs / training step"]
    assert ok and float(syncs.split()[0]) <= 5, syncs  # train_step + callbacks with LSQ activations
    assert {f"QAT/float step {mode}" for mode in gpu_check.MODES} <= set(rows)
    assert "images/s" in rows["data path (folder, PNG)"][0] and "images/s" in rows["evaluation mbf float, flip test"][0]
    assert rows["int8 ONNX export of the student"][1]
