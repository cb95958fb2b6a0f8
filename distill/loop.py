"""The distillation loop: the student learns to reproduce the frozen float teacher on the same batches.

``train(cfg, env)`` = ``prepare_run`` (``distill.setup``), then one step per batch (``train_step``) with
the callbacks after each (``distill.callbacks``), then the final student and ``summary.json``.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import quant
from distill.callbacks import StepCallbacks
from distill.setup import Run, TrainingError, check_run_fields, check_same_run, prepare_run
from distill.train_state import list_checkpoints, load_training_state, rng_isolated
from utils.config import Config
from utils.cpu_memory import reuse_freed_cpu_memory
from utils.distributed import DistEnv, all_reduce_mean

FINAL_STUDENT = "student_final.pt"


def wrap_ddp(run: Run) -> tuple[nn.Module, nn.Module]:
    """(student, loss) as the step calls them: DDP-wrapped under torchrun (the loss only when it learns)."""
    if not run.env.distributed:
        return run.student, run.kd
    ids = [run.env.device.index] if run.env.device.type == "cuda" else None
    loss = DistributedDataParallel(run.kd, device_ids=ids) if run.kd.learns else run.kd
    return DistributedDataParallel(run.student, device_ids=ids), loss


def train_step(run: Run, model: nn.Module, loss_fn: nn.Module, images: torch.Tensor, index: int,
               labels: torch.Tensor | None = None) -> tuple[float, float | None]:
    """One optimisation step on ``images`` (and their classes, for a margin head); returns the loss and the
    feature term, averaged over ranks."""
    with torch.autocast(run.env.device.type, dtype=torch.float16, enabled=run.amp):
        with torch.no_grad():
            target = run.teacher(images)
        embedding = model(images)
    try:
        loss = loss_fn(embedding, target, labels)
    except ValueError as exc:  # labels outside the head's classes
        raise TrainingError(f"step {run.step + 1}: {exc}") from exc
    feature_value = None
    if run.features is not None:
        feature_loss = run.features.loss()
        feature_value = all_reduce_mean(feature_loss.detach()).item()
        loss = loss + run.cfg.feature_weight * feature_loss
    loss_value = all_reduce_mean(loss.detach()).item()
    if not math.isfinite(loss_value):
        raise TrainingError(f"loss is {loss_value} at step {run.step + 1} (epoch {run.epoch}, batch {index}); "
                            f"stopped. The last good checkpoint is in {Path(run.cfg.output) / 'checkpoints'}; "
                            "lower lr or check the teacher and data")
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    if run.cfg.grad_clip > 0:
        run.scaler.unscale_(run.optimizer)
        nn.utils.clip_grad_norm_(run.trainable, run.cfg.grad_clip)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.scheduler.step()
    if run.observing:
        quant.sync_observers(run.student)  # ranks keep identical ranges while observing
    return loss_value, feature_value


def advance(run: Run, index: int) -> None:
    """Count the step just taken; stop observing ranges after ``observer_steps`` training steps."""
    run.step, run.batch = run.step + 1, index + 1
    if run.observing and run.step >= run.cfg.observer_steps:
        run.observing = False
        quant.set_observers(run.student, False)


def train_loop(run: Run, callbacks: StepCallbacks) -> None:
    """Steps from the run's position to ``run.steps``, epoch after epoch."""
    model, loss_fn = wrap_ddp(run)
    while run.step < run.steps:
        batches = rng_isolated(run.data.labelled_epoch(run.epoch, start_batch=run.batch))
        for index, (images, labels) in enumerate(batches, start=run.batch):
            loss_value, feature_value = train_step(run, model, loss_fn, images, index, labels)
            advance(run, index)
            callbacks.after_step(loss_value, feature_value)
            if run.step == run.steps:
                break
        else:
            run.epoch, run.batch = run.epoch + 1, 0


def announce(run: Run) -> None:
    """Save the resolved config beside the outputs and say what is about to run (rank 0)."""
    if not run.env.is_main:
        return
    run.cfg.save(run.cfg.output)
    where = f"resuming from {run.resumed_from} at step {run.step}" if run.resumed_from else "starting"
    print(f"{where}: {run.student_name} {run.qcfg.describe()} student of {run.cfg.network} teacher, {run.steps} "
          f"steps of {run.cfg.batch_size}x{run.env.world_size} images, lr {run.lr:g}, device {run.env.device}",
          flush=True)


def finish(run: Run, callbacks: StepCallbacks, started: float) -> dict[str, Any]:
    """Final verification, ``student_final.pt`` and ``summary.json`` (rank 0); returns the summary."""
    images_per_s = callbacks.images_per_s()
    if not run.env.is_main:
        return {}
    if run.bins:
        callbacks.verify()
    output = Path(run.cfg.output)
    final = output / FINAL_STUDENT
    quant.save_quantized(final, run.student, run.student_name, run.student_kwargs, run.qcfg,
                         meta={"input_spec": run.spec.to_dict(), "teacher": run.cfg.teacher,
                               "embedding_size": run.student_kwargs["num_features"]})
    size = quant.size_report(run.student)
    summary = {"student": run.student_name, "teacher_network": run.cfg.network, "bits": run.qcfg.describe(),
               "weight_bits": run.qcfg.weight_bits, "act_bits": run.qcfg.act_bits, "size_mb": size["total_mb"],
               "fp32_mb": size["fp32_mb"], "compression": size["compression"], "steps": run.steps,
               "final_loss": callbacks.last_loss, "eval": callbacks.eval_results, "images_per_s": images_per_s,
               "wall_time_s": round(time.time() - started, 1), "student_checkpoint": str(final)}
    (output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(format_summary(summary), flush=True)
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as aligned ``key: value`` lines."""
    lines = ["", "summary:"]
    for key, value in summary.items():
        lines.append(f"  {key:<18} {json.dumps(value) if isinstance(value, dict) else value}")
    return "\n".join(lines)


def finished_summary(cfg: Config) -> dict[str, Any] | None:
    """With ``resume=true``: the summary of the same run in ``output`` when it already ran to its last step
    (then nothing is redone: no calibration, and ``summary.json`` keeps the time the run took)."""
    output = Path(cfg.output)
    found = list_checkpoints(output)
    if not (cfg.resume and found and (output / FINAL_STUDENT).is_file() and (output / "summary.json").is_file()):
        return None
    check_run_fields(cfg)
    check_same_run(cfg)
    last = load_training_state(found[-1][1])
    return json.loads((output / "summary.json").read_text()) if last["step"] == last["total_steps"] else None


def train(cfg: Config, env: DistEnv) -> tuple[nn.Module, dict[str, Any]]:
    """Run (or resume) one distillation; return the trained student and the summary (rank 0)."""
    done = finished_summary(cfg)
    if done is not None:
        print(f"{cfg.output}: this run already finished ({done['steps']} steps); nothing to redo", flush=True)
        return quant.load_quantized(Path(cfg.output) / FINAL_STUDENT, map_location=env.device), done
    started = time.time()
    if env.device.type == "cpu":
        reuse_freed_cpu_memory()
    run = prepare_run(cfg, env)
    announce(run)
    callbacks = StepCallbacks(run)
    try:
        train_loop(run, callbacks)
        callbacks.bar.close()
        return run.student, finish(run, callbacks, started)
    finally:
        callbacks.close()
