"""``QuantConfig``: what to quantize and how, read from the project config and stored in checkpoints."""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any, Mapping

from utils.errors import InputError
from utils.sections import Section, at_least, one_of

FLOAT_BITS = (16, 32)          # a bit width of 16 or 32 means "leave this tensor in float"
MIN_BITS, MAX_BITS = 2, 8
MODES = ("deploy", "quantface")
ACT_OBSERVERS = ("minmax", "ema", "percentile", "lsq")
WEIGHT_OBSERVERS = ("minmax", "lsq")
LSQ_INITS = ("minmax", "ema", "percentile")
BN_MODES = ("train", "frozen", "fold")


# checkpoints written before each setting had one name (its config key) stored these two under others
LEGACY_NAMES = {"mode": "quant_mode", "prelu_input": "quantize_prelu_input"}


class QuantConfigError(InputError, ValueError):
    """A quantization setting is invalid; the message names the field and the valid choices."""


def is_float_bits(bits: int) -> bool:
    """True when ``bits`` means "keep in float" (16 or 32)."""
    return bits in FLOAT_BITS


def _check_bits(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not (
            MIN_BITS <= value <= MAX_BITS or is_float_bits(value)):
        raise QuantConfigError(
            f"{name}={value!r} is out of range: use an integer {MIN_BITS}..{MAX_BITS}, or 16/32 to keep float")


@dataclass
class QuantConfig(Section):
    """Bit widths, placement and estimators of a quantization-aware student.

    ``layer_bits`` maps fnmatch patterns on dotted module names to ``[weight_bits, act_bits]``;
    when several patterns match a module the last one listed wins.
    """

    weight_bits: int = 8
    act_bits: int = 8
    quant_mode: str = "deploy"
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
    quantize_prelu_input: bool = False
    float_conv_inputs: bool = False
    share_input_quantizers: bool = True

    def __post_init__(self) -> None:
        self.layer_bits = {str(k): [int(b) for b in v] if isinstance(v, (list, tuple)) else v
                           for k, v in dict(self.layer_bits).items()}
        if self.weight_symmetric is None and self.quant_mode in MODES:
            self.weight_symmetric = self.quant_mode != "quantface"
        self.validate()

    def validate(self) -> None:
        """Raise ``QuantConfigError`` naming the first invalid field."""
        _check_bits("weight_bits", self.weight_bits)
        _check_bits("act_bits", self.act_bits)
        one_of("quant_mode", self.quant_mode, MODES, QuantConfigError)
        one_of("weight_observer", self.weight_observer, WEIGHT_OBSERVERS, QuantConfigError)
        one_of("act_observer", self.act_observer, ACT_OBSERVERS, QuantConfigError)
        one_of("lsq_init", self.lsq_init, LSQ_INITS, QuantConfigError)
        one_of("bn_mode", self.bn_mode, BN_MODES, QuantConfigError)
        for flag in ("equalize", "bias_correction", "weight_symmetric", "quantize_prelu_input", "float_conv_inputs",
                     "share_input_quantizers"):
            if not isinstance(getattr(self, flag), bool):
                raise QuantConfigError(f"{flag} must be True or False, got {getattr(self, flag)!r}")
        if self.quant_mode == "quantface" and self.weight_symmetric:
            raise QuantConfigError("weight_symmetric=True cannot apply with quant_mode='quantface': the paper's "
                                   "placement quantizes weights asymmetrically (min/max). Leave weight_symmetric "
                                   "unset, or use quant_mode='deploy'")
        if self.quantize_prelu_input and self.quant_mode != "deploy":
            raise QuantConfigError("quantize_prelu_input=True is a quant_mode='deploy' placement (the paper's "
                                   "quantface mode quantizes PReLU outputs); set quant_mode='deploy'")
        if self.float_conv_inputs and (self.quant_mode != "deploy" or self.quantize_prelu_input):
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

    def to_dict(self) -> dict[str, Any]:
        """Plain values only, for checkpoint metadata."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "QuantConfig":
        """Inverse of ``to_dict``; unknown keys are an error naming the closest valid one.  Metadata written
        before ``share_input_quantizers`` existed describes students with one quantizer per input: False;
        metadata written before the settings took their config names reads under those names."""
        data = {LEGACY_NAMES.get(key, key): value for key, value in data.items()}
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


def check_calibration(qcfg: QuantConfig, calibration_batches: int) -> None:
    """Bias correction corrects the biases of a calibrated student: it needs calibration batches."""
    if qcfg.bias_correction and calibration_batches < 1:
        raise QuantConfigError("bias_correction=True corrects biases after calibration: set calibration_batches >= 1")


@dataclass
class QuantSettings:
    """The config's quantization section: the student's ``placement`` (stored in its checkpoint) and how its
    ranges and widths are found (not stored: they shaped the student, which carries the result)."""

    placement: QuantConfig = field(default_factory=QuantConfig)
    calibration_batches: int = 0
    observer_steps: int = 300
    size_budget: float = 0.0

    def __post_init__(self) -> None:
        at_least(self, 0, "calibration_batches", "observer_steps", error=QuantConfigError)
        if self.size_budget and not 0 < self.size_budget < 1:
            raise QuantConfigError(f"size_budget={self.size_budget} must be a share of the fp32 size in (0, 1), "
                                   "e.g. 0.15")
        check_calibration(self.placement, self.calibration_batches)

    @classmethod
    def from_config(cls, flat: Mapping[str, Any]) -> "QuantSettings":
        """The section of a flat project config."""
        own = cls.keys() - QuantConfig.keys()
        return cls(QuantConfig.from_config(flat), **{key: flat[key] for key in own if key in flat})

    @classmethod
    def keys(cls) -> set[str]:
        """The config keys of the section: the placement's and the three of its own."""
        return QuantConfig.keys() | {f.name for f in dataclasses.fields(cls) if f.name != "placement"}
