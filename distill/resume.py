"""Resuming a run: where it left off, that it is the same run, and its state put back exactly."""
from __future__ import annotations

import json
from pathlib import Path

from distill.models import TrainingError
from distill.run import Run
from distill.settings import RESUMABLE, TrainSettings
from distill.train_state import list_checkpoints, load_training_state, restore_rng_state
from utils.checkpoint import load_state_strict
from utils.config import load_config


def find_resume_point(settings: TrainSettings) -> Path | None:
    """The checkpoint to continue from (``resume=true``), or None for a fresh run into an unused output."""
    run = settings.run
    found = list_checkpoints(run.output)
    if run.resume:
        if found:
            check_same_run(settings)
        return found[-1][1] if found else None
    if found:
        raise TrainingError(f"{run.output} already holds checkpoints of a run (last: {found[-1][1].name}); "
                            "pass resume=true to continue it, or choose another output")
    return None


def check_same_run(settings: TrainSettings) -> None:
    """Resuming continues the run saved in ``output``: only its run and evaluation sections may have changed
    (a config edited since, or a newer version of a shipped config, changes more); otherwise stop and say
    which.  A field the saved run did not know yet (added to ``config/base.py`` since) counts as unchanged
    while it keeps its default: that default is what the older run did."""
    output = Path(settings.run.output)
    saved_path = output / "config.json"
    if not saved_path.is_file():
        return
    saved = json.loads(saved_path.read_text())
    current = json.loads(settings.flat.to_json())
    defaults = json.loads(load_config(None).to_json())
    if settings.quant.size_budget:  # layer_bits then follows from the budget and the teacher's sensitivity
        saved["layer_bits"] = current["layer_bits"]
    for key in set(current) - set(saved):
        if current[key] == defaults.get(key):
            saved[key] = current[key]
    changed = sorted(key for key in set(saved) | set(current)
                     if key not in RESUMABLE and saved.get(key) != current.get(key))
    if changed:
        key = changed[0]
        raise TrainingError(f"{output} holds a run with other settings ({', '.join(changed)}; e.g. {key} was "
                            f"{saved.get(key)!r}, now {current.get(key)!r}); resume=true would mix them. Delete "
                            "that folder or choose another output to start afresh")


def restore(run: Run, path: Path) -> None:
    """Continue ``run`` exactly where the checkpoint ``path`` left it."""
    ckpt = load_training_state(path)  # on the CPU: load_state_dict copies to the device; RNG states stay there
    for key, now in (("world_size", run.env.world_size), ("total_steps", run.steps)):
        if ckpt[key] != now:
            raise TrainingError(f"{path} was written by a run with {key}={ckpt[key]}, this one has "
                                f"{now}; resume with the same config and number of processes")
    load_state_strict(run.student, ckpt["student"], f"student in {path}")
    if run.kd.learns:
        load_state_strict(run.kd, ckpt["projection"], f"projection / margin head in {path}")
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.scheduler.load_state_dict(ckpt["scheduler"])
    run.scaler.load_state_dict(ckpt["scaler"])
    restore_rng_state(ckpt["rng"][run.env.rank])
    run.observing = ckpt["observers_enabled"]
    run.step, run.epoch, run.batch = ckpt["step"], ckpt["epoch"], ckpt["batch"]
    run.resumed_from = path
    run.wall_time_before = float(ckpt.get("wall_time_s", 0.0))
