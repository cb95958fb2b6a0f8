"""Helpers shared by the training tests: a config file in the real format, and a run in this process."""
from __future__ import annotations

from pathlib import Path

import torch

import distill
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
