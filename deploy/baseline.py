"""What a user gets without this toolkit: onnxruntime's own ``quantize_static`` on the fp32 ONNX model.

QDQ format, per-channel int8 weights, uint8 activations, min/max calibration on the given batches: the
settings a user would pick from onnxruntime's documentation.  Used as the baseline row of the demo
report and of ``lab.bench_deploy``.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from deploy.onnx_export import INPUT


class _Batches(CalibrationDataReader):
    def __init__(self, batches: Iterable[torch.Tensor]) -> None:
        self.items = iter([{INPUT: np.ascontiguousarray(b.detach().cpu().float().numpy())} for b in batches])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.items, None)


def quantize_static_baseline(fp32_onnx: str | os.PathLike, batches: Iterable[torch.Tensor],
                             output: str | os.PathLike) -> Path:
    """Write onnxruntime's ``quantize_static`` of ``fp32_onnx`` (calibrated on ``batches``) to ``output``."""
    source, output = Path(fp32_onnx).resolve(), Path(output).resolve()  # before the chdir below
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="quantface-qs-") as work:  # its calibration writes scratch files
        cwd = os.getcwd()
        os.chdir(work)
        try:
            quantize_static(str(source), str(output), _Batches(batches),
                            quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8)
        finally:
            os.chdir(cwd)
    return output
