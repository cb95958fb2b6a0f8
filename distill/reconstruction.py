"""Block reconstruction as a training stage: after calibration, before the first distillation step.

Rank 0 reconstructs (``quant.reconstruct``) on the first ``reconstruct_images`` faces of the calibration
stream and keeps its progress in ``<output>/reconstruction.pt`` after every block, so a run stopped during
reconstruction goes on from the next block; every rank then receives rank 0's student.  The per-block
errors go to ``<output>/reconstruction.json``.  A run resumed from a training checkpoint skips the stage:
the checkpoint holds the student it trained from it.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import os
from itertools import islice
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from data import TrainBatches
from distill.train_state import rng_isolated
from quant.batches import batch_input
from quant.reconstruct import ReconstructionSettings, reconstruct
from utils.distributed import broadcast, rank
from utils.fileio import atomic_torch_save, atomic_write_json

log = logging.getLogger(__name__)

PROGRESS_FILE = "reconstruction.pt"
REPORT_FILE = "reconstruction.json"


def calibration_images(data: TrainBatches, count: int, device: torch.device) -> torch.Tensor:
    """The first ``count`` model inputs of the calibration stream (the faces calibration observed first)."""
    batches = [batch_input(b) for b in islice(rng_isolated(data.calibration()), -(-count // data.batch_size))]
    if not batches:
        raise ValueError("block reconstruction got no calibration images")
    return torch.cat(batches)[:count].to(device)


def reconstruct_student(settings: ReconstructionSettings, output: Path, student: nn.Module, data: TrainBatches,
                        device: torch.device) -> None:
    """Reconstruct ``student``'s blocks in place (rank 0, resumable in ``output``), then give every rank rank
    0's student."""
    if rank() == 0:
        reconstruct_resumably(Path(output), student, settings,
                               lambda: calibration_images(data, settings.reconstruct_images, device))
    with torch.no_grad():
        for tensor in student.state_dict().values():
            broadcast(tensor)


def reconstruct_resumably(output: Path, student: nn.Module, settings: ReconstructionSettings,
                          images: Callable[[], torch.Tensor]) -> None:
    """Reconstruct ``student`` in place on ``images()``, going on from ``output``'s progress file when it holds
    a reconstruction under the same settings (a finished one is read back and ``images`` never called)."""
    progress_path = output / PROGRESS_FILE
    saved: dict[str, Any] | None = torch.load(progress_path, weights_only=True) if progress_path.is_file() else None
    if saved is not None and saved["settings"] != _settings_key(settings):
        saved = None
    if saved is not None and saved["complete"]:
        student.load_state_dict(saved["student"])
        log.info("block reconstruction: restored from %s", progress_path)
        return
    reference = copy.deepcopy(student)  # the student before any block is fitted: the float side's source
    done, report = 0, []
    if saved is not None:
        student.load_state_dict(saved["student"])
        done, report = saved["blocks_done"], saved["report"]
        log.info("block reconstruction: going on after block %d (%s)", done, progress_path)

    def keep(blocks_done: int, total: int, block_report: list[dict]) -> None:
        save_progress(progress_path, settings, student, blocks_done, total, report + block_report)

    report += reconstruct(student, images(), settings, done, keep, reference)
    atomic_write_json(output / REPORT_FILE, report)


def save_progress(path: Path, settings: ReconstructionSettings, student: nn.Module, blocks_done: int, total: int,
                  report: list[dict]) -> None:
    """The student after ``blocks_done`` of ``total`` fitted blocks, with the settings it was fitted under."""
    atomic_torch_save({"settings": _settings_key(settings), "student": student.state_dict(),
                       "blocks_done": blocks_done, "complete": blocks_done == total, "report": report}, path)


def _settings_key(settings: ReconstructionSettings) -> dict[str, Any]:
    return dataclasses.asdict(settings)


def reconstructed_state(output: str | os.PathLike) -> dict[str, torch.Tensor] | None:
    """The student's state after a finished block reconstruction in ``output``, or None where the run did not
    reconstruct (or stopped during it)."""
    path = Path(output) / PROGRESS_FILE
    if not path.is_file():
        return None
    saved = torch.load(path, map_location="cpu", weights_only=True)
    return saved["student"] if saved["complete"] else None
