"""Packed low-bit students: each quantized weight stored in its own bit width, restored exactly.

A ``.qfpack`` file is a ``torch.save`` dict of plain tensors and values (read with
``torch.load(weights_only=True)``): the student's metadata (network, constructor keywords, quantization
config), every state entry that is not a quantized weight as it is, and for each per-channel symmetric
quantized weight its integers ``q`` offset to ``[0, 2^b - 2]`` and bit-packed ``b`` bits each, plus one
float per output channel.  For a min/max-observed weight that float is the channel's largest magnitude
``m``: the loader writes ``q * m / qmax`` and ``+-m`` itself where ``|q| = qmax``, so the range the
quantizer recomputes is ``m`` again, its scale is bit-identical and so is every quantized weight (and
therefore every output).  For a learned (LSQ) weight scale the scale itself is in the state.

The file holds that dict serialised as one byte payload beside its sha256 (format version 2): a byte
changed since export is refused with the file's name, where the unchecked zip container would load it
and run a silently different network.

Grid constants (``bits``/``qmin``/``qmax``) and the scales of min/max-observed weights are recomputed by
the loader and symmetric zero points are 0, so they are not stored; the rest of the state is
concatenated into one buffer per dtype (a file entry per tensor would cost more than a small layer's
values).
"""
from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import quant
from quant.checkpoint import build_quantized, rebuild_student
from quant.quantizer import FakeQuantizer, qparams_from_range, used_scale
from utils.checkpoint import CheckpointError, load_weights_only
from utils.fileio import atomic_torch_save

FORMAT, VERSION = "quantface-packed", 2  # 2: the payload carries its sha256


def pack_bits(values: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned integers ``< 2^bits`` -> ``ceil(n * bits / 8)`` bytes, least significant bit first."""
    shifts = np.arange(bits, dtype=np.uint32)
    planes = ((values.astype(np.uint32).reshape(-1, 1) >> shifts) & 1).astype(np.uint8)
    return np.packbits(planes.reshape(-1), bitorder="little")


def unpack_bits(data: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of ``pack_bits`` for ``count`` values."""
    planes = np.unpackbits(data, count=count * bits, bitorder="little").reshape(count, bits).astype(np.uint32)
    return (planes << np.arange(bits, dtype=np.uint32)).sum(axis=1).astype(np.int64)


_GRID_KEYS = (".bits", ".qmin", ".qmax")


def _flatten(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Tensors -> one contiguous buffer per dtype plus (name, dtype, offset, shape) rows."""
    groups: dict[str, list[torch.Tensor]] = {}
    index = []
    for name, tensor in state.items():
        key = str(tensor.dtype).removeprefix("torch.")
        chunks = groups.setdefault(key, [])
        index.append([name, key, sum(c.numel() for c in chunks), list(tensor.shape)])
        chunks.append(tensor.detach().reshape(-1).cpu())
    return {"index": index, "buffers": {key: torch.cat(chunks) for key, chunks in groups.items()}}


def _unflatten(flat: dict[str, Any]) -> dict[str, torch.Tensor]:
    state = {}
    for name, key, offset, shape in flat["index"]:
        count = int(np.prod(shape)) if shape else 1
        state[name] = flat["buffers"][key][offset:offset + count].reshape(shape).clone()
    return state


def _packable(module: nn.Module) -> FakeQuantizer | None:
    q = getattr(module, "weight_quant", None)
    if isinstance(q, FakeQuantizer) and q.per_channel and q.symmetric and isinstance(module.weight, torch.Tensor):
        return q
    return None


@torch.no_grad()
def pack_student(student: nn.Module, meta: dict[str, Any]) -> dict[str, Any]:
    """The packed form of a quantized student (see the module docstring); ``meta`` must hold ``network``,
    ``network_kwargs`` and ``quant`` (as in a ``quant.save_quantized`` checkpoint)."""
    student = getattr(student, "module", student)
    if not any(True for _ in quant.quantizers(student)):
        raise ValueError("pack_student got a float model: pack quantized students (quant.load_quantized)")
    state = dict(student.state_dict())
    packed: dict[str, dict[str, Any]] = {}
    data: list[np.ndarray] = []
    peaks: list[torch.Tensor] = []
    for name, module in student.named_modules():
        q = _packable(module)
        if q is None:
            continue
        weight = module.weight.detach().float()
        if q.learnable:
            scale = used_scale(q.scale)
            peak = None
        else:
            mn, mx = q.estimator(weight)
            scale, _ = qparams_from_range(mn, mx, q.quant_min, q.quant_max, True)
            peak = torch.maximum(-mn.clamp(max=0.0), mx.clamp(min=0.0))
        view = (-1,) + (1,) * (weight.dim() - 1)
        fake = q(weight)  # the student's own rounding, so the integers are exactly what it uses
        ints = torch.round(fake.double() / scale.double().view(view)).clamp(q.quant_min, q.quant_max).long()
        key = f"{name}.weight"
        bytes_ = pack_bits((ints - q.quant_min).numpy().reshape(-1), q.num_bits)
        packed[key] = {"bits": q.num_bits, "shape": list(weight.shape), "offset": sum(len(d) for d in data),
                       "peak": -1 if peak is None else sum(len(p) for p in peaks)}
        data.append(bytes_)
        if peak is not None:
            peaks.append(peak.float())
        del state[key]
        del state[f"{name}.weight_quant.zero_point"]  # symmetric: always 0
        if not q.learnable:  # recomputed from the restored weights at every forward
            del state[f"{name}.weight_quant.scale"]
    state = {k: v for k, v in state.items() if not k.endswith(_GRID_KEYS)}
    return {"meta": dict(meta), "state": _flatten(state), "packed": packed,
            "data": torch.from_numpy(np.concatenate(data) if data else np.zeros(0, np.uint8)),
            "peaks": torch.cat(peaks) if peaks else torch.zeros(0)}


def save_packed(path: str | os.PathLike, student: nn.Module, meta: dict[str, Any]) -> Path:
    """Write the packed student atomically: ``pack_student``'s dict serialised as the payload, with its sha256."""
    buffer = io.BytesIO()
    torch.save(pack_student(student, meta), buffer)
    payload = buffer.getvalue()
    return atomic_torch_save({"format": FORMAT, "version": VERSION, "sha256": hashlib.sha256(payload).hexdigest(),
                              "payload": torch.frombuffer(bytearray(payload), dtype=torch.uint8)}, path)


def _read_payload(path: Path) -> dict[str, Any]:
    """The dict ``pack_student`` made, after checking the file's tag, version and payload checksum."""
    blob = load_weights_only(path, "packed student")
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a packed student (no '{FORMAT}' format tag)")
    if blob.get("version") != VERSION:
        raise CheckpointError(f"{path} is packed in format version {blob.get('version')}; this reader knows "
                              f"{VERSION}: export it again with export_model.py --packed")
    payload = blob["payload"].numpy().tobytes()
    if hashlib.sha256(payload).hexdigest() != blob.get("sha256"):
        raise CheckpointError(f"{path} is damaged: its contents do not match the sha256 written with them; "
                              "copy or export it again")
    return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)


def _restore_weight(blob: dict[str, Any], key: str, quantizer: FakeQuantizer, state: dict[str, torch.Tensor],
                    source: str) -> torch.Tensor:
    """The float weight whose fake quantization gives back the stored integers exactly (a learned scale
    is read from ``state``)."""
    entry = blob["packed"][key]
    bits, shape = int(entry["bits"]), [int(s) for s in entry["shape"]]
    if bits != quantizer.num_bits:
        raise CheckpointError(f"{source}: {key} is packed at {bits} bits but the rebuilt student quantizes it at "
                              f"{quantizer.num_bits}; the file's metadata and weights disagree")
    count, offset = int(np.prod(shape)), int(entry["offset"])
    data = blob["data"].numpy()[offset:offset + (count * bits + 7) // 8]
    ints = (torch.from_numpy(unpack_bits(data, bits, count)) + quantizer.quant_min).reshape(shape)
    view = (-1,) + (1,) * (len(shape) - 1)
    if entry["peak"] < 0:  # learned scale, as the quantizer clamps it
        scale = used_scale(state[key.rsplit(".", 1)[0] + ".weight_quant.scale"])
        return ints.float() * scale.view(view)
    peak = blob["peaks"][int(entry["peak"]):int(entry["peak"]) + shape[0]].float()
    scale, _ = qparams_from_range(-peak, peak, quantizer.quant_min, quantizer.quant_max, True)
    weight = ints.float() * scale.view(view)
    full = peak.view(view).expand_as(weight)
    weight = torch.where(ints == quantizer.quant_max, full, weight)
    return torch.where(ints == quantizer.quant_min, -full, weight)


def load_packed(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """``(student, meta)`` rebuilt from a packed file: its outputs equal the original student's exactly."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"packed student not found: {path}")
    blob = _read_payload(path)
    meta, state = blob["meta"], _unflatten(blob["state"])
    shell = rebuild_student(meta, str(path))
    for key, value in shell.state_dict().items():  # grid constants and recomputed weight scales
        if key.endswith(_GRID_KEYS) or (key.endswith((".weight_quant.scale", ".weight_quant.zero_point"))
                                        and key.rsplit(".weight_quant.", 1)[0] + ".weight" in blob["packed"]):
            state.setdefault(key, value)
    modules = dict(shell.named_modules())
    for key in blob["packed"]:
        quantizer = _packable(modules.get(key.rsplit(".", 1)[0]))
        if quantizer is None:
            raise CheckpointError(f"{path}: packed weight {key} has no per-channel quantizer in the rebuilt student")
        state[key] = _restore_weight(blob, key, quantizer, state, str(path))
    student = build_quantized(state, meta, str(path))
    return student.to(map_location), meta
