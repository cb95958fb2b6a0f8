"""Post-training quantization: the student every distillation starts from, and the baseline it must beat."""
from __future__ import annotations

import copy
import dataclasses
from itertools import chain, islice
from typing import Iterable

import torch
from torch import nn

from quant.bias_correction import correct_biases
from quant.config import QuantConfig
from quant.equalize import equalize
from quant.model import quantize_model
from quant.observers import calibrate

EQUALIZE_BATCHES = 4          # batches whose activation ranges set the equalisation scales
BIAS_CORRECTION_BATCHES = 2   # batches whose images measure the mean outputs (one forward pass)


def post_training_quantize(model: nn.Module, qcfg: QuantConfig, batches: Iterable[torch.Tensor],
                           max_batches: int = 4) -> nn.Module:
    """A quantized copy of the float ``model`` ready to use: channels equalised (``qcfg.equalize``) on
    the first batches, activation ranges observed on the first ``max_batches`` of ``batches`` and
    frozen, biases corrected (``qcfg.bias_correction``) on the first two.  ``model`` is untouched.
    """
    stream = (b[0] if isinstance(b, (tuple, list)) else b for b in batches)
    head = list(islice(stream, max(1, min(max_batches, EQUALIZE_BATCHES))))
    if not head:
        raise ValueError("post_training_quantize() got no batches: pass an iterable of input tensors")
    if qcfg.equalize:
        model = copy.deepcopy(model)
        equalize(model, head, max_batches=EQUALIZE_BATCHES)
    student = quantize_model(model, dataclasses.replace(qcfg, equalize=False))
    calibrate(student, chain(head, stream), max_batches=max_batches)
    if qcfg.bias_correction:  # against the float model in the student's form (BatchNorms folded/frozen alike)
        float_twin = quantize_model(model, dataclasses.replace(qcfg, equalize=False, weight_bits=32, act_bits=32,
                                                               layer_bits={}))
        correct_biases(student, float_twin, torch.cat(head[:BIAS_CORRECTION_BATCHES]))
    return student
