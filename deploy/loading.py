"""Any model file a user may evaluate: a checkpoint (float or quantized), a packed student, or an .onnx."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from backbones.spec import InputSpec

import quant
from deploy.openvino_runtime import open_onnx
from deploy.packed import load_packed

PACKED_SUFFIX = ".qfpack"


def load_model_file(path: str | os.PathLike, network: str | None = None, threads: int = 0,
                    onnx_spec: InputSpec | None = None, runtime: str = "onnxruntime"
                    ) -> tuple[nn.Module, dict[str, Any], float]:
    """``(model, meta, size_mb)``: ``.onnx`` runs on ``runtime`` (``deploy.openvino_runtime.open_onnx``: onnxruntime,
    openvino or auto; the choice and its reason in ``meta["runtime"]``; size = the file; ``onnx_spec`` for a
    file that does not record its input, i.e. not exported here), ``.qfpack`` is a packed student (size = the file),
    anything else a checkpoint (``quant.load_any_model``; size = parameters at their bit widths,
    ``quant.size_report``)."""
    path = Path(path)
    if path.suffix == ".onnx":
        model, choice = open_onnx(path, runtime, threads, onnx_spec)
        return model, {**model.meta, "runtime": choice}, model.size_mb
    if path.suffix == PACKED_SUFFIX:
        model, meta = load_packed(path)
        return model, meta, path.stat().st_size / 1e6
    model, meta = quant.load_any_model(path, network)
    return model, meta, float(quant.size_report(model)["total_mb"])
