"""An exported ``.onnx`` face model run by onnxruntime, usable wherever a backbone is (evaluation, demo).

``OnnxModel`` is an ``nn.Module`` whose forward feeds the normalised batch to an onnxruntime session
and returns the embeddings as a tensor; it carries the ``InputSpec`` stored in the file's metadata,
so evaluation aligns and normalises exactly as for the PyTorch model it was exported from.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from backbones.spec import InputSpec
from deploy.onnx_export import META_KEY, SPEC_KEY
from utils.errors import InputError


class OnnxModelError(InputError, ValueError):
    """An .onnx file cannot be loaded or run; the message names the file."""


def session_options(threads: int = 0) -> ort.SessionOptions:
    """All graph optimisations (onnxruntime fuses QDQ groups into integer kernels); ``threads`` intra-op
    threads (0 = onnxruntime's default: one per core)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return options


def available_providers() -> list[str]:
    """onnxruntime's CUDA provider first where this onnxruntime has it (onnxruntime-gpu with a GPU), then the
    CPU one, which also runs whatever the CUDA provider cannot (the integer QLinear kernels among them)."""
    cuda = "CUDAExecutionProvider"
    return [cuda, "CPUExecutionProvider"] if cuda in ort.get_available_providers() else ["CPUExecutionProvider"]


class OnnxModel(nn.Module):
    """``model(x)``: float [B, 3, S, S] normalised images (any device) -> float32 embeddings [B, D] on CPU."""

    def __init__(self, path: str | os.PathLike, threads: int = 0, spec: InputSpec | None = None) -> None:
        super().__init__()
        self.path = Path(path)
        if not self.path.is_file():
            raise OnnxModelError(f"ONNX model not found: {self.path}")
        try:
            self.session = ort.InferenceSession(str(self.path), session_options(threads),
                                                providers=available_providers())
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise OnnxModelError(f"cannot load ONNX model {self.path}: {type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0] if str(exc) else ''} (truncated or not an ONNX file?)"
                                 ) from exc
        props = self.session.get_modelmeta().custom_metadata_map
        if spec is None and SPEC_KEY not in props:
            raise OnnxModelError(f"{self.path} has no '{SPEC_KEY}' metadata (not exported by export_model), so "
                                 "its input normalisation is unknown: give it (eval_benchmarks.py --onnx-input-spec)")
        self.input_spec = spec or InputSpec.from_dict(json.loads(props[SPEC_KEY]))
        self.meta: dict[str, Any] = json.loads(props.get(META_KEY, "{}"))
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise OnnxModelError(f"{self.path} has {len(inputs)} inputs; a face model takes one image batch")
        self.input_name = inputs[0].name
        batch = inputs[0].shape[0] if inputs[0].shape else None
        self.fixed_batch = batch if isinstance(batch, int) and batch > 0 else None  # e.g. exported with batch 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().to("cpu", torch.float32).contiguous().numpy()
        step = self.fixed_batch or len(x)
        outs = []
        for start in range(0, len(x), step):  # a graph with a fixed batch size runs chunk by chunk
            chunk = x[start:start + step]
            short = step - len(chunk)
            if short:  # the last chunk is padded to the fixed size; the padding's outputs are dropped
                chunk = np.concatenate([chunk, np.zeros((short, *chunk.shape[1:]), chunk.dtype)])
            outs.append(self.session.run(None, {self.input_name: chunk})[0][:step - short])
        return torch.from_numpy(np.concatenate(outs))

    @property
    def size_mb(self) -> float:
        """The file's size in decimal MB (what is shipped)."""
        return self.path.stat().st_size / 1e6
