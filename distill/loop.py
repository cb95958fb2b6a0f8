"""The distillation loop: the student learns to reproduce the frozen float teacher on the same batches.

``train(cfg, env)`` = ``prepare_run`` (``distill.setup``), then one step per batch (``train_step``) with
the callbacks after each (``distill.callbacks``), then the final student and ``summary.json``.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import quant
from distill.callbacks import StepCallbacks
from distill.precision import keep_tail_fp32
from distill.resume import check_same_run
from distill.settings import TrainSettings
from distill.run import Run
from distill.setup import TrainingError, prepare_run
from distill.train_state import list_checkpoints, load_training_state, rng_isolated
from utils.config import Config
from utils.cpu_memory import reuse_freed_cpu_memory
from utils.distributed import DistEnv, all_gather_objects
from utils.errors import RunError
from utils.fileio import DiskFullError, atomic_write_json

FINAL_STUDENT = "student_final.pt"


class DivergedError(TrainingError, RunError):
    """A step's loss or gradients were not finite: good input, a run that failed on the way (exit code 1)."""

    exit_code = RunError.exit_code


def wrap_ddp(run: Run) -> tuple[nn.Module, nn.Module]:
    """(student, loss) as the step calls them: DDP-wrapped under torchrun (the loss only when it learns)."""
    if not run.env.distributed:
        return run.student, run.kd
    ids = [run.env.device.index] if run.env.device.type == "cuda" else None
    # no buffer broadcast before every forward: observers all-reduce their ranges (quant.sync_observers),
    # BatchNorm statistics are per rank as in arcface_torch, and rank 0's copy is the one saved
    loss = (DistributedDataParallel(run.kd, device_ids=ids, broadcast_buffers=False) if run.kd.learns
            else run.kd)
    return DistributedDataParallel(run.student, device_ids=ids, broadcast_buffers=False), loss


def train_step(run: Run, model: nn.Module, loss_fn: nn.Module, images: torch.Tensor, index: int,
               labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One optimisation step on ``images`` (and their classes, for a margin head); returns this rank's loss
    and feature term as detached device tensors, read only when a metrics line is due (``StepCallbacks``).

    A step whose loss or gradients are not finite is not applied and nothing is saved: ``DivergedError``
    names the step and the last checkpoint.  That check is the step's one read from the device (with AMP the
    loss alone: the GradScaler skips steps with overflowing gradients itself, and lowers its scale)."""
    with torch.autocast(run.env.device.type, dtype=torch.float16, enabled=run.amp):
        with torch.no_grad():
            target = run.teacher(images)
        embedding = model(images)
    try:
        loss = loss_fn(embedding, target, labels)
    except ValueError as exc:  # labels outside the head's classes
        raise TrainingError(f"step {run.step + 1}: {exc}") from exc
    feature_loss = None
    if run.features is not None:
        feature_loss = run.features.loss()
        loss = loss + run.settings.optim.feature_weight * feature_loss
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    finite, norm = torch.isfinite(loss.detach()), None
    if run.settings.optim.grad_clip > 0:
        run.scaler.unscale_(run.optimizer)
        norm = nn.utils.clip_grad_norm_(run.trainable, run.settings.optim.grad_clip)
    elif not run.amp:
        norm = nn.utils.get_total_norm([p.grad for p in run.trainable if p.grad is not None])
    if not run.amp:
        finite = finite & torch.isfinite(norm)
    if not bool(finite):
        raise DivergedError(not_finite(run, index, loss, norm))
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.scheduler.step()
    if run.observing:
        quant.sync_observers(run.student)  # ranks keep identical ranges while observing
    return loss.detach(), None if feature_loss is None else feature_loss.detach()


def not_finite(run: Run, index: int, loss: torch.Tensor, norm: torch.Tensor | None) -> str:
    """Why the step stopped the run, and the last checkpoint that exists to resume from (if any)."""
    value = loss.item()
    what = (f"loss is {value}" if not math.isfinite(value)
            else f"gradients are not finite (norm {norm.item()}; loss {value:.4g})")
    found = list_checkpoints(run.settings.run.output)
    last = (f"the last checkpoint is {found[-1][1]} (step {found[-1][0]})" if found
            else "no checkpoint was saved before it")
    return (f"{what} at step {run.step + 1} (epoch {run.epoch}, batch {index}); the step was not applied and the run "
            f"stopped; {last}. Lower lr or check the teacher and data")


def advance(run: Run, index: int) -> None:
    """Count the step just taken; stop observing ranges after ``observer_steps`` training steps."""
    run.step, run.batch = run.step + 1, index + 1
    if run.observing and run.step >= run.settings.quant.observer_steps:
        run.observing = False
        quant.set_observers(run.student, False)


def train_loop(run: Run, callbacks: StepCallbacks) -> None:
    """Steps from the run's position to ``run.steps``, epoch after epoch."""
    model, loss_fn = wrap_ddp(run)
    while run.step < run.steps:
        batches = rng_isolated(run.data.labelled_epoch(run.epoch, start_batch=run.batch))
        for index, (images, labels) in enumerate(batches, start=run.batch):
            loss, feature_loss = train_step(run, model, loss_fn, images, index, labels)
            advance(run, index)
            callbacks.after_step(loss, feature_loss)
            if run.step == run.steps:
                break
        else:
            run.epoch, run.batch = run.epoch + 1, 0


def announce(run: Run) -> None:
    """Save the resolved config beside the outputs and say what is about to run (rank 0)."""
    if not run.env.is_main:
        return
    run.settings.flat.save(run.settings.run.output)
    where = f"resuming from {run.resumed_from} at step {run.step}" if run.resumed_from else "starting"
    print(f"{where}: {run.student_name} {run.qcfg.describe()} student of {run.settings.model.network} teacher, {run.steps} "
          f"steps of {run.settings.data.batch_size}x{run.env.world_size} images, lr {run.lr:g}, device {run.env.device}",
          flush=True)
    if run.qcfg.quant_mode == "quantface":
        print("note: quant_mode='quantface' is the paper's placement, for comparison: its student does not export "
              "to integer kernels (export_model.py refuses it); config/<network>_synthetic.py trains one that does",
              flush=True)


def finish(run: Run, callbacks: StepCallbacks) -> dict[str, Any]:
    """Final verification, ``student_final.pt`` and ``summary.json`` (rank 0); returns the summary."""
    images_per_s = callbacks.images_per_s()
    unreadable = [reason for rank in all_gather_objects(run.data.unreadable()) for reason in rank]
    if not run.env.is_main:
        return {}
    if run.bins:
        callbacks.verify()
    output = Path(run.settings.run.output)
    final = output / FINAL_STUDENT
    quant.save_quantized(final, run.student, run.student_name, run.student_kwargs, run.qcfg,
                         meta={"input_spec": run.spec.to_dict(), "teacher": run.settings.model.teacher,
                               "embedding_size": run.student_kwargs["num_features"]})
    size = quant.size_report(run.student)
    summary = {"student": run.student_name, "teacher_network": run.settings.model.network, "bits": run.qcfg.describe(),
               "weight_bits": run.qcfg.weight_bits, "act_bits": run.qcfg.act_bits, "size_mb": size["total_mb"],
               "fp32_mb": size["fp32_mb"], "compression": size["compression"], "steps": run.steps,
               "final_loss": callbacks.last_loss, "eval": callbacks.eval_results, "images_per_s": images_per_s,
               "wall_time_s": round(callbacks.wall_time_s(), 1), "student_checkpoint": str(final),
               "unreadable_images_skipped": len(unreadable)}
    atomic_write_json(output / "summary.json", summary)
    print(format_summary(summary), flush=True)
    if unreadable:
        print(f"warning: {len(unreadable)} unreadable image(s) were left out (skip_unreadable_images=True), "
              f"e.g. {unreadable[0]}", file=sys.stderr, flush=True)
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as aligned ``key: value`` lines."""
    lines = ["", "summary:"]
    for key, value in summary.items():
        lines.append(f"  {key:<18} {json.dumps(value) if isinstance(value, dict) else value}")
    return "\n".join(lines)


def finished_summary(settings: TrainSettings) -> dict[str, Any] | None:
    """With ``resume=true``: the summary of the same run in ``output`` when it already ran to its last step
    (then nothing is redone: no calibration, and ``summary.json`` keeps the time the run took)."""
    output = Path(settings.run.output)
    found = list_checkpoints(output)
    if not (settings.run.resume and found and (output / FINAL_STUDENT).is_file()
            and (output / "summary.json").is_file()):
        return None
    check_same_run(settings)
    last = load_training_state(found[-1][1])
    return json.loads((output / "summary.json").read_text()) if last["step"] == last["total_steps"] else None


def train(cfg: Config, env: DistEnv) -> tuple[nn.Module, dict[str, Any]]:
    """Run (or resume) one distillation of the flat config ``cfg``; return the trained student and the summary
    (rank 0)."""
    settings = TrainSettings.from_config(cfg)  # every section checked before anything is loaded
    done = finished_summary(settings)
    if done is not None:
        print(f"{cfg.output}: this run already finished ({done['steps']} steps); nothing to redo", flush=True)
        return quant.load_quantized(Path(cfg.output) / FINAL_STUDENT, map_location=env.device), done
    started = time.time()
    if env.device.type == "cpu":
        reuse_freed_cpu_memory()
    run = prepare_run(settings, env)
    if run.amp:
        keep_tail_fp32(run.student)  # the embedding layers in fp32, as arcface_torch's fc
    announce(run)
    callbacks = StepCallbacks(run, started)
    try:
        train_loop(run, callbacks)
        callbacks.bar.close()
        return run.student, finish(run, callbacks)
    except KeyboardInterrupt:  # checkpoint writes finish first (utils.fileio.atomic_write): none is half written
        raise RunError(f"interrupted at step {run.step}; resume with resume=true ({resume_point(run)})") from None
    except DiskFullError as exc:
        raise DiskFullError(f"{exc} (resume=true: {resume_point(run)})") from None
    finally:
        callbacks.close()


def resume_point(run: Run) -> str:
    """Where ``resume=true`` would continue this run from, in words."""
    found = list_checkpoints(run.settings.run.output)
    return (f"it continues from step {found[-1][0]}, the last checkpoint" if found
            else "no checkpoint was written yet, so it starts from the beginning")
