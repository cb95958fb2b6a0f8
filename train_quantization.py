"""QuantFace: quantization-aware training of a face network by distillation from its float teacher.

    python train_quantization.py config/<file>.py [key=value ...]
    torchrun --nproc_per_node=N train_quantization.py config/<file>.py [key=value ...]

The teacher is the float backbone loaded strictly from ``teacher``; the student is a quantized copy of
it (or of ``student_network``) trained to reproduce the teacher's L2-normalised embeddings (no labels,
so synthetic faces suffice) and, with ``feature_layers``, the outputs of the named intermediate modules.
Activation ranges are observed for ``observer_steps`` steps (and kept identical across ranks), then
frozen; with ``bias_correction`` they are observed on as many batches before training and the student
starts bias-corrected (``quant.post_training_quantize``).  Rank 0 logs to ``<output>/metrics.jsonl``,
verifies on .bin targets, writes resumable checkpoints (``resume=true`` continues exactly, and refuses
an output whose run had other settings) and, at the end, ``student_final.pt`` (``quant.load_quantized``)
and ``summary.json``.

Exit status: 0 done; 1 a configuration / checkpoint / data error, or the loss became NaN/inf (the
message names the step; the last good checkpoint is kept).  Setting the environment variable
``QUANTFACE_RANK_STATE_DIR`` makes every rank save its final student state_dict there as
``student_rank<r>.pt`` (used to check that DDP ranks end identical).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import quant
from backbones import get_model
from data import build_train_batches
from utils.checkpoint import CheckpointError, atomic_torch_save, load_float_model, load_state_strict, read_checkpoint
from utils.config import Config, ConfigError, load_config
from utils.distributed import DistEnv, all_gather_objects, all_reduce_mean, cleanup, init_distributed
from utils.feature_kd import FeatureDistillation
from utils.kd_loss import LOSSES, DistillationLoss
from utils.logging import MetricsLogger, Throughput, progress_bar
from utils.schedule import SCHEDULERS, build_scheduler, milestone_steps, scaled_lr, total_steps
from utils.train_state import (capture_rng_state, list_checkpoints, load_training_state, restore_rng_state,
                               rng_isolated, save_training_state)

FINAL_STUDENT = "student_final.pt"
RANK_STATE_ENV = "QUANTFACE_RANK_STATE_DIR"
OPTIMIZERS = ("sgd", "adamw")
NORM_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)


class TrainingError(RuntimeError):
    """The run cannot start or continue; the message says why and what to do."""


# ---- models -------------------------------------------------------------------------------------

def load_teacher(cfg: Config) -> tuple[nn.Module, dict[str, Any]]:
    """The float teacher from ``cfg.teacher``, strictly: the file must exist and fit ``cfg.network``.

    Returns the model and its constructor keywords.
    """
    if not cfg.teacher:
        raise TrainingError("no teacher: set teacher=<float backbone checkpoint> (an arcface_torch backbone.pth "
                            "or a checkpoint of this project); the student learns from it")
    state, meta = read_checkpoint(cfg.teacher)
    if meta.get("quant"):
        raise TrainingError(f"teacher {cfg.teacher} is a quantized student; the teacher must be a float model")
    if meta.get("network", cfg.network) != cfg.network:
        raise TrainingError(f"teacher {cfg.teacher} is a '{meta['network']}' but network='{cfg.network}'; "
                            "set network to match the checkpoint")
    kwargs = {**meta.get("network_kwargs", {}), **cfg.network_kwargs}
    if kwargs.setdefault("num_features", cfg.embedding_size) != cfg.embedding_size:
        raise TrainingError(f"teacher {cfg.teacher} makes {kwargs['num_features']}-D embeddings but "
                            f"embedding_size={cfg.embedding_size}; set embedding_size to match")
    for key in ("input_mean", "input_std"):
        if key in meta and float(meta[key]) != float(cfg[key]):
            raise TrainingError(f"teacher {cfg.teacher} expects {key}={meta[key]} but the config has "
                                f"{key}={cfg[key]}; set {key}={meta[key]}")
    return load_state_strict(get_model(cfg.network, **kwargs), state, f"teacher {cfg.teacher}"), kwargs


def build_student(cfg: Config, teacher: nn.Module, teacher_kwargs: dict[str, Any]
                  ) -> tuple[nn.Module, str, dict[str, Any]]:
    """The float student before quantization: the teacher itself, or ``student_network`` (random init or
    ``student_init``).  Returns (model, backbone name, constructor keywords)."""
    if not cfg.student_network:
        if cfg.student_embedding_size not in (0, cfg.embedding_size) or cfg.student_init:
            raise TrainingError("student_embedding_size and student_init need a different student_network; "
                                "a student of the teacher's architecture starts as the teacher's copy")
        return teacher, cfg.network, teacher_kwargs
    kwargs = {"num_features": cfg.student_embedding_size or cfg.embedding_size, **cfg.student_network_kwargs}
    if cfg.student_init:
        return load_float_model(cfg.student_init, cfg.student_network, **kwargs), cfg.student_network, kwargs
    return get_model(cfg.student_network, **kwargs), cfg.student_network, kwargs


def equalized(float_student: nn.Module, teacher: nn.Module, cfg: Config, device: torch.device
              ) -> tuple[nn.Module, nn.Module]:
    """Channel-equalised copy of the float student (``quant.equalize``) on the first training batches,
    which are the same on every rank, so all ranks start identical.

    When the student is the teacher's copy, the equalised copy also becomes the teacher: it computes
    the same function (to float rounding), and its intermediate outputs then line up channel for
    channel with the student's, as ``feature_layers`` needs.  Returns (float student, teacher).
    """
    equal = copy.deepcopy(float_student).to(device)
    quant.equalize(equal, rng_isolated(build_train_batches(cfg, device).epoch(0)))
    return equal, (equal if float_student is teacher else teacher)


def param_groups(modules: Iterable[nn.Module], weight_decay: float, quantizer_lr: float | None = None
                 ) -> list[dict[str, Any]]:
    """Weight decay on conv/linear/PReLU weights only: not on norm layers, biases or quantizer parameters.

    Quantizer parameters (learned step sizes and zero points) form a third group with its own learning
    rate ``quantizer_lr`` when given (else they share the no-decay group).
    """
    decay, no_decay, quantizer = [], [], []
    for module in modules:
        for owner in module.modules():
            for name, param in owner.named_parameters(recurse=False):
                if not param.requires_grad:
                    continue
                if isinstance(owner, quant.FakeQuantizer):
                    (quantizer if quantizer_lr is not None else no_decay).append(param)
                elif isinstance(owner, NORM_LAYERS) or name == "bias":
                    no_decay.append(param)
                else:
                    decay.append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if quantizer:
        groups.append({"params": quantizer, "weight_decay": 0.0, "lr": quantizer_lr})
    return groups


def build_optimizer(cfg: Config, groups: list[dict[str, Any]], lr: float) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    return torch.optim.AdamW(groups, lr=lr)  # "adamw", the only other choice check_run_fields lets through


# ---- checks done before any training ------------------------------------------------------------

def check_run_fields(cfg: Config) -> None:
    """Choices and intervals of the run, checked before anything is loaded."""
    choices = {"loss": LOSSES, "scheduler": SCHEDULERS, "optimizer": OPTIMIZERS}
    for key, valid in choices.items():
        if cfg[key] not in valid:
            raise TrainingError(f"{key}={cfg[key]!r} is not one of {', '.join(valid)}")
    for key in ("observer_steps", "log_every", "save_every", "eval_every", "keep_last", "batch_size"):
        if cfg[key] < 1:
            raise TrainingError(f"{key}={cfg[key]} must be >= 1")
    try:
        milestone_steps(cfg.lr_milestones, 1)
    except ValueError as exc:
        raise TrainingError(str(exc)) from exc


def eval_bins(cfg: Config) -> dict[str, Path]:
    """``{target: path}`` of the verification sets, all checked to exist now rather than at step 2000."""
    if not cfg.eval_data_dir:
        return {}
    bins = {name: Path(cfg.eval_data_dir).expanduser() / f"{name}.bin" for name in cfg.eval_targets}
    missing = [str(p) for p in bins.values() if not p.is_file()]
    if missing:
        raise TrainingError(f"verification set(s) not found: {', '.join(missing)}; fix eval_data_dir / "
                            "eval_targets, or set eval_data_dir='' to train without verification")
    return bins


def find_resume_point(cfg: Config) -> Path | None:
    """The checkpoint to continue from (``resume=true``), or None for a fresh run into an unused output."""
    found = list_checkpoints(cfg.output)
    if cfg.resume:
        if found:
            check_same_run(cfg)
        return found[-1][1] if found else None
    if found:
        raise TrainingError(f"{cfg.output} already holds checkpoints of a run (last: {found[-1][1].name}); "
                            "pass resume=true to continue it, or choose another output")
    return None


# fields that may change between a run and its resumption: bookkeeping, not what is trained
RESUMABLE_CHANGES = {"resume", "output", "config_file", "log_every", "save_every", "keep_last", "tensorboard",
                     "device", "num_workers", "eval_targets", "eval_data_dir", "eval_every", "eval_batch_size",
                     "assets_dir", "demo_holdout_seed", "demo_holdout_count"}


def check_same_run(cfg: Config) -> None:
    """Resuming continues the run saved in ``output``, so its training settings must not have changed
    (say, a config edited since, or a newer version of a shipped config); otherwise stop and say which."""
    saved_path = Path(cfg.output) / "config.json"
    if not saved_path.is_file():
        return
    saved = json.loads(saved_path.read_text())
    current = json.loads(cfg.to_json())
    changed = sorted(key for key in set(saved) | set(current)
                     if key not in RESUMABLE_CHANGES and saved.get(key) != current.get(key))
    if changed:
        key = changed[0]
        raise TrainingError(f"{cfg.output} holds a run with other settings ({', '.join(changed)}; e.g. {key} was "
                            f"{saved.get(key)!r}, now {current.get(key)!r}); resume=true would mix them. Delete "
                            "that folder or choose another output to start afresh")


# ---- the run ------------------------------------------------------------------------------------

def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def verify_student(student: nn.Module, bins: dict[str, Path], cfg: Config, device: torch.device,
                   observing: bool) -> dict[str, Any]:
    """Verification on every .bin target, in eval mode with observers paused (``observing`` is restored)."""
    from eval.verification import verify

    quant.set_observers(student, False)
    student.eval()
    try:
        return {name: verify(student, str(path), device, cfg.eval_batch_size, cfg.input_mean, cfg.input_std)
                for name, path in bins.items()}
    finally:
        student.train()
        quant.set_observers(student, observing)


def train(cfg: Config, env: DistEnv) -> tuple[nn.Module, dict[str, Any]]:
    """Run (or resume) one QuantFace training; return the trained student and the summary (rank 0)."""
    device, output = env.device, Path(cfg.output)
    started = time.time()
    check_run_fields(cfg)
    bins = eval_bins(cfg)
    resume_from = find_resume_point(cfg)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    # models: the same initialisation on every rank
    seed_everything(cfg.seed)
    teacher, teacher_kwargs = load_teacher(cfg)
    float_student, student_name, student_kwargs = build_student(cfg, teacher, teacher_kwargs)
    try:
        data = build_train_batches(cfg, device, env.rank, env.world_size)
    except ValueError as exc:  # no or unreadable data; the message names the file or field
        raise TrainingError(f"training data: {exc}") from exc
    qcfg = quant.QuantConfig.from_config(cfg)
    if qcfg.equalize:
        float_student, teacher = equalized(float_student, teacher, cfg, device)
    placed = dataclasses.replace(qcfg, equalize=False)
    if qcfg.bias_correction:  # start from the calibrated, bias-corrected student; ranges are observed already
        first = rng_isolated(build_train_batches(cfg, device).epoch(0))  # the same on every rank
        student = quant.post_training_quantize(float_student.to(device), placed, first, cfg.observer_steps)
    else:
        student = quant.quantize_model(float_student, placed)
    student = student.to(device).train()
    teacher = teacher.to(device).eval().requires_grad_(False)  # after the student copied it
    kd = DistillationLoss(cfg.loss, student_kwargs["num_features"], cfg.embedding_size).to(device)
    try:
        features = FeatureDistillation(teacher, student, cfg.feature_layers) if cfg.feature_layers else None
    except ValueError as exc:
        raise TrainingError(str(exc)) from exc

    # optimisation
    steps = total_steps(cfg.num_steps, cfg.epochs, data.batches_per_epoch)
    lr = scaled_lr(cfg.lr, cfg.batch_size, env.world_size)
    optimizer = build_optimizer(cfg, param_groups([student, kd], cfg.weight_decay, lr * cfg.quantizer_lr_scale), lr)
    scheduler = build_scheduler(optimizer, cfg, steps)
    amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler(device.type, enabled=amp)

    # where to start
    step, epoch, batch = 0, 0, 0
    seed_everything(cfg.seed + env.rank)  # per-rank randomness inside the loop (e.g. dropout)
    observing = not qcfg.bias_correction  # otherwise observed before training
    if resume_from is not None:
        ckpt = load_training_state(resume_from, map_location=device)
        for key, now in (("world_size", env.world_size), ("total_steps", steps)):
            if ckpt[key] != now:
                raise TrainingError(f"{resume_from} was written by a run with {key}={ckpt[key]}, this one has "
                                    f"{now}; resume with the same config and number of processes")
        load_state_strict(student, ckpt["student"], f"student in {resume_from}")
        if kd.projection is not None:
            load_state_strict(kd, ckpt["projection"], f"projection in {resume_from}")
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        restore_rng_state(ckpt["rng"][env.rank])
        observing = ckpt["observers_enabled"]
        step, epoch, batch = ckpt["step"], ckpt["epoch"], ckpt["batch"]
    quant.set_observers(student, observing)
    if env.is_main:
        cfg.save(output)
        where = f"resuming from {resume_from} at step {step}" if resume_from else "starting"
        print(f"{where}: {student_name} {qcfg.describe()} student of {cfg.network} teacher, {steps} steps of "
              f"{cfg.batch_size}x{env.world_size} images, lr {lr:g}, device {device}", flush=True)

    model = DistributedDataParallel(student, device_ids=[device.index] if device.type == "cuda" else None) \
        if env.distributed else student
    loss_fn = DistributedDataParallel(kd, device_ids=[device.index] if device.type == "cuda" else None) \
        if env.distributed and kd.projection is not None else kd
    trainable = [p for group in optimizer.param_groups for p in group["params"]]

    logger = MetricsLogger(output, env.is_main, cfg.tensorboard, resume_step=step if resume_from else None)
    bar = progress_bar(steps, step, env.is_main)
    meter, window, feature_window = Throughput(), [], []
    images_per_step = cfg.batch_size * env.world_size
    session_start, session_steps = time.perf_counter(), 0
    eval_results, last_loss = {}, float("nan")

    def checkpoint() -> None:
        rng = all_gather_objects(capture_rng_state())  # every rank's, for an exact resume
        at_end = batch >= data.batches_per_epoch  # position of the next batch to train
        if env.is_main:
            save_training_state(output, step, {
                "student": student.state_dict(),
                "projection": kd.state_dict() if kd.projection is not None else {},
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "rng": rng, "observers_enabled": observing,
                "epoch": epoch + 1 if at_end else epoch, "batch": 0 if at_end else batch,
                "world_size": env.world_size, "total_steps": steps,
            }, cfg.keep_last)

    while step < steps:
        for index, images in enumerate(rng_isolated(data.epoch(epoch, start_batch=batch)), start=batch):
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                with torch.no_grad():
                    target = teacher(images)
                embedding = model(images)
            loss = loss_fn(embedding, target)
            if features is not None:
                feature_loss = features.loss()
                feature_window.append(all_reduce_mean(feature_loss.detach()).item())
                loss = loss + cfg.feature_weight * feature_loss
            loss_value = all_reduce_mean(loss.detach()).item()
            if not math.isfinite(loss_value):
                raise TrainingError(f"loss is {loss_value} at step {step + 1} (epoch {epoch}, batch {index}); "
                                    f"stopped. The last good checkpoint is in {output / 'checkpoints'}; lower lr "
                                    "or check the teacher and data")

            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.grad_clip > 0:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            if observing:
                quant.sync_observers(student)  # ranks keep identical ranges while observing
            step, batch = step + 1, index + 1
            if observing and step >= cfg.observer_steps:
                observing = False
                quant.set_observers(student, False)

            # callbacks: progress, metrics, verification, checkpoint
            session_steps += 1
            window.append(loss_value)
            meter.add(images_per_step)
            bar.update(1)
            if step % cfg.log_every == 0 or step == steps:
                last_loss, rate = sum(window) / len(window), meter.rate()
                bar.set_postfix(loss=f"{last_loss:.3e}", img_s=f"{rate:.1f}")
                record = {"step": step, "epoch": epoch, "loss": last_loss,
                          "lr": optimizer.param_groups[0]["lr"], "images_per_s": round(rate, 2)}
                if feature_window:  # the feature term alone (unweighted), to see what the total is made of
                    record["feature_loss"] = sum(feature_window) / len(feature_window)
                logger.log(record)
                window, feature_window = [], []
            if bins and env.is_main and step % cfg.eval_every == 0 and step < steps:
                eval_results = verify_student(student, bins, cfg, device, observing)
                logger.log({"step": step, "epoch": epoch, "eval": eval_results})
            if step % cfg.save_every == 0 or step == steps:
                checkpoint()
            if step == steps:
                break
        else:
            epoch, batch = epoch + 1, 0
    bar.close()
    train_time = time.perf_counter() - session_start

    if RANK_STATE_ENV in os.environ:
        atomic_torch_save(student.state_dict(), Path(os.environ[RANK_STATE_ENV]) / f"student_rank{env.rank}.pt")
    if bins and env.is_main:
        eval_results = verify_student(student, bins, cfg, device, observing)
        logger.log({"step": step, "epoch": epoch, "eval": eval_results})
    summary = {}
    if env.is_main:
        final = output / FINAL_STUDENT
        quant.save_quantized(final, student, student_name, student_kwargs, qcfg,
                             meta={"input_mean": cfg.input_mean, "input_std": cfg.input_std,
                                   "embedding_size": student_kwargs["num_features"], "teacher": cfg.teacher})
        size = quant.size_report(student)
        summary = {"student": student_name, "teacher_network": cfg.network, "bits": qcfg.describe(),
                   "weight_bits": qcfg.weight_bits, "act_bits": qcfg.act_bits, "size_mb": size["total_mb"],
                   "fp32_mb": size["fp32_mb"], "compression": size["compression"], "steps": steps,
                   "final_loss": last_loss, "eval": eval_results,
                   "images_per_s": round(session_steps * images_per_step / max(train_time, 1e-9), 2),
                   "wall_time_s": round(time.time() - started, 1), "student_checkpoint": str(final)}
        (output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        print(format_summary(summary), flush=True)
    logger.close()
    return student, summary


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as aligned ``key: value`` lines."""
    lines = ["", "summary:"]
    for key, value in summary.items():
        lines.append(f"  {key:<18} {json.dumps(value) if isinstance(value, dict) else value}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config", help="experiment config file, e.g. config/quantface_r100_w8a8.py")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. batch_size=64 resume=true")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        env = init_distributed(cfg.device)
    except (ConfigError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        train(cfg, env)
    except (TrainingError, CheckpointError, ConfigError, quant.QuantConfigError) as exc:
        print(f"\nerror (rank {env.rank}): {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
