"""Model size of a quantized student: stored parameters x bits, against the same model in fp32."""
from __future__ import annotations

from typing import Any

from torch import nn

from quant.quantizer import FakeQuantizer

MB = 1e6  # bytes; the QuantFace paper's sizes (e.g. r100 fp32 261 MB) use decimal megabytes


def size_report(model: nn.Module) -> dict[str, Any]:
    """Per layer: parameters and bits; totals in MB, fp32 MB and the compression ratio.

    Counted: every parameter of the original model.  A weight with a quantizer counts at its bit width;
    everything else (biases, BatchNorm affine parameters, float layers) at 32 bits.  Quantizer state
    (scales, zero points, observed ranges) and BN running statistics are buffers/overhead and not counted.
    """
    layers: dict[str, dict[str, Any]] = {}
    total_bits = fp32_bits = 0
    for name, module in model.named_modules():
        if isinstance(module, FakeQuantizer):
            continue
        own = [(pname, p) for pname, p in module.named_parameters(recurse=False)]
        if not own:
            continue
        weight_quant = getattr(module, "weight_quant", None)
        params = bits = 0
        for pname, p in own:
            b = weight_quant.num_bits if pname == "weight" and weight_quant is not None else 32
            params += p.numel()
            bits += p.numel() * b
        weight_bits = weight_quant.num_bits if weight_quant is not None else 32
        layers[name] = {"type": type(module).__name__, "params": params, "weight_bits": weight_bits,
                        "mb": bits / 8 / MB}
        total_bits += bits
        fp32_bits += params * 32
    total_mb, fp32_mb = total_bits / 8 / MB, fp32_bits / 8 / MB
    return {"layers": layers, "params": fp32_bits // 32, "total_mb": total_mb, "fp32_mb": fp32_mb,
            "compression": fp32_mb / total_mb if total_mb else 1.0,
            "note": "weights at their quantized bit width; biases, BatchNorm and float layers at 32 bits; "
                    "quantizer scales/zero points and BN running statistics not counted; MB = 1e6 bytes"}
