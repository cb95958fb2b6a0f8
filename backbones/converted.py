"""Checkpoints converted from another framework's file (TFLite, dlib, ONNX): written with their provenance,
and trusted from the cache only while the source hash and the converter version still match."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from backbones.registry import get_model, input_spec
from utils.checkpoint import CheckpointError, load_state_strict, read_checkpoint, save_checkpoint
from utils.fileio import sha256_file


def write_converted(out_path: str | os.PathLike, state: dict[str, torch.Tensor], network: str,
                    embedding_size: int, source: str | os.PathLike, converter_version: int,
                    network_kwargs: dict[str, Any] | None = None) -> Path:
    """Save ``state`` of backbone ``network`` with its input spec, the source file and its sha256."""
    network_kwargs = network_kwargs or {}
    meta = {"network": network, "network_kwargs": network_kwargs,
            "input_spec": input_spec(network, network_kwargs).to_dict(),
            "embedding_size": int(embedding_size), "source": Path(source).name,
            "source_sha256": sha256_file(source), "converter_version": converter_version}
    return save_checkpoint(out_path, state, meta)


def converted_problem(path: str | os.PathLike, network: str, source_sha256: str, converter_version: int
                      ) -> str | None:
    """Why the converted checkpoint at ``path`` is not usable (None when it is)."""
    try:
        state, meta = read_checkpoint(path)
        load_state_strict(get_model(network, **meta.get("network_kwargs", {})), state, str(path))
    except (TypeError, ValueError) as exc:
        return f"{path}: its metadata does not build a {network}: {exc}"
    except CheckpointError as exc:
        return str(exc)
    if meta.get("network") != network or meta.get("source_sha256") != source_sha256:
        return f"{path} was not converted from the pinned source file (meta {meta.get('source_sha256')})"
    if meta.get("converter_version") != converter_version:
        return f"{path} was written by converter version {meta.get('converter_version')}, now {converter_version}"
    return None
