"""Empirical bias correction (Nagel et al. 2019, "Data-Free Quantization Through Weight Equalization
and Bias Correction"): give back each quantized layer the mean output its float twin has.

Rounding weights (and activations upstream) shifts the mean of a layer's output, and the shift
adds up over the layers.  In the pretrained MobileFaceNet of the demo, 4-bit weights in the global
depthwise 7x7 conv alone pull the embedding's cosine to the teacher well down; almost all of that is
such a shift, and correcting it brings the cosine nearly back (figures in docs/quantization.md, Bias
correction).  The correction is
``bias += E[y_float] - E[y_quant]`` per output channel, measured on calibration images, layer after
layer in forward order (each layer is corrected with the layers before it already corrected, in one
forward pass).  Only layers that have a bias are corrected; no parameter is added.
"""
from __future__ import annotations

import torch
from torch import nn

from quant.layers import QuantConv2d, QuantLinear
from utils.modes import eval_mode


def _channel_mean(output: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the channel one (dim 1 of conv maps, the last of linear outputs)."""
    if output.dim() == 4:
        return output.float().mean(dim=(0, 2, 3))
    return output.float().reshape(-1, output.shape[-1]).mean(dim=0)


def correctable_layers(student: nn.Module) -> list[str]:
    """Quantized Conv2d/Linear layers with a bias and a quantized weight, in model order."""
    return [name for name, module in student.named_modules()
            if isinstance(module, (QuantConv2d, QuantLinear)) and module.bias is not None
            and module.weight_quant is not None and module.output_quant is None]


@torch.no_grad()
def correct_biases(student: nn.Module, reference: nn.Module, images: torch.Tensor) -> list[str]:
    """Correct, in place, the biases of ``student``'s quantized layers towards ``reference`` (the float
    model it was quantized from, with the same module names) on ``images``; returns the corrected names.

    Activation ranges must be observed already (``quant.calibrate``); observers stay as they are.
    """
    names = correctable_layers(student)
    reference_modules = dict(reference.named_modules())
    missing = [name for name in names if name not in reference_modules]
    if missing:
        raise ValueError(f"bias correction: the float reference has no module {missing[0]!r}; pass the model "
                         "the student was quantized from")
    device = next(student.parameters()).device
    images = images.to(device)
    float_means: dict[str, torch.Tensor] = {}

    def record(name: str):
        def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            float_means[name] = _channel_mean(output)
        return hook

    def correct(name: str):
        def hook(module: nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor:
            delta = float_means[name] - _channel_mean(output)
            module.bias.add_(delta.to(module.bias.dtype))
            shape = (1, -1, 1, 1) if output.dim() == 4 else (1,) * (output.dim() - 1) + (-1,)
            return output + delta.view(shape).to(output.dtype)  # later layers see the corrected output
        return hook

    _forward_with_hooks(reference, names, record, images)
    _forward_with_hooks(student, names, correct, images)
    return names


def _forward_with_hooks(model: nn.Module, names: list[str], make_hook, images: torch.Tensor) -> None:
    """One eval-mode forward of ``images`` with ``make_hook(name)`` on each named module; then as before."""
    modules = dict(model.named_modules())
    handles = [modules[name].register_forward_hook(make_hook(name)) for name in names]
    try:
        with eval_mode(model):
            model(images)
    finally:
        for handle in handles:
            handle.remove()
