"""Helpers shared by the tests: a config file in the real format, a training run in this process, and the ops
onnxruntime runs for an ONNX file."""
from __future__ import annotations

from pathlib import Path

import onnx
import onnxruntime as ort
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
