"""Training records: a metrics JSON-lines file, optional TensorBoard events, and a tqdm progress bar.

Only rank 0 writes; other ranks get disabled instances so the training loop needs no ``if rank == 0``.
One JSON object per line (``step``, ``epoch``, ``loss``, ``lr``, ``images_per_s``, ``time`` ...) is easy to
read back with ``read_metrics`` or pandas.  On resume, lines from after the checkpoint (written by the
killed run) are dropped, so the file describes exactly the steps that produced the final weights.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from utils.config import ConfigError

METRICS_FILE = "metrics.jsonl"


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All records of a metrics file (skipping a torn last line of a killed run)."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


class MetricsLogger:
    """Appends records to ``<output>/metrics.jsonl`` (and TensorBoard when asked); inert when disabled."""

    def __init__(self, output: str | os.PathLike, enabled: bool = True, tensorboard: bool = False,
                 resume_step: int | None = None):
        self.enabled = enabled
        self.path = Path(output) / METRICS_FILE
        self.writer = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.path.write_text("")
        elif self.path.exists():
            kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise ConfigError("tensorboard=True needs the tensorboard package: pip install tensorboard "
                                  "(or set tensorboard=False)") from exc
            self.writer = SummaryWriter(log_dir=str(Path(output) / "tensorboard"))

    def log(self, record: dict[str, Any]) -> None:
        """Write one record; numeric fields also go to TensorBoard as ``train/<key>`` at ``record['step']``."""
        if not self.enabled:
            return
        record = {**record, "time": round(time.time(), 3)}
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in _flatten(record).items():
                if key not in ("step", "time") and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _flatten(record: dict[str, Any], prefix: str = "train/") -> dict[str, Any]:
    """``{"eval": {"lfw": {"acc": 1}}}`` -> ``{"eval/lfw/acc": 1}``; top-level keys go under ``prefix``."""
    flat: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{key}/"))
        else:
            flat[prefix + key] = value
    return flat


class Throughput:
    """Images per second since the last ``rate()`` call."""

    def __init__(self) -> None:
        self.images = 0
        self.start = time.perf_counter()

    def add(self, images: int) -> None:
        self.images += images

    def rate(self) -> float:
        now = time.perf_counter()
        value = self.images / max(now - self.start, 1e-9)
        self.images, self.start = 0, now
        return value


def progress_bar(total: int, initial: int, enabled: bool) -> tqdm:
    """Steps done / total with ETA; the loop adds ``loss`` and ``img/s`` as postfix."""
    return tqdm(total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True,
                desc="train", smoothing=0.1)
