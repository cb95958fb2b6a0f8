"""An exported ``.onnx`` face model run by OpenVINO's CPU plugin, and the choice between the two runtimes.

OpenVINO is the second runtime a user may ship the file to: on CPUs without VNNI it runs the fp32 and the
int8 files of the PReLU networks faster than onnxruntime (measurements in ``docs/results``).
``OpenVinoModel`` has ``OnnxModel``'s interface (``input_spec``, ``meta``, ``size_mb``, forward from a
normalised batch to float32 embeddings on CPU), so evaluation, the demo and the benchmarks take either.
``open_onnx(path, runtime)`` opens a file on ``"onnxruntime"``, ``"openvino"`` or ``"auto"``: the faster of
the two on this machine by a short timed probe on the file itself, taken only where their outputs agree
(else onnxruntime, the reference the export is tested against), with the reason in ``choice``.
"""
from __future__ import annotations

import importlib.util

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

from backbones.spec import InputSpec
from deploy.onnx_export import META_KEY, SPEC_KEY
from deploy.onnx_model import OnnxModel, OnnxModelError

OPENVINO_MISSING = "" if importlib.util.find_spec("openvino") else "openvino is not installed; pip install openvino"


def _openvino() -> Any:
    """The openvino module, imported only when a file runs on it: its native runtime and thread pool stay out
    of processes that never use it (an optional runtime: onnxruntime alone still runs every file)."""
    import openvino
    return openvino

RUNTIMES = ("onnxruntime", "openvino", "auto")
PROBE_BATCH, PROBE_REPEATS = 8, 3
AGREE = 0.999  # min cosine between the two runtimes on the probe batch for 'auto' to take the faster one


class OpenVinoModel(nn.Module):
    """``model(x)``: float [B, 3, S, S] normalised images (any device) -> float32 embeddings [B, D] on CPU,
    computed by OpenVINO's CPU plugin (an ``.onnx`` file, or an OpenVINO IR ``.xml`` given its ``spec``) in
    float32 precision (no bf16 / fp16 rewrite, so an int8 file computes
    what its QDQ graph says).  One compiled model per batch size: static shapes are what the plugin's
    integer kernels are fastest at."""

    def __init__(self, path: str | os.PathLike, threads: int = 0, spec: InputSpec | None = None) -> None:
        super().__init__()
        if OPENVINO_MISSING:
            raise OnnxModelError(f"cannot run {path} on OpenVINO: {OPENVINO_MISSING}")
        self.path = Path(path)
        if not self.path.is_file():
            raise OnnxModelError(f"ONNX model not found: {self.path}")
        self.core = _openvino().Core()
        try:
            self.model = self.core.read_model(str(self.path))
            props = {p.key: p.value for p in onnx.load(str(self.path), load_external_data=False).metadata_props
                     } if self.path.suffix == ".onnx" else {}  # an OpenVINO IR (.xml) records no input spec
        except Exception as exc:  # openvino and onnx raise their own exception types for bad files
            raise OnnxModelError(f"cannot load ONNX model {self.path} in OpenVINO: {type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc
        if spec is None and SPEC_KEY not in props:
            raise OnnxModelError(f"{self.path} has no '{SPEC_KEY}' metadata (not exported by export_model), so "
                                 "its input normalisation is unknown: give it (eval_benchmarks.py --onnx-input-spec)")
        self.input_spec = spec or InputSpec.from_dict(json.loads(props[SPEC_KEY]))
        self.meta: dict[str, Any] = json.loads(props.get(META_KEY, "{}"))
        if len(self.model.inputs) != 1:
            raise OnnxModelError(f"{self.path} has {len(self.model.inputs)} inputs; a face model takes one image batch")
        self.config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            self.config["INFERENCE_NUM_THREADS"] = threads
        self.compiled: dict[int, Any] = {}

    def _request(self, batch: int) -> Any:
        if batch not in self.compiled:
            model = self.model.clone()
            model.reshape([batch, *self.model.inputs[0].partial_shape[1:]])
            self.compiled[batch] = self.core.compile_model(model, "CPU", self.config).create_infer_request()
        return self.compiled[batch]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        batch = self.model.inputs[0].partial_shape[0]
        if batch.is_static:  # a file exported for one batch size (its graph may reshape by it): run chunks of it
            return torch.cat([self._infer(x[i:i + batch.get_length()]) for i in range(0, len(x), batch.get_length())])
        return self._infer(x)

    def _infer(self, x: np.ndarray) -> torch.Tensor:
        request = self._request(len(x))
        request.infer({0: x})
        return torch.from_numpy(request.get_output_tensor(0).data.copy())

    @property
    def size_mb(self) -> float:
        """The file's size in decimal MB (what is shipped)."""
        return self.path.stat().st_size / 1e6


def _probe_seconds(model: nn.Module, x: torch.Tensor) -> tuple[float, torch.Tensor]:
    out = model(x)  # warm-up (OpenVINO compiles here)
    best = float("inf")
    for _ in range(PROBE_REPEATS):
        start = time.perf_counter()
        model(x)
        best = min(best, time.perf_counter() - start)
    return best, out


def open_onnx(path: str | os.PathLike, runtime: str = "auto", threads: int = 0,
              spec: InputSpec | None = None) -> tuple[nn.Module, str]:
    """``(model, choice)``: ``path`` opened on ``runtime``; ``choice`` says which runtime runs it and why.

    ``"auto"`` times both on ``PROBE_BATCH`` random images of the file's input (best of ``PROBE_REPEATS``, a
    short probe: docs/deployment.md) and takes the faster, but only where the two outputs agree (cosine >=
    ``AGREE``): an int8 file whose integer kernels differ between the runtimes on this CPU stays on onnxruntime."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime {runtime!r}: use one of {', '.join(RUNTIMES)}")
    if runtime == "onnxruntime":
        return OnnxModel(path, threads, spec), "onnxruntime (asked for)"
    if runtime == "openvino":
        return OpenVinoModel(path, threads, spec), "openvino (asked for)"
    first = OnnxModel(path, threads, spec)
    if OPENVINO_MISSING:
        return first, f"onnxruntime ({OPENVINO_MISSING})"
    second = OpenVinoModel(path, threads, first.input_spec)
    size = first.input_spec.size
    x = torch.randn(PROBE_BATCH, 3, size, size, generator=torch.Generator().manual_seed(0))
    (t_ort, y_ort), (t_ov, y_ov) = _probe_seconds(first, x), _probe_seconds(second, x)
    agree = float(F.cosine_similarity(y_ort, y_ov).min())
    rates = f"{PROBE_BATCH / t_ort:.0f} / {PROBE_BATCH / t_ov:.0f} images/s onnxruntime / openvino"
    if agree < AGREE:
        return first, f"onnxruntime (the runtimes disagree on this file here, min cosine {agree:.4f}; {rates})"
    if t_ov < t_ort:
        return second, f"openvino (faster here: {rates}; outputs agree, min cosine {agree:.5f})"
    return first, f"onnxruntime (faster here: {rates}; outputs agree, min cosine {agree:.5f})"
