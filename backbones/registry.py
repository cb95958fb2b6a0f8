"""The backbone registry: name -> (constructor, declared input spec)."""
from __future__ import annotations

import difflib
from functools import partial
from typing import Any, Callable, Mapping

from torch import nn

from backbones.dlib_resnet import INPUT_SPEC as DLIB_SPEC
from backbones.dlib_resnet import dlib_resnet
from backbones.iresnet import iresnet
from backbones.mfn_tflite import INPUT_SPEC as MFN_TFLITE_SPEC
from backbones.mfn_tflite import mfn_tflite
from backbones.mobilefacenet import mobilefacenet, mobilefacenet_large
from backbones.onnx_graph import onnx_graph
from backbones.spec import ARCFACE, InputSpec
from backbones.vargfacenet import vargfacenet
from utils.errors import InputError

# spec None: the model's input spec is one of its constructor keywords (``input_spec``)
_REGISTRY: dict[str, tuple[Callable[..., nn.Module], InputSpec | None]] = {
    "r18": (partial(iresnet, "r18"), ARCFACE),
    "r34": (partial(iresnet, "r34"), ARCFACE),
    "r50": (partial(iresnet, "r50"), ARCFACE),
    "r100": (partial(iresnet, "r100"), ARCFACE),
    "r200": (partial(iresnet, "r200"), ARCFACE),
    "mbf": (mobilefacenet, ARCFACE),
    "mbf_large": (mobilefacenet_large, ARCFACE),
    "vargfacenet": (vargfacenet, ARCFACE),
    "mfn_tflite": (mfn_tflite, MFN_TFLITE_SPEC),
    "dlib_resnet": (dlib_resnet, DLIB_SPEC),
    "onnx_graph": (onnx_graph, None),
}


class BackboneError(InputError, ValueError):
    """A backbone name (or its keywords) given by the user is not one this registry can build."""


def available_models() -> list[str]:
    """Names accepted by ``get_model``."""
    return sorted(_REGISTRY)


def _entry(name: str) -> tuple[Callable[..., nn.Module], InputSpec | None]:
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise BackboneError(f"unknown backbone '{name}'{hint} (available: {', '.join(available_models())})")
    return _REGISTRY[name]


def input_spec(name: str, network_kwargs: Mapping[str, Any] | None = None) -> InputSpec:
    """The input backbone ``name`` (built with ``network_kwargs``) expects: size, normalisation, channel order,
    alignment.  An ``input_spec`` keyword replaces the declared one (a student trained from scratch on its
    teacher's input; ``onnx_graph`` always has one)."""
    spec = _entry(name)[1]
    if network_kwargs and "input_spec" in network_kwargs:
        return InputSpec.from_dict(network_kwargs["input_spec"])
    if spec is None:
        raise BackboneError(f"backbone '{name}' takes its input spec from its network_kwargs, and none were given")
    return spec


def get_model(name: str, **kwargs: Any) -> nn.Module:
    """Build backbone ``name`` with constructor keywords ``kwargs`` (e.g. ``num_features=512``); the model
    carries its ``InputSpec`` as ``model.input_spec``."""
    build, declared = _entry(name)
    own = {k: v for k, v in kwargs.items() if k != "input_spec"} if declared is not None else kwargs
    model = build(**own)
    model.input_spec = input_spec(name, kwargs)
    return model


