"""``Run``: the state of one distillation run, which the set-up builds and the loop and its callbacks work on."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

import quant
from backbones.spec import InputSpec
from data import TrainBatches
from distill.features import FeatureDistillation
from distill.losses import DistillationLoss
from distill.settings import TrainSettings
from utils.distributed import DistEnv


@dataclass
class Run:
    """The state of one run: models, data, optimisation, and the position of the next step."""

    settings: TrainSettings
    env: DistEnv
    spec: InputSpec
    data: TrainBatches
    teacher: nn.Module
    student: nn.Module
    student_name: str
    student_kwargs: dict[str, Any]
    kd: DistillationLoss
    features: FeatureDistillation | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    steps: int
    lr: float
    observing: bool
    bins: dict[str, Path] = field(default_factory=dict)
    resumed_from: Path | None = None
    wall_time_before: float = 0.0  # seconds the run took before the checkpoint it resumed from
    step: int = 0
    epoch: int = 0
    batch: int = 0
    trainable: list[nn.Parameter] = field(default_factory=list)

    @property
    def qcfg(self) -> quant.QuantConfig:
        """The student's quantization placement (saved in its checkpoint)."""
        return self.settings.quant.placement

    @property
    def amp(self) -> bool:
        """Mixed precision: asked for and on CUDA (the scaler was enabled on exactly that condition)."""
        return self.scaler.is_enabled()
