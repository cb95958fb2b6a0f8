"""Everything a distillation run needs before its first step: checks, teacher, student, data, optimiser.

``prepare_run`` checks the config (before anything is loaded), loads the float teacher strictly, builds
the float student, places the quantizers through ``quant.post_training_quantize`` (the one
post-training path), builds the loss, optimiser and schedule, and restores a checkpoint when resuming.
The returned ``Run`` is what the loop (``distill.loop``) and its callbacks (``distill.callbacks``) work on.
"""
from __future__ import annotations

import importlib.util
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

import quant
from backbones import get_model, input_spec, load_float_model
from backbones.loading import read_float_source
from backbones.spec import ARCFACE, InputSpec, check_meta_spec, spec_with
from data import TrainBatches, build_train_batches
from data.augment import Augmentation
from data.generated import check_options
from distill.bit_allocation import allocate_layer_bits
from distill.features import FeatureDistillation
from distill.losses import LOSSES, DistillationLoss
from distill.margin import HEADS, MarginHead
from distill.reconstruction import reconstruct_student
from distill.schedule import SCHEDULERS, build_scheduler, milestone_steps, scaled_lr, total_steps
from eval.verification import find_bins
from distill.train_state import list_checkpoints, load_training_state, restore_rng_state, rng_isolated
from quant.checkpoint import build_quantized
from utils.checkpoint import load_state_strict, read_checkpoint
from utils.config import Config, load_config
from utils.distributed import DistEnv
from utils.errors import InputError, QuantFaceError
from utils.fileio import check_writable_dir

OPTIMIZERS = ("sgd", "adamw")
NORM_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)

# fields that may change between a run and its resumption: bookkeeping, not what is trained
RESUMABLE_CHANGES = {"resume", "output", "config_file", "log_every", "save_every", "keep_last", "tensorboard",
                     "device", "num_workers", "eval_targets", "eval_data_dir", "eval_every", "eval_batch_size",
                     "assets_dir"}


class TrainingError(InputError, RuntimeError):
    """The run cannot start or continue; the message says why and what to do."""


@dataclass
class Run:
    """The state of one run: models, data, optimisation, and the position of the next step."""

    cfg: Config
    env: DistEnv
    spec: InputSpec
    data: TrainBatches
    teacher: nn.Module
    student: nn.Module
    student_name: str
    student_kwargs: dict[str, Any]
    qcfg: quant.QuantConfig
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
    def amp(self) -> bool:
        """Mixed precision: asked for and on CUDA (the scaler was enabled on exactly that condition)."""
        return self.scaler.is_enabled()


# ---- checks done before anything is loaded ----------------------------------------------------------

def check_run_fields(cfg: Config) -> None:
    """Choices, intervals and combinations of the run's fields, the quantization settings and the output
    folder: all checked before anything is loaded."""
    check_writable_dir(cfg.output, "output")
    quant.QuantConfig.from_config(cfg)  # a bad bit width or placement names its setting now, not after loading
    choices = {"loss": LOSSES, "scheduler": SCHEDULERS, "optimizer": OPTIMIZERS}
    for key, valid in choices.items():
        if cfg[key] not in valid:
            raise TrainingError(f"{key}={cfg[key]!r} is not one of {', '.join(valid)}")
    for key in ("log_every", "save_every", "eval_every", "keep_last", "batch_size"):
        if cfg[key] < 1:
            raise TrainingError(f"{key}={cfg[key]} must be >= 1")
    for key in ("observer_steps", "calibration_batches"):
        if cfg[key] < 0:
            raise TrainingError(f"{key}={cfg[key]} must be >= 0")
    if cfg.margin_head and (cfg.margin_head not in HEADS or cfg.num_classes < 2 or cfg.data_source != "recordio"):
        raise TrainingError(f"margin_head={cfg.margin_head!r} needs one of {', '.join(HEADS)}, num_classes >= 2 "
                            f"(the identities; got {cfg.num_classes}) and labelled data (data_source='recordio', "
                            f"got {cfg.data_source!r})")
    if cfg.generations < 1:
        raise TrainingError(f"generations={cfg.generations} must be >= 1")
    if cfg.student_from and (cfg.student_init or cfg.student_embedding_size):
        raise TrainingError("student_from continues a quantized student as it is; student_init and "
                            "student_embedding_size do not apply to it")
    if cfg.observer_steps == 0 and cfg.calibration_batches == 0 and not cfg.student_from:
        raise TrainingError("activation ranges would never be observed: set calibration_batches >= 1 (batches "
                            "observed before training) or observer_steps >= 1 (training steps that observe)")
    if cfg.bias_correction and cfg.calibration_batches == 0:
        raise TrainingError("bias_correction=True corrects biases after calibration: set calibration_batches >= 1")
    check_reconstruct_fields(cfg)
    check_data_fields(cfg)
    try:
        milestone_steps(cfg.lr_milestones, 1)
    except ValueError as exc:
        raise TrainingError(str(exc)) from exc
    if cfg.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise TrainingError("tensorboard=True needs the tensorboard package: pip install tensorboard "
                            "(or set tensorboard=False)")


def check_data_fields(cfg: Config) -> None:
    """The augmentation and generator fields, checked before any model is loaded."""
    try:
        Augmentation.from_config(cfg)
        check_options(cfg.latent_interpolation, cfg.generator_upsample)
    except ValueError as exc:
        raise TrainingError(str(exc)) from exc


def check_reconstruct_fields(cfg: Config) -> None:
    """Block reconstruction fits a calibrated student: its ranges must be observed first."""
    if cfg.reconstruct_iters < 0:
        raise TrainingError(f"reconstruct_iters={cfg.reconstruct_iters} must be >= 0 (0 = no block reconstruction)")
    if not cfg.reconstruct_iters:
        return
    for key in ("reconstruct_images", "reconstruct_batch_size", "reconstruct_min_layers"):
        if cfg[key] < 1:
            raise TrainingError(f"{key}={cfg[key]} must be >= 1")
    if not 0.0 <= cfg.reconstruct_drop < 1.0:
        raise TrainingError(f"reconstruct_drop={cfg.reconstruct_drop} must be in [0, 1) (0.5 = QDrop, 0 = BRECQ)")
    if cfg.calibration_batches == 0:
        raise TrainingError("reconstruct_iters > 0 fits a calibrated student: set calibration_batches >= 1")
    if cfg.bias_correction:  # measured: dlib W4A4 real-photo cosine 0.9576 without it, 0.9375 with it
        raise TrainingError("bias_correction=True with reconstruct_iters > 0: block reconstruction fits the blocks' "
                            "outputs itself, and biases corrected for nearest rounding first leave it worse; set "
                            "bias_correction=False")
    if cfg.student_from:
        raise TrainingError("student_from continues a trained student; block reconstruction starts a new one from "
                            "calibration: set reconstruct_iters=0")


def check_input_spec(cfg: Config, spec: InputSpec, network: str) -> None:
    """``image_size``, ``input_mean`` and ``input_std`` are the model's own unless set; a value that
    disagrees with the model's declared spec is an error naming it (the model's spec is what applies)."""
    declared = {"image_size": spec.size, "input_mean": spec.mean, "input_std": spec.std}
    for key, value in declared.items():
        given = cfg[key]
        if given is None:
            continue
        as_declared = given == value if key == "image_size" else _channels(given) == value
        if not as_declared:
            raise TrainingError(f"{key}={given!r} disagrees with the {network} model's input spec ({key} "
                                f"{value}); remove {key} from the config: the model's own is used")


def _channels(value: Any) -> tuple[float, ...]:
    values = value if isinstance(value, (list, tuple)) else [value] * 3
    return tuple(float(v) for v in values)


def eval_bins(cfg: Config) -> dict[str, Path]:
    """``{target: path}`` of the verification sets, all checked to exist now rather than at step 2000."""
    if not cfg.eval_data_dir:
        return {}
    try:
        return find_bins(cfg.eval_data_dir, cfg.eval_targets)
    except FileNotFoundError as exc:
        raise TrainingError(f"{exc}; or set eval_data_dir='' to train without verification") from exc


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


def check_same_run(cfg: Config) -> None:
    """Resuming continues the run saved in ``output``, so its training settings must not have changed
    (say, a config edited since, or a newer version of a shipped config); otherwise stop and say which.
    A field the saved run did not know yet (added to ``config/base.py`` since) counts as unchanged while it
    keeps its default: that default is what the older run did."""
    saved_path = Path(cfg.output) / "config.json"
    if not saved_path.is_file():
        return
    saved = json.loads(saved_path.read_text())
    current = json.loads(cfg.to_json())
    defaults = json.loads(load_config(None).to_json())
    if current["size_budget"]:  # layer_bits then follows from the budget and the teacher's measured sensitivity
        saved["layer_bits"] = current["layer_bits"]
    for key in set(current) - set(saved):
        if current[key] == defaults.get(key):
            saved[key] = current[key]
    changed = sorted(key for key in set(saved) | set(current)
                     if key not in RESUMABLE_CHANGES and saved.get(key) != current.get(key))
    if changed:
        key = changed[0]
        raise TrainingError(f"{cfg.output} holds a run with other settings ({', '.join(changed)}; e.g. {key} was "
                            f"{saved.get(key)!r}, now {current.get(key)!r}); resume=true would mix them. Delete "
                            "that folder or choose another output to start afresh")


# ---- models ---------------------------------------------------------------------------------------------

def onnx_input_spec(cfg: Config) -> InputSpec:
    """The input of an ONNX teacher (ONNX files do not record it): ``onnx_input_spec`` over the ArcFace
    convention.  Set for a teacher that is not an ONNX file, it is an error (that file records its own)."""
    if not cfg.onnx_input_spec:
        return ARCFACE
    if not str(cfg.teacher).lower().endswith(".onnx"):
        raise TrainingError(f"onnx_input_spec is set but teacher {cfg.teacher} is not an .onnx file; its input "
                            "spec comes from its backbone: remove onnx_input_spec")
    try:
        return spec_with(cfg.onnx_input_spec)
    except ValueError as exc:
        raise TrainingError(f"onnx_input_spec: {exc}") from exc


def load_teacher(cfg: Config) -> tuple[nn.Module, dict[str, Any]]:
    """The float teacher from ``cfg.teacher``, strictly: the file must exist and fit ``cfg.network``.

    Returns the model and its constructor keywords.
    """
    if not cfg.teacher:
        raise TrainingError("no teacher: set teacher=<float backbone checkpoint> (an arcface_torch backbone.pth "
                            "or a checkpoint of this project); the student learns from it")
    state, meta = read_float_source(cfg.teacher, cfg.network, onnx_input_spec(cfg), cfg.network_kwargs)
    if meta.get("quant"):
        raise TrainingError(f"teacher {cfg.teacher} is a quantized student; the teacher must be a float model")
    if meta.get("network", cfg.network) != cfg.network:
        raise TrainingError(f"teacher {cfg.teacher} is a '{meta['network']}' but network='{cfg.network}'; "
                            "set network to match the checkpoint")
    kwargs = {**meta.get("network_kwargs", {}), **cfg.network_kwargs}
    if kwargs.setdefault("num_features", cfg.embedding_size) != cfg.embedding_size:
        raise TrainingError(f"teacher {cfg.teacher} makes {kwargs['num_features']}-D embeddings but "
                            f"embedding_size={cfg.embedding_size}; set embedding_size to match")
    try:
        check_meta_spec(meta, input_spec(cfg.network, kwargs), f"teacher {cfg.teacher}")
    except ValueError as exc:
        raise TrainingError(str(exc)) from exc
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
    if not cfg.student_init and input_spec(cfg.student_network, kwargs) != teacher.input_spec:
        kwargs["input_spec"] = teacher.input_spec.to_dict()  # from scratch: it learns on the teacher's input
    if input_spec(cfg.student_network, kwargs) != teacher.input_spec:
        raise TrainingError(f"student_network={cfg.student_network!r} expects input {input_spec(cfg.student_network)} "
                            f"but the {cfg.network} teacher {teacher.input_spec}; both see the same batches")
    if cfg.student_init:
        return load_float_model(cfg.student_init, cfg.student_network, **kwargs), cfg.student_network, kwargs
    return get_model(cfg.student_network, **kwargs), cfg.student_network, kwargs


def load_student_from(cfg: Config, device: torch.device) -> tuple[nn.Module, str, dict[str, Any]]:
    """The quantized student of ``student_from`` (e.g. the previous generation's), checked to be the student
    this config describes: the same backbone and the same quantization settings."""
    state, meta = read_checkpoint(cfg.student_from, map_location=device)
    if not meta.get("quant"):
        raise TrainingError(f"student_from {cfg.student_from} is a float checkpoint; give a quantized student "
                            "(student_final.pt)")
    expected = cfg.student_network or cfg.network
    if meta.get("network") != expected:
        raise TrainingError(f"student_from {cfg.student_from} is a '{meta.get('network')}' student, this config's "
                            f"student is a '{expected}'")
    ours, theirs = quant.QuantConfig.from_config(cfg).to_dict(), meta["quant"]
    differ = sorted(key for key in ours if ours[key] != theirs.get(key))
    if differ:
        raise TrainingError(f"student_from {cfg.student_from} was quantized with other settings: "
                            + ", ".join(f"{k}={theirs.get(k)!r} (config {ours[k]!r})" for k in differ))
    student = build_quantized(state, meta, str(cfg.student_from)).to(device).train()
    return student, meta["network"], dict(meta.get("network_kwargs", {}))


def quantize_student(cfg: Config, float_student: nn.Module, teacher: nn.Module, data: TrainBatches,
                     device: torch.device) -> tuple[nn.Module, nn.Module]:
    """The quantized student, through ``quant.post_training_quantize`` on the calibration batches (the
    same on every rank, so all ranks start identical); returns (student, teacher).

    When the student is the teacher's copy and channels are equalised, the equalised float copy becomes
    the teacher: it computes the same function (to float rounding), and its intermediate outputs then
    line up channel for channel with the student's, as ``feature_layers`` needs.
    """
    qcfg = quant.QuantConfig.from_config(cfg)
    result = quant.post_training_quantize(float_student.to(device), qcfg, rng_isolated(data.calibration()),
                                          cfg.calibration_batches)
    return result.student.to(device).train(), (result.reference if float_student is teacher else teacher)


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


def build_optimizer(cfg: Config, groups: list[dict[str, Any]], lr: float) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    return torch.optim.AdamW(groups, lr=lr)  # "adamw", the only other choice check_run_fields lets through


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---- the run ------------------------------------------------------------------------------------------------

def build_models(cfg: Config, env: DistEnv, resuming: bool = False) -> dict[str, Any]:
    """Teacher, quantized student, data and losses, initialised the same on every rank (``resuming``: the
    student's trained state comes from a checkpoint next, so block reconstruction is skipped)."""
    seed_everything(cfg.seed)
    teacher, teacher_kwargs = load_teacher(cfg)
    spec = teacher.input_spec
    check_input_spec(cfg, spec, cfg.network)
    if cfg.size_budget:
        cfg.layer_bits = allocate_layer_bits(cfg, teacher, env.device)
    try:
        data = build_train_batches(cfg, spec, env.device, env.rank, env.world_size, teacher)
        if cfg.student_from:
            if cfg.feature_layers and cfg.equalize:
                raise TrainingError("feature_layers with equalize needs the equalised teacher of the first run; "
                                    "with student_from, distil the embedding only (feature_layers=[])")
            student, student_name, student_kwargs = load_student_from(cfg, env.device)
        else:
            float_student, student_name, student_kwargs = build_student(cfg, teacher, teacher_kwargs)
            student, teacher = quantize_student(cfg, float_student, teacher, data, env.device)
            if cfg.reconstruct_iters and not resuming:
                reconstruct_student(cfg, student, data, env.device)
    except QuantFaceError:
        raise  # a quantization, checkpoint or image error names its own setting or file
    except ValueError as exc:  # no or unreadable data; the message names the file or field
        raise TrainingError(f"training data: {exc}") from exc
    teacher = teacher.to(env.device).eval().requires_grad_(False)  # after the student copied it
    head = (MarginHead(student_kwargs["num_features"], cfg.num_classes, cfg.margin_head, cfg.margin_s, cfg.margin_m)
            if cfg.margin_head else None)
    kd = DistillationLoss(cfg.loss, student_kwargs["num_features"], cfg.embedding_size, head,
                          cfg.margin_weight).to(env.device)
    try:
        features = FeatureDistillation(teacher, student, cfg.feature_layers) if cfg.feature_layers else None
    except ValueError as exc:
        raise TrainingError(str(exc)) from exc
    return {"spec": spec, "data": data, "teacher": teacher, "student": student, "student_name": student_name,
            "student_kwargs": student_kwargs, "kd": kd, "features": features}


def prepare_run(cfg: Config, env: DistEnv) -> Run:
    """Check, build and (when resuming) restore a run; nothing is trained yet."""
    check_run_fields(cfg)
    bins = eval_bins(cfg)
    resume_from = find_resume_point(cfg)
    if env.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    parts = build_models(cfg, env, resuming=resume_from is not None)
    steps = total_steps(cfg.num_steps, cfg.epochs, parts["data"].batches_per_epoch)
    lr = scaled_lr(cfg.lr, cfg.batch_size, env.world_size)
    groups = param_groups([parts["student"], parts["kd"]], cfg.weight_decay, lr * cfg.quantizer_lr_scale)
    optimizer = build_optimizer(cfg, groups, lr)
    run = Run(cfg=cfg, env=env, qcfg=quant.QuantConfig.from_config(cfg), optimizer=optimizer,
              scheduler=build_scheduler(optimizer, cfg, steps),
              scaler=torch.amp.GradScaler(env.device.type, enabled=cfg.amp and env.device.type == "cuda"),
              steps=steps, lr=lr, observing=cfg.observer_steps > 0, bins=bins, **parts)
    run.trainable = [p for group in optimizer.param_groups for p in group["params"]]
    seed_everything(cfg.seed + env.rank)  # per-rank randomness inside the loop (e.g. dropout)
    if resume_from is not None:
        restore(run, resume_from)
    quant.set_observers(run.student, run.observing)
    return run


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
