"""Training checkpoints for exact resume: ``<output>/checkpoints/step_00001000.pt``.

A training checkpoint is a dict of tensors and plain values (readable with
``torch.load(weights_only=True)``): student and projection state_dicts (observer ranges are buffers in
the student's), optimizer, scheduler and GradScaler state, every rank's RNG states (torch, CUDA, numpy,
python), the global step, the next (epoch, batch) position and the observer flag.  Restoring all of it
makes a resumed run continue bit-for-bit like an uninterrupted one (same device, same seed).
"""
from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any, Iterable, Iterator, TypeVar

import numpy as np
import torch

from utils.checkpoint import CheckpointError, load_weights_only
from utils.fileio import atomic_torch_save

CHECKPOINT_DIR = "checkpoints"
T = TypeVar("T")
_NAME = re.compile(r"^step_(\d{8,})\.pt$")


def capture_rng_state() -> dict[str, Any]:
    """This process's RNG states as tensors and plain numbers."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, words, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": version, "words": torch.tensor(words, dtype=torch.int64), "gauss_next": gauss_next},
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of ``capture_rng_state`` (CUDA states only when this process sees the same GPUs); the
    tensors must be on the CPU, as ``load_training_state`` leaves them."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    npy = state["numpy"]
    np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached_gaussian"]))
    py = state["python"]
    random.setstate((py["version"], tuple(int(w) for w in py["words"].tolist()), py["gauss_next"]))


def rng_isolated(items: Iterable[T]) -> Iterator[T]:
    """Yield ``items`` while restoring the global torch RNG around every fetch.

    Data loading must not draw from the training loop's random stream: a ``DataLoader`` draws a base
    seed from it whenever an epoch's iterator starts, which happens at a different point of that
    stream in a resumed run, so dropout masks after the resume would differ.
    """
    with torch.random.fork_rng(devices=[]):
        iterator = iter(items)
    while True:
        with torch.random.fork_rng(devices=[]):
            try:
                item = next(iterator)
            except StopIteration:
                return
        yield item


def checkpoint_path(output: str | os.PathLike, step: int) -> Path:
    return Path(output) / CHECKPOINT_DIR / f"step_{step:08d}.pt"


def list_checkpoints(output: str | os.PathLike) -> list[tuple[int, Path]]:
    """``[(step, path), ...]`` of the training checkpoints in ``output``, oldest first."""
    folder = Path(output) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def save_training_state(output: str | os.PathLike, step: int, state: dict[str, Any], keep_last: int) -> Path:
    """Write ``state`` atomically as the checkpoint of ``step``; delete all but the newest ``keep_last``."""
    path = atomic_torch_save({**state, "step": step}, checkpoint_path(output, step))
    for _, old in list_checkpoints(output)[:-max(keep_last, 1)]:
        old.unlink(missing_ok=True)
    return path


def _moved(value: Any, device: torch.device) -> Any:
    """``value`` with every tensor in it on ``device`` (dicts, lists and tuples walked)."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {key: _moved(item, device) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_moved(item, device) for item in value)
    return value


def load_training_state(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a training checkpoint written by ``save_training_state``: its tensors on ``map_location``
    except the RNG states, which stay on the CPU where ``torch.set_rng_state`` and numpy need them."""
    state = load_weights_only(path, "training checkpoint")
    missing = {"step", "student", "optimizer", "scheduler", "rng"} - set(state)
    if missing:
        raise CheckpointError(f"{path} is not a training checkpoint (missing {', '.join(sorted(missing))})")
    device = torch.device(map_location)
    if device.type == "cpu":
        return state
    return {key: value if key == "rng" else _moved(value, device) for key, value in state.items()}
