"""Quantization-aware students from any float model, without knowing the backbone.

How it works
------------
``quantize_model(model, qcfg)`` deep-copies ``model`` and finds what to quantize **by module type**:
``nn.Conv2d``, ``nn.Linear``, ``nn.PReLU`` and the ``backbones.layers.Add`` / ``Mul`` modules that
backbones use for residual sums and gates (``self.add = Add()``; ``self.add(out, identity)``).
Functional ``a + b`` in a backbone is invisible to quant/, which is why backbones route them through
these modules.  Each found module is re-classed in place into its quantized subclass
(``quant.layers``), so original parameters keep their objects and state_dict keys
(``layer1.0.conv1.weight``) and arcface_torch weights load 1:1; quantizers are new children such as
``layer1.0.conv1.weight_quant.scale`` or ``layer1.0.add.output_quant.zero_point``.  Only exact types
are wrapped (a custom Conv2d subclass stays float).  A torch.fx trace (``quant.graph``) tells which
module feeds which, for BN folding and for skipping redundant input quantizers.

Placement (``QuantConfig.quant_mode``)
--------------------------------
* ``quantface`` (the paper): every Conv2d/Linear weight per output channel from the current weights'
  min/max (asymmetric); PReLU slope per tensor at the activation bit width and PReLU output
  quantized; the output of every Add/Mul (every residual block) quantized; BN float; the input image
  and the other layer inputs not quantized.
* ``deploy`` (default; what ``deploy.onnx_export`` writes as an int8 graph, bias rounded to the int32 grid
  ``s_in * s_w`` as the kernel adds it): every Conv2d/Linear input quantized (per-tensor affine) and its weight per
  output channel (symmetric int grid by default), every Add/Mul output quantized, and each Add/Mul
  input quantized unless it already comes from a quantized Add/Mul output (so each int8 QDQ kernel
  sees quantized inputs exactly once).  PReLU stays float.
* ``layer_bits`` overrides bits per module (fnmatch on dotted names, last match wins); 16/32 = float.

Ranges: weights from their current min/max at every step (vectorised ``amin``/``amax``; cached in eval
until the weight changes) or learned (``weight_observer="lsq"``); activations from running min/max,
EMA, percentile, or LSQ+ (initialised by the ``lsq_init`` estimator, then learned once observers freeze).
Observers start enabled; ``freeze_observers``/``calibrate`` stop them (after ``sync_observers``).

Channel equalisation (``equalize=True``, ``quant.equalize``): before quantizers are placed, channels
between adjacent layers are rescaled (exactly, through PReLU/ReLU/padding) so that one per-tensor
activation range fits every channel; it needs calibration batches, so it runs in ``post_training_quantize``.

Bias correction (``bias_correction=True``, ``quant.correct_biases``): each quantized layer's bias gets
back the mean output shift that quantization caused, measured against the float model on calibration
images.  ``post_training_quantize(model, qcfg, batches, calibration_batches)`` is the one path that does
all of it: equalise, quantize, observe ranges and freeze them, correct biases; it returns the student
and its float reference, and is both the start of distillation and the calibration-only baseline.

Block reconstruction (``quant.reconstruct``; BRECQ with QDrop): after calibration, the student's blocks,
cut from its torch.fx trace (``quant.blocks``), are fitted one by one to the float model's block outputs by
learning each weight's rounding (``quant.adaround``) and the activation step sizes; the decided roundings are
written into the weights, so the result is an ordinary student.

BatchNorm (``bn_mode``): ``train``; ``frozen`` (eval even under ``model.train()``); ``fold`` (folded
into the preceding Conv2d/Linear where exact, the rest frozen; see ``quant.bn``).
"""
from quant.bias_correction import correct_biases
from quant.bn import FrozenBatchNorm1d, FrozenBatchNorm2d, fold_batchnorms, freeze_batchnorms
from quant.checkpoint import load_any_model, load_quantized, save_quantized
from quant.config import QuantConfig, QuantConfigError
from quant.equalize import equalize, find_chains
from quant.model import QuantizeError, layer_bits, quantize_model, quantizers
from quant.observers import (calibrate, freeze_observers, refresh_weight_qparams, set_observers, sync_observers,
                             unfreeze_observers)
from quant.ptq import PostTrainingResult, post_training_quantize
from quant.quantizer import FakeQuantizer, act_quantizer, weight_quantizer
from quant.report import size_report

__all__ = [
    "QuantConfig", "QuantConfigError", "QuantizeError", "quantize_model", "quantizers", "layer_bits",
    "set_observers", "freeze_observers", "unfreeze_observers", "calibrate", "sync_observers", "refresh_weight_qparams",
    "save_quantized", "load_quantized", "load_any_model", "size_report", "FakeQuantizer",
    "weight_quantizer", "act_quantizer", "FrozenBatchNorm1d", "FrozenBatchNorm2d",
    "fold_batchnorms", "freeze_batchnorms", "equalize", "find_chains", "correct_biases", "post_training_quantize",
    "PostTrainingResult",
]
