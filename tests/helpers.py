"""Helpers shared by the tests: a config file in the real format, a training run in this process, and the ops
onnxruntime runs for an ONNX file."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest
import torch

import distill
from deploy.onnx_model import session_options
from utils.config import load_config
from utils.distributed import DistEnv


def write_config(path: Path, **fields) -> Path:
    base = {"device": "cpu", "data_source": "folder", "num_workers": 0, "random_flip": False,
            "bn_mode": "frozen", "log_every": 1, "observer_steps": 2, "save_every": 100}
    path.write_text("".join(f"{k} = {v!r}\n" for k, v in {**base, **fields}.items()))
    return path


def run_inprocess(config: Path, *overrides: str):
    """Training as the script runs it (one process, ``generations`` included), returning (student, summary)."""
    cfg = load_config(config, overrides)
    return distill.train_generations(cfg, DistEnv(0, 1, 0, torch.device("cpu")))


def optimized_ops(path: Path, tmp_path: Path) -> list[str]:
    """The op types onnxruntime runs after its graph optimisations (QDQ groups fused into QLinear* kernels); the
    optimised graph is left in ``tmp_path/<stem>.optimized.onnx``."""
    options = session_options()
    options.optimized_model_filepath = str(tmp_path / f"{path.stem}.optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return [node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node]


OWN_PROCESS = "QUANTFACE_TEST_IN_OWN_PROCESS"


def ran_in_own_process(request) -> bool:
    """Run the calling test in a fresh pytest process and return True (the caller then returns), unless this
    is that process (False: the caller runs its body).  For tests that load OpenVINO, whose native thread pool
    outlives its objects and has crashed the suite's process many tests later."""
    if os.environ.get(OWN_PROCESS) == "1":
        return False
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-p", "no:logging",
                             request.node.nodeid],
                            cwd=Path(__file__).resolve().parent.parent, env={**os.environ, OWN_PROCESS: "1"},
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    if " skipped" in result.stdout.splitlines()[-1]:
        pytest.skip(result.stdout.strip().splitlines()[-1])
    return True
