"""What a backbone expects as input: side, per-channel normalisation, channel order, face alignment.

Each registered backbone declares one ``InputSpec`` (as timm models carry their ``default_cfg``), and
``backbones.get_model`` attaches it to the model it builds (``model.input_spec``).  Data sources, the
generator, evaluation and the demo take it from there, so nothing downstream guesses normalisation.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

import torch
from torch import nn

CHANNEL_ORDERS = ("RGB", "BGR")
ALIGNMENTS = ("arcface_112", "dlib_150")  # 5-point templates of ``data.align``, scaled to ``size``


@dataclass(frozen=True)
class InputSpec:
    """``size`` x ``size`` faces aligned by ``alignment``; pixels become ``(x - mean) / std`` per channel,
    in ``channels`` order (images inside the project are RGB; a BGR network gets its channels swapped)."""

    size: int = 112
    mean: tuple[float, float, float] = (127.5, 127.5, 127.5)
    std: tuple[float, float, float] = (127.5, 127.5, 127.5)
    channels: str = "RGB"
    alignment: str = "arcface_112"

    def __post_init__(self) -> None:
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"InputSpec needs three means and three positive stds, got {self.mean} / {self.std}")
        if self.channels not in CHANNEL_ORDERS or self.alignment not in ALIGNMENTS:
            raise ValueError(f"InputSpec: channels must be one of {CHANNEL_ORDERS} and alignment one of "
                             f"{ALIGNMENTS}, got {self.channels!r} / {self.alignment!r}")

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """RGB pixels (uint8, or float in 0..255) ``[..., 3, H, W]`` -> the network's float32 input."""
        x = images.float()
        if self.channels == "BGR":
            x = x.flip(-3)
        mean = torch.tensor(self.mean, dtype=torch.float32, device=x.device).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=x.device).view(3, 1, 1)
        return (x - mean) / std

    def to_dict(self) -> dict[str, Any]:
        """Plain values, for checkpoint metadata and reports."""
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "InputSpec":
        return cls(size=int(data["size"]), mean=tuple(float(v) for v in data["mean"]),
                   std=tuple(float(v) for v in data["std"]), channels=str(data["channels"]),
                   alignment=str(data["alignment"]))


ARCFACE = InputSpec()  # insightface / arcface_torch models: (x - 127.5) / 127.5, RGB, 112x112


def spec_with(overrides: Mapping[str, Any], base: InputSpec = ARCFACE) -> InputSpec:
    """``base`` with some fields replaced (e.g. an ONNX file's input, which the file does not record); an
    unknown key or a bad value is a ValueError naming it."""
    fields = base.to_dict()
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ValueError(f"unknown input spec key(s) {unknown} (known: {sorted(fields)})")
    try:
        return InputSpec.from_dict({**fields, **overrides})
    except (TypeError, ValueError) as exc:
        raise ValueError(f"input spec {dict(overrides)!r}: {exc}") from exc


def input_spec_of(model: nn.Module) -> InputSpec:
    """The spec ``get_model`` attached to ``model`` (or to the model inside a DDP wrapper)."""
    spec = getattr(getattr(model, "module", model), "input_spec", None)
    if not isinstance(spec, InputSpec):
        raise ValueError(f"{type(model).__name__} carries no input spec; build models with backbones.get_model")
    return spec


def check_meta_spec(meta: Mapping[str, Any], spec: InputSpec, source: str) -> None:
    """A checkpoint that records an input normalisation other than its network's spec is contradictory:
    refuse it, naming both (``input_spec``, or the older ``input_mean`` / ``input_std`` fields)."""
    recorded = InputSpec.from_dict(meta["input_spec"]) if "input_spec" in meta else None
    legacy = {key: meta[key] for key in ("input_mean", "input_std") if key in meta}
    expected = {"input_mean": spec.mean, "input_std": spec.std}
    wrong = [f"{key}={value}" for key, value in legacy.items() if (float(value),) * 3 != expected[key]]
    if (recorded is not None and recorded != spec) or wrong:
        found = recorded.to_dict() if recorded is not None else ", ".join(wrong)
        raise ValueError(f"{source} records input {found}, but its network expects {spec.to_dict()}; the input "
                         "normalisation comes from the backbone's declared spec (backbones.registry)")
