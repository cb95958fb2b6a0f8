"""``size_budget``: the weight widths of the student chosen per layer from the teacher's measured sensitivity.

The sensitivity is measured once per teacher file on held-out generated faces (a seed the training stream
never uses; never the real photos, which are for evaluation) and cached beside the assets, then
``quant.sensitivity.allocate_weight_bits`` fits the budget.  The chosen widths become the run's
``layer_bits``, so the saved config, the checkpoint and the packed file all carry them.
"""
from __future__ import annotations

import dataclasses
import io
import json
import math
from pathlib import Path

import torch
from torch import nn

from backbones.spec import InputSpec
from data.generated import GeneratedFaces
import quant
from deploy.packed import pack_student
from distill.settings import TrainSettings
from quant.sensitivity import WIDTHS, allocate_weight_bits, weight_counts, weight_sensitivity
from utils.fileio import atomic_write_json, sha256_file

HELD_OUT_SEED = 90_001   # generated faces no training stream draws (training seeds are small integers)
HELD_OUT_FACES = 32
METADATA_BYTES = 4096    # allowance for the packed file's metadata (network, input spec, teacher) and checksum


def held_out_faces(generator_weights: str, spec: InputSpec, device: torch.device) -> list[torch.Tensor]:
    """Normalised batches of generated faces on the teacher's alignment, for measuring sensitivity."""
    faces = GeneratedFaces(generator_weights, HELD_OUT_FACES, seed=HELD_OUT_SEED, size=spec.size,
                           device=device, alignment=spec.alignment)
    images = spec.normalise(faces.generate(range(HELD_OUT_FACES)))
    return list(images.split(32))


def cached_sensitivity(teacher_file: str, teacher: nn.Module, generator_weights: str, assets_dir: str,
                       device: torch.device) -> dict[str, dict[int, float]]:
    """The teacher's per-layer weight sensitivity, from ``<assets_dir>/sensitivity/`` when this teacher file
    was measured before (the key is its sha256)."""
    key = f"{sha256_file(teacher_file)[:16]}-{HELD_OUT_SEED}-{HELD_OUT_FACES}-{'-'.join(map(str, WIDTHS))}"
    path = Path(assets_dir) / "sensitivity" / f"{key}.json"
    if path.is_file():
        return {name: {int(b): v for b, v in row.items()} for name, row in json.loads(path.read_text()).items()}
    result = weight_sensitivity(teacher, held_out_faces(generator_weights, teacher.input_spec, device))
    atomic_write_json(path, result)
    return result


def _saved_bytes(obj: object) -> int:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getbuffer().nbytes


def weight_budget_bits(teacher: nn.Module, qcfg: quant.QuantConfig, share: float) -> float:
    """Bits left for the quantized weights when the packed file may take ``share`` of the fp32 checkpoint:
    what else the packed file holds (biases, BatchNorm, scales, ranges, layout) is measured by packing the
    student once at 8 bits."""
    plain = dataclasses.replace(qcfg, weight_bits=8, layer_bits={}, equalize=False, bias_correction=False)
    student = quant.quantize_model(teacher, plain)
    weights = sum(math.ceil(n * 8 / 8) for n in weight_counts(teacher).values())
    overhead = _saved_bytes(pack_student(student, {"quant": plain.to_dict()})) - weights + METADATA_BYTES
    return (share * _saved_bytes(teacher.state_dict()) - overhead) * 8


def allocate_layer_bits(settings: TrainSettings, teacher: nn.Module, device: torch.device) -> dict[str, list[int]]:
    """``layer_bits`` for the student: each Conv/Linear at the width ``size_budget`` gives it (activations at
    ``act_bits``), then the config's own ``layer_bits`` on top (they win)."""
    placement = settings.quant.placement
    sensitivity = cached_sensitivity(settings.model.teacher, teacher, settings.data.generator_weights,
                                     settings.run.assets_dir, device)
    budget = weight_budget_bits(teacher, placement, settings.quant.size_budget)
    widths = allocate_weight_bits(sensitivity, weight_counts(teacher), budget)
    return {**{name: [bits, placement.act_bits] for name, bits in widths.items()}, **placement.layer_bits}
