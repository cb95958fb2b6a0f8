"""One registry of face backbones: ``get_model(name, **kwargs)``.

Every backbone takes a 112x112 RGB batch (normalised as its config says) and returns the embedding.
Constructor keywords are consistent: ``num_features`` (embedding size) and, where it applies,
``dropout``.  A new backbone is one file plus one line in ``_REGISTRY``.
"""
from __future__ import annotations

import difflib
from functools import partial
from typing import Any, Callable

from torch import nn

from backbones.iresnet import iresnet
from backbones.mfn_tflite import mfn_tflite
from backbones.mobilefacenet import mobilefacenet, mobilefacenet_large
from backbones.vargfacenet import vargfacenet

_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "r18": partial(iresnet, "r18"),
    "r34": partial(iresnet, "r34"),
    "r50": partial(iresnet, "r50"),
    "r100": partial(iresnet, "r100"),
    "r200": partial(iresnet, "r200"),
    "mbf": mobilefacenet,
    "mbf_large": mobilefacenet_large,
    "vargfacenet": vargfacenet,
    "mfn_tflite": mfn_tflite,
}


def available_models() -> list[str]:
    """Names accepted by ``get_model``."""
    return sorted(_REGISTRY)


def get_model(name: str, **kwargs: Any) -> nn.Module:
    """Build backbone ``name`` with constructor keywords ``kwargs`` (e.g. ``num_features=512``)."""
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ValueError(f"unknown backbone '{name}'{hint} (available: {', '.join(available_models())})")
    return _REGISTRY[name](**kwargs)
