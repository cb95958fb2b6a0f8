"""Everything a distillation run needs before its first step, in two steps: build, then resume.

``build_run`` loads the float teacher strictly, builds the float student, places the quantizers through
``quant.post_training_quantize`` (the one post-training path), and builds the data, loss, optimiser and
schedule into a ``Run``; ``prepare_run`` finds where a resumed run left off, builds, and restores its
checkpoint (``distill.resume``).  The config was checked before (``distill.settings``), before anything loads.  The loop
(``distill.loop``) and its callbacks (``distill.callbacks``) work on the ``Run``.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

import quant
from data import TrainBatches, build_train_batches
from distill.bit_allocation import allocate_layer_bits
from distill.features import FeatureDistillation
from distill.losses import DistillationLoss
from distill.margin import MarginHead
from distill.models import TrainingError, build_student, load_student_from, load_teacher, quantize_student
from distill.reconstruction import reconstruct_student
from distill.resume import find_resume_point, restore
from distill.run import Run
from distill.schedule import build_scheduler, scaled_lr, total_steps
from distill.settings import OptimSettings, TrainSettings
from utils.distributed import DistEnv

NORM_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)
__all__ = ["Run", "TrainingError", "build_run", "prepare_run", "param_groups"]


# ---- optimisation -----------------------------------------------------------------------------------------

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


def build_optimizer(optim: OptimSettings, groups: list[dict[str, Any]], lr: float) -> torch.optim.Optimizer:
    if optim.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=optim.momentum, nesterov=optim.nesterov)
    return torch.optim.AdamW(groups, lr=lr)  # "adamw", the only other choice OptimSettings lets through


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---- the run ------------------------------------------------------------------------------------------------

def training_batches(settings: TrainSettings, teacher: nn.Module, env: DistEnv) -> TrainBatches:
    """The run's data; a source that cannot give batches (too few images, no BatchNorm statistics) is an
    input error naming it."""
    try:
        return build_train_batches(settings.data, teacher.input_spec, env.device, env.rank, env.world_size, teacher,
                                   settings.run.num_workers, settings.run.output)
    except ValueError as exc:
        raise TrainingError(f"training data: {exc}") from exc


def make_student(settings: TrainSettings, teacher: nn.Module, teacher_kwargs: dict[str, Any], data: TrainBatches,
                 device: torch.device, resuming: bool) -> tuple[nn.Module, str, dict[str, Any], nn.Module]:
    """(quantized student, its backbone name, its constructor keywords, the teacher it learns from): continued
    from ``student_from``, or quantized from the float student on the calibration batches and, unless
    resuming (the checkpoint holds the trained student), block-reconstructed."""
    if settings.model.student_from:
        return (*load_student_from(settings.model, settings.quant.placement, device), teacher)
    float_student, name, kwargs = build_student(settings.model, teacher, teacher_kwargs)
    student, teacher = quantize_student(settings.quant, float_student, teacher, data, device)
    if settings.reconstruction.reconstruct_iters and not resuming:
        reconstruct_student(settings.reconstruction, Path(settings.run.output), student, data, device)
    return student, name, kwargs, teacher


def distillation_losses(optim: OptimSettings, teacher: nn.Module, student: nn.Module, student_features: int,
                        teacher_features: int, device: torch.device
                        ) -> tuple[DistillationLoss, FeatureDistillation | None]:
    """The embedding loss (with its projection and margin head, when any) and the feature loss."""
    head = (MarginHead(student_features, optim.num_classes, optim.margin_head, optim.margin_s, optim.margin_m)
            if optim.margin_head else None)
    kd = DistillationLoss(optim.loss, student_features, teacher_features, head, optim.margin_weight).to(device)
    try:
        features = FeatureDistillation(teacher, student, optim.feature_layers) if optim.feature_layers else None
    except ValueError as exc:  # a glob that matches no module, or modules of different shapes
        raise TrainingError(str(exc)) from exc
    return kd, features


def build_run(settings: TrainSettings, env: DistEnv, bins: dict[str, Path], resuming: bool = False) -> Run:
    """Teacher, quantized student, data, losses and optimiser, initialised the same on every rank
    (``resuming``: the student's trained state comes from a checkpoint next, so block reconstruction is
    skipped)."""
    seed_everything(settings.data.seed)
    teacher, teacher_kwargs = load_teacher(settings.model)
    if settings.quant.size_budget:
        settings = settings.replaced(layer_bits=allocate_layer_bits(settings, teacher, env.device))
    data = training_batches(settings, teacher, env)
    student, name, kwargs, teacher = make_student(settings, teacher, teacher_kwargs, data, env.device, resuming)
    teacher = teacher.to(env.device).eval().requires_grad_(False)  # after the student copied it
    optim = settings.optim
    kd, features = distillation_losses(optim, teacher, student, kwargs["num_features"], settings.model.embedding_size,
                                       env.device)
    steps = total_steps(optim.num_steps, optim.epochs, data.batches_per_epoch)
    lr = scaled_lr(optim.lr, settings.data.batch_size, env.world_size)
    optimizer = build_optimizer(optim, param_groups([student, kd], optim.weight_decay, lr * optim.quantizer_lr_scale),
                                lr)
    scaler = torch.amp.GradScaler(env.device.type, enabled=optim.amp and env.device.type == "cuda")
    run = Run(settings, env, teacher.input_spec, data, teacher, student, name, kwargs, kd, features, optimizer,
              build_scheduler(optimizer, optim, steps), scaler, steps, lr, settings.quant.observer_steps > 0, bins)
    run.trainable = [p for group in optimizer.param_groups for p in group["params"]]
    return run


def prepare_run(settings: TrainSettings, env: DistEnv) -> Run:
    """Build the run of checked ``settings`` and, when resuming, restore it; nothing is trained yet."""
    bins = settings.eval.bins()
    resume_from = find_resume_point(settings)
    if env.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    run = build_run(settings, env, bins, resuming=resume_from is not None)
    seed_everything(settings.data.seed + env.rank)  # per-rank randomness inside the loop (e.g. dropout)
    if resume_from is not None:
        restore(run, resume_from)
    quant.set_observers(run.student, run.observing)
    return run
