"""``QuantConfig``: what to quantize and how, read from the project config and stored in checkpoints."""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any, Mapping

from utils.errors import InputError

FLOAT_BITS = (16, 32)          # a bit width of 16 or 32 means "leave this tensor in float"
MIN_BITS, MAX_BITS = 2, 8
MODES = ("deploy", "quantface")
ACT_OBSERVERS = ("minmax", "ema", "percentile", "lsq")
WEIGHT_OBSERVERS = ("minmax", "lsq")
LSQ_INITS = ("minmax", "ema", "percentile")
BN_MODES = ("train", "frozen", "fold")


class QuantConfigError(InputError, ValueError):
    """A quantization setting is invalid; the message names the field and the valid choices."""


def is_float_bits(bits: int) -> bool:
    """True when ``bits`` means "keep in float" (16 or 32)."""
    return bits in FLOAT_BITS


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        close = difflib.get_close_matches(str(value), choices, n=1, cutoff=0.4)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise QuantConfigError(f"{name}={value!r} is not valid{hint} (choose one of: {', '.join(choices)})")


def _check_bits(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not (
            MIN_BITS <= value <= MAX_BITS or is_float_bits(value)):
        raise QuantConfigError(
            f"{name}={value!r} is out of range: use an integer {MIN_BITS}..{MAX_BITS}, or 16/32 to keep float")


@dataclass
class QuantConfig:
    """Bit widths, placement and estimators of a quantization-aware student.

    ``layer_bits`` maps fnmatch patterns on dotted module names to ``[weight_bits, act_bits]``;
    when several patterns match a module the last one listed wins.
    """

    weight_bits: int = 8
    act_bits: int = 8
    mode: str = "deploy"
    weight_symmetric: bool | None = None  # None: the mode's own (deploy symmetric, quantface asymmetric)
    weight_observer: str = "minmax"
    act_observer: str = "minmax"
    lsq_init: str = "minmax"
    act_percentile: float = 99.99
    ema_momentum: float = 0.01
    layer_bits: dict[str, list[int]] = field(default_factory=dict)
    bn_mode: str = "train"
    equalize: bool = False
    bias_correction: bool = False
    prelu_input: bool = False
    float_conv_inputs: bool = False
    share_input_quantizers: bool = True

    def __post_init__(self) -> None:
        self.layer_bits = {str(k): [int(b) for b in v] if isinstance(v, (list, tuple)) else v
                           for k, v in dict(self.layer_bits).items()}
        if self.weight_symmetric is None and self.mode in MODES:
            self.weight_symmetric = self.mode != "quantface"
        self.validate()

    def validate(self) -> None:
        """Raise ``QuantConfigError`` naming the first invalid field."""
        _check_bits("weight_bits", self.weight_bits)
        _check_bits("act_bits", self.act_bits)
        _check_choice("quant_mode", self.mode, MODES)
        _check_choice("weight_observer", self.weight_observer, WEIGHT_OBSERVERS)
        _check_choice("act_observer", self.act_observer, ACT_OBSERVERS)
        _check_choice("lsq_init", self.lsq_init, LSQ_INITS)
        _check_choice("bn_mode", self.bn_mode, BN_MODES)
        for flag in ("equalize", "bias_correction", "weight_symmetric", "prelu_input", "float_conv_inputs",
                     "share_input_quantizers"):
            if not isinstance(getattr(self, flag), bool):
                raise QuantConfigError(f"{flag} must be True or False, got {getattr(self, flag)!r}")
        if self.mode == "quantface" and self.weight_symmetric:
            raise QuantConfigError("weight_symmetric=True cannot apply with quant_mode='quantface': the paper's "
                                   "placement quantizes weights asymmetrically (min/max). Leave weight_symmetric "
                                   "unset, or use quant_mode='deploy'")
        if self.prelu_input and self.mode != "deploy":
            raise QuantConfigError("quantize_prelu_input=True is a quant_mode='deploy' placement (the paper's "
                                   "quantface mode quantizes PReLU outputs); set quant_mode='deploy'")
        if self.float_conv_inputs and (self.mode != "deploy" or self.prelu_input):
            raise QuantConfigError("float_conv_inputs=True applies to quant_mode='deploy' with quantize_prelu_input="
                                   "False (the convs whose output a float PReLU reads); change one of the three")
        if not (50.0 < float(self.act_percentile) <= 100.0 or self.act_percentile == 0):
            raise QuantConfigError(f"act_percentile={self.act_percentile} must be in (50, 100], e.g. 99.99, or 0 "
                                   "(by width)")
        if not 0.0 < float(self.ema_momentum) <= 1.0:
            raise QuantConfigError(f"ema_momentum={self.ema_momentum} must be in (0, 1], e.g. 0.01")
        for pattern, bits in self.layer_bits.items():
            if not isinstance(bits, list) or len(bits) != 2:
                raise QuantConfigError(
                    f"layer_bits[{pattern!r}]={bits!r} must be [weight_bits, act_bits], e.g. [8, 8]")
            _check_bits(f"layer_bits[{pattern!r}] weight bits", bits[0])
            _check_bits(f"layer_bits[{pattern!r}] activation bits", bits[1])

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "QuantConfig":
        """Build from a project config (``utils.config.Config``); fields absent there keep their defaults."""
        names = {"weight_bits": "weight_bits", "act_bits": "act_bits", "mode": "quant_mode",
                 "weight_symmetric": "weight_symmetric", "weight_observer": "weight_observer",
                 "act_observer": "act_observer", "lsq_init": "lsq_init", "act_percentile": "act_percentile",
                 "ema_momentum": "ema_momentum", "layer_bits": "layer_bits", "bn_mode": "bn_mode",
                 "equalize": "equalize", "bias_correction": "bias_correction",
                 "prelu_input": "quantize_prelu_input", "float_conv_inputs": "float_conv_inputs",
                 "share_input_quantizers": "share_input_quantizers"}
        return cls(**{attr: cfg[key] for attr, key in names.items() if key in cfg})

    def to_dict(self) -> dict[str, Any]:
        """Plain values only, for checkpoint metadata."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "QuantConfig":
        """Inverse of ``to_dict``; unknown keys are an error naming the closest valid one.  Metadata written
        before ``share_input_quantizers`` existed describes students with one quantizer per input: False."""
        valid = [f.name for f in dataclasses.fields(cls)]
        for key in data:
            if key not in valid:
                close = difflib.get_close_matches(key, valid, n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise QuantConfigError(f"unknown quantization setting '{key}'{hint} (valid: {', '.join(valid)})")
        return cls(**{"share_input_quantizers": False, **dict(data)})

    def percentile(self, act_bits: int) -> float:
        """The activation percentile of an ``act_bits`` quantizer: ``act_percentile``, or with 0 the one the
        demos measured best at that width (clipping fewer values pays at 8 bits, more below)."""
        if self.act_percentile:
            return float(self.act_percentile)
        return 99.9999 if act_bits >= 8 else 99.99

    def describe(self) -> str:
        """Short label such as ``W8A8`` or ``W4A4+mixed``."""
        label = f"W{self.weight_bits}A{self.act_bits}"
        return label + ("+mixed" if self.layer_bits else "") + ("+fci" if self.float_conv_inputs else "")
