"""A training run's settings: the flat config cut into typed sections, each checked once when built.

The sections are the headings of ``config/base.py``: models, quantization (``quant.QuantSettings``), block
reconstruction (``quant.reconstruct.ReconstructionSettings``), data (``data.DataSettings``), optimisation,
run and evaluation (``eval.settings.EvalSettings``).  Each package receives only its own section; the rules
that join two sections are checked here, once.  A resumed run may change its run and evaluation sections
only: they say how the run is carried out and watched, not what is trained.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Any

from data.settings import DataSettings
from distill.losses import check_loss
from distill.margin import check_head
from distill.schedule import SCHEDULERS, milestone_steps
from eval.settings import EvalSettings
from quant.config import QuantSettings
from quant.reconstruct import ReconstructionSettings
from utils.config import Config, ConfigError
from utils.fileio import check_writable_dir
from utils.sections import Section, at_least, one_of

OPTIMIZERS = ("sgd", "adamw")


@dataclass(frozen=True)
class ModelSettings(Section):
    """Teacher and student: which networks, from which files, with which input."""

    network: str = "r50"
    network_kwargs: dict[str, Any] = field(default_factory=dict)
    embedding_size: int = 512
    teacher: str = ""
    onnx_input_spec: dict[str, Any] = field(default_factory=dict)
    image_size: int | None = None
    input_mean: Any = None
    input_std: Any = None
    student_network: str = ""
    student_network_kwargs: dict[str, Any] = field(default_factory=dict)
    student_embedding_size: int = 0
    student_init: str = ""
    student_from: str = ""
    generations: int = 1

    def __post_init__(self) -> None:
        at_least(self, 1, "generations")
        if self.student_from and (self.student_init or self.student_embedding_size):
            raise ConfigError("student_from continues a quantized student as it is; student_init and "
                              "student_embedding_size do not apply to it")
        if not self.student_network and (self.student_embedding_size not in (0, self.embedding_size)
                                         or self.student_init):
            raise ConfigError("student_embedding_size and student_init need a different student_network; a student "
                              "of the teacher's architecture starts as the teacher's copy")
        if self.onnx_input_spec and not self.teacher.lower().endswith(".onnx"):
            raise ConfigError(f"onnx_input_spec is set but teacher {self.teacher} is not an .onnx file; its input "
                              "spec comes from its backbone: remove onnx_input_spec")


@dataclass(frozen=True)
class OptimSettings(Section):
    """Loss, optimiser and schedule."""

    lr: float = 0.0
    optimizer: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    quantizer_lr_scale: float = 1.0
    grad_clip: float = 5.0
    loss: str = "mse"
    feature_layers: list[str] = field(default_factory=list)
    feature_weight: float = 1.0
    margin_head: str = ""
    num_classes: int = 0
    margin_s: float = 64.0
    margin_m: float = 0.5
    margin_weight: float = 1.0
    epochs: int = 11
    num_steps: int = 0
    scheduler: str = "step"
    lr_milestones: list[float] = field(default_factory=lambda: [10 / 11])
    lr_gamma: float = 0.1
    warmup_steps: int = 0
    amp: bool = True

    def __post_init__(self) -> None:
        one_of("scheduler", self.scheduler, SCHEDULERS)
        one_of("optimizer", self.optimizer, OPTIMIZERS)
        try:  # the rules the loss, the head and the schedule check themselves with, checked now
            check_loss(self.loss)
            if self.margin_head:
                check_head(self.margin_head, self.num_classes)
            milestone_steps(self.lr_milestones, 1)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc


@dataclass(frozen=True)
class RunSettings(Section):
    """Where the run writes, how it is carried out and watched; may change when it is resumed."""

    output: str = ""
    save_every: int = 1000
    keep_last: int = 3
    resume: bool = False
    log_every: int = 10
    tensorboard: bool = False
    device: str = "auto"
    num_workers: int = 8
    assets_dir: str = ""
    config_file: str = ""

    def __post_init__(self) -> None:
        at_least(self, 1, "save_every", "keep_last", "log_every")
        at_least(self, 0, "num_workers")
        check_writable_dir(self.output, "output")
        if self.tensorboard and importlib.util.find_spec("tensorboard") is None:
            raise ConfigError("tensorboard=True needs the tensorboard package: pip install tensorboard "
                              "(or set tensorboard=False)")


RESUMABLE = RunSettings.keys() | EvalSettings.keys()


@dataclass(frozen=True)
class TrainSettings:
    """Every section of one run, and ``flat``: the config as the user wrote it (saved beside the outputs)."""

    flat: Config
    model: ModelSettings
    quant: QuantSettings
    reconstruction: ReconstructionSettings
    data: DataSettings
    optim: OptimSettings
    run: RunSettings
    eval: EvalSettings

    @classmethod
    def from_config(cls, cfg: Config) -> "TrainSettings":
        """Every section built and checked, then the rules that join sections."""
        settings = cls(cfg, *(kind.from_config(cfg) for kind in (ModelSettings, QuantSettings, ReconstructionSettings,
                                                                   DataSettings, OptimSettings, RunSettings,
                                                                   EvalSettings)))
        settings.check_across()
        return settings

    def replaced(self, **changes: Any) -> "TrainSettings":
        """The same run with some flat fields changed (e.g. a generation's output and student)."""
        return TrainSettings.from_config(Config({**self.flat, **changes}))

    def check_across(self) -> None:
        """The rules joining two or more sections."""
        model, q, rec = self.model, self.quant, self.reconstruction
        if self.optim.margin_head and self.data.data_source != "recordio":
            raise ConfigError(f"margin_head={self.optim.margin_head!r} needs labelled data (data_source='recordio', "
                              f"got {self.data.data_source!r})")
        if q.observer_steps == 0 and q.calibration_batches == 0 and not model.student_from:
            raise ConfigError("activation ranges would never be observed: set calibration_batches >= 1 (batches "
                              "observed before training) or observer_steps >= 1 (training steps that observe)")
        if q.size_budget and (model.student_network or model.student_from):
            raise ConfigError("size_budget chooses widths from the teacher's sensitivity, so the student must be "
                              "the teacher's copy: leave student_network and student_from empty")
        if model.student_from and self.optim.feature_layers and q.placement.equalize:
            raise ConfigError("feature_layers with equalize needs the equalised teacher of the first run; with "
                              "student_from, distil the embedding only (feature_layers=[])")
        if rec.reconstruct_iters:
            self._check_reconstruction()

    def _check_reconstruction(self) -> None:
        """Block reconstruction fits a freshly calibrated student."""
        if self.quant.calibration_batches == 0:
            raise ConfigError("reconstruct_iters > 0 fits a calibrated student: set calibration_batches >= 1")
        if self.quant.placement.bias_correction:
            raise ConfigError("bias_correction=True with reconstruct_iters > 0: block reconstruction fits the "
                              "blocks' outputs itself, and biases corrected for nearest rounding first leave it "
                              "worse; set bias_correction=False")
        if self.model.student_from:
            raise ConfigError("student_from continues a trained student; block reconstruction starts a new one "
                              "from calibration: set reconstruct_iters=0")


def section_keys() -> dict[str, set[str]]:
    """The config keys each section reads, by the heading of ``config/base.py`` they stand under."""
    return {"models": ModelSettings.keys(), "quantization": QuantSettings.keys(),
            "block reconstruction": ReconstructionSettings.keys() - {"seed"}, "data": DataSettings.keys(),
            "optimisation": OptimSettings.keys(), "run": RunSettings.keys(), "evaluation": EvalSettings.keys()}
