"""The models of a run: the float teacher loaded strictly, the float student, and its quantized form."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

import quant
from backbones import get_model, input_spec, load_float_model
from backbones.loading import read_float_source
from backbones.spec import ARCFACE, InputSpec, check_meta_spec, spec_with
from data import TrainBatches
from distill.settings import ModelSettings
from distill.train_state import rng_isolated
from quant.checkpoint import build_quantized
from utils.checkpoint import load_state_strict, read_checkpoint
from utils.errors import InputError


class TrainingError(InputError, RuntimeError):
    """The run cannot start or continue; the message says why and what to do."""


def check_input_spec(model: ModelSettings, spec: InputSpec) -> None:
    """``image_size``, ``input_mean`` and ``input_std`` are the model's own unless set; a value that
    disagrees with the model's declared spec is an error naming it (the model's spec is what applies)."""
    declared = {"image_size": spec.size, "input_mean": spec.mean, "input_std": spec.std}
    for key, value in declared.items():
        given = getattr(model, key)
        if given is None:
            continue
        as_declared = given == value if key == "image_size" else _channels(given) == value
        if not as_declared:
            raise TrainingError(f"{key}={given!r} disagrees with the {model.network} model's input spec ({key} "
                                f"{value}); remove {key} from the config: the model's own is used")


def _channels(value: Any) -> tuple[float, ...]:
    values = value if isinstance(value, (list, tuple)) else [value] * 3
    return tuple(float(v) for v in values)


def onnx_input_spec(model: ModelSettings) -> InputSpec:
    """The input of an ONNX teacher (ONNX files do not record it): ``onnx_input_spec`` over the ArcFace
    convention."""
    if not model.onnx_input_spec:
        return ARCFACE
    try:
        return spec_with(model.onnx_input_spec)
    except ValueError as exc:
        raise TrainingError(f"onnx_input_spec: {exc}") from exc


def load_teacher(model: ModelSettings) -> tuple[nn.Module, dict[str, Any]]:
    """The float teacher from ``teacher``, strictly: the file must exist and fit ``network``.

    Returns the model and its constructor keywords.
    """
    if not model.teacher:
        raise TrainingError("no teacher: set teacher=<float backbone checkpoint> (an arcface_torch backbone.pth "
                            "or a checkpoint of this project); the student learns from it")
    state, meta = read_float_source(model.teacher, model.network, onnx_input_spec(model), model.network_kwargs)
    if meta.get("quant"):
        raise TrainingError(f"teacher {model.teacher} is a quantized student; the teacher must be a float model")
    if meta.get("network", model.network) != model.network:
        raise TrainingError(f"teacher {model.teacher} is a '{meta['network']}' but network='{model.network}'; "
                            "set network to match the checkpoint")
    kwargs = {**meta.get("network_kwargs", {}), **model.network_kwargs}
    if kwargs.setdefault("num_features", model.embedding_size) != model.embedding_size:
        raise TrainingError(f"teacher {model.teacher} makes {kwargs['num_features']}-D embeddings but "
                            f"embedding_size={model.embedding_size}; set embedding_size to match")
    try:
        check_meta_spec(meta, input_spec(model.network, kwargs), f"teacher {model.teacher}")
    except ValueError as exc:
        raise TrainingError(str(exc)) from exc
    teacher = load_state_strict(get_model(model.network, **kwargs), state, f"teacher {model.teacher}")
    check_input_spec(model, teacher.input_spec)
    return teacher, kwargs


def build_student(model: ModelSettings, teacher: nn.Module, teacher_kwargs: dict[str, Any]
                  ) -> tuple[nn.Module, str, dict[str, Any]]:
    """The float student before quantization: the teacher itself, or ``student_network`` (random init or
    ``student_init``).  Returns (model, backbone name, constructor keywords)."""
    name = model.student_network
    if not name:
        return teacher, model.network, teacher_kwargs
    kwargs = {"num_features": model.student_embedding_size or model.embedding_size, **model.student_network_kwargs}
    if not model.student_init and input_spec(name, kwargs) != teacher.input_spec:
        kwargs["input_spec"] = teacher.input_spec.to_dict()  # from scratch: it learns on the teacher's input
    if input_spec(name, kwargs) != teacher.input_spec:
        raise TrainingError(f"student_network={name!r} expects input {input_spec(name)} but the {model.network} "
                            f"teacher {teacher.input_spec}; both see the same batches")
    if model.student_init:
        return load_float_model(model.student_init, name, **kwargs), name, kwargs
    return get_model(name, **kwargs), name, kwargs


def load_student_from(model: ModelSettings, qcfg: quant.QuantConfig, device: torch.device
                      ) -> tuple[nn.Module, str, dict[str, Any]]:
    """The quantized student of ``student_from`` (e.g. the previous generation's), checked to be the student
    this config describes: the same backbone and the same quantization settings."""
    state, meta = read_checkpoint(model.student_from, map_location=device)
    if not meta.get("quant"):
        raise TrainingError(f"student_from {model.student_from} is a float checkpoint; give a quantized student "
                            "(student_final.pt)")
    expected = model.student_network or model.network
    if meta.get("network") != expected:
        raise TrainingError(f"student_from {model.student_from} is a '{meta.get('network')}' student, this "
                            f"config's student is a '{expected}'")
    ours, theirs = qcfg.to_dict(), quant.QuantConfig.from_dict(meta["quant"]).to_dict()
    differ = sorted(key for key in ours if ours[key] != theirs.get(key))
    if differ:
        raise TrainingError(f"student_from {model.student_from} was quantized with other settings: "
                            + ", ".join(f"{k}={theirs.get(k)!r} (config {ours[k]!r})" for k in differ))
    student = build_quantized(state, meta, str(model.student_from)).to(device).train()
    return student, meta["network"], dict(meta.get("network_kwargs", {}))


def quantize_student(settings: quant.QuantSettings, float_student: nn.Module, teacher: nn.Module,
                     data: TrainBatches, device: torch.device) -> tuple[nn.Module, nn.Module]:
    """The quantized student, through ``quant.post_training_quantize`` on the calibration batches (the
    same on every rank, so all ranks start identical); returns (student, teacher).

    When the student is the teacher's copy and channels are equalised, the equalised float copy becomes
    the teacher: it computes the same function (to float rounding), and its intermediate outputs then
    line up channel for channel with the student's, as ``feature_layers`` needs.
    """
    result = quant.post_training_quantize(float_student.to(device), settings.placement,
                                          rng_isolated(data.calibration()), settings.calibration_batches)
    return result.student.to(device).train(), (result.reference if float_student is teacher else teacher)
