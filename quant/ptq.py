"""Post-training quantization: the one path from a float model and calibration batches to a ready student.

Distillation starts from it, and the demo's calibration-only baseline is exactly it, so the baseline
and the student start from the same point.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from itertools import chain, islice
from typing import Iterable

import torch
from torch import nn

from quant.batches import batch_input
from quant.bias_correction import correct_biases
from quant.config import QuantConfig, check_calibration
from quant.equalize import equalize
from quant.model import quantize_model
from quant.observers import calibrate

EQUALIZE_BATCHES = 4          # batches whose activation ranges set the equalisation scales
BIAS_CORRECTION_BATCHES = 2   # batches whose images measure the mean outputs (one forward pass)


@dataclass
class PostTrainingResult:
    """``student``: the quantized model; ``reference``: the float model it was quantized from (the
    equalised copy when ``equalize``, else the input model itself), which computes the same function as
    the input and lines up with the student channel for channel (the teacher for feature distillation)."""

    student: nn.Module
    reference: nn.Module


def post_training_quantize(model: nn.Module, qcfg: QuantConfig, batches: Iterable,
                           calibration_batches: int = 4) -> PostTrainingResult:
    """Equalise channels (``qcfg.equalize``) on the first 4 batches, place the quantizers, then, when
    ``calibration_batches`` > 0, observe activation ranges on that many batches and freeze them and
    correct biases (``qcfg.bias_correction``) on the first two.  With ``calibration_batches=0`` the
    student's observers stay enabled (ranges are then observed during training).  ``model`` is untouched.
    """
    check_calibration(qcfg, calibration_batches)
    stream = (batch_input(b) for b in batches)
    kept = max(EQUALIZE_BATCHES if qcfg.equalize else 0, min(calibration_batches, EQUALIZE_BATCHES))
    head = list(islice(stream, kept))  # reused: equalisation, then the first calibration batches
    if kept and not head:
        raise ValueError("post_training_quantize() got no batches: pass an iterable of input tensors")
    reference = model
    if qcfg.equalize:
        reference = copy.deepcopy(model)
        equalize(reference, head, max_batches=EQUALIZE_BATCHES)
    placement = dataclasses.replace(qcfg, equalize=False, bias_correction=False)
    student = quantize_model(reference, placement)
    if calibration_batches:
        calibrate(student, chain(head, stream), max_batches=calibration_batches)
    if qcfg.bias_correction:  # against the float model in the student's form (BatchNorms folded/frozen alike)
        float_twin = quantize_model(reference, dataclasses.replace(placement, weight_bits=32, act_bits=32,
                                                                   layer_bits={}))
        correct_biases(student, float_twin, torch.cat(head[:BIAS_CORRECTION_BATCHES]))
    return PostTrainingResult(student, reference)
