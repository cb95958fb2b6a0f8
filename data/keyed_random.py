"""Counter-based random numbers: every value is a pure function of (seed, stream, key..., index).

Why: sample ``i`` of a run must be the same whatever the batch size, the rank count, the device or
whether the run was resumed, so nothing may depend on how many numbers were drawn before it.  A
SplitMix64 finaliser over the keys gives independent 64-bit words in one vectorised numpy call per
batch (about what re-seeding a torch.Generator per sample costs, docs/data.md, but fixed by this file
rather than by torch's RNG implementation, so it also holds across torch versions).
"""
from __future__ import annotations

import zlib
from typing import Sequence

import numpy as np
import torch

_MASK64 = (1 << 64) - 1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser (a bijection of uint64 with full avalanche)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def keyed_words(seed: int, stream: str, *keys: int | Sequence[int] | np.ndarray) -> np.ndarray:
    """64-bit words hashed from ``seed``, a stream name and integer keys (arrays broadcast)."""
    h = _mix(np.asarray([(seed & _MASK64) ^ zlib.crc32(stream.encode())], dtype=np.uint64))
    for key in keys:
        key = np.asarray(key, dtype=np.int64).astype(np.uint64)
        h = _mix(h + _GOLDEN + key)
    return h


def _unit(words: np.ndarray) -> np.ndarray:
    """Uniform doubles in [0, 1) from the top 53 bits."""
    return (words >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def keyed_normals(seed: int, stream: str, indices: Sequence[int] | np.ndarray, dim: int) -> torch.Tensor:
    """float32 [len(indices), dim] standard normals; row ``r`` depends only on (seed, stream, indices[r])."""
    idx = np.asarray(indices, dtype=np.int64).reshape(-1, 1)
    pairs = (dim + 1) // 2
    counters = np.arange(2 * pairs, dtype=np.int64).reshape(1, -1)
    u = _unit(keyed_words(seed, stream, idx, counters))
    radius = np.sqrt(-2.0 * np.log1p(-u[:, :pairs]))  # log(1 - u), u < 1 so finite
    angle = 2.0 * np.pi * u[:, pairs:]
    normals = np.concatenate([radius * np.cos(angle), radius * np.sin(angle)], axis=1)[:, :dim]
    return torch.from_numpy(normals.astype(np.float32))


def keyed_uniforms(seed: int, stream: str, epoch: int, indices: Sequence[int] | np.ndarray, dim: int
                    ) -> torch.Tensor:
    """float32 [len(indices), dim] uniforms in [0, 1); row ``r`` depends only on (seed, stream, epoch, indices[r])."""
    idx = np.asarray(indices, dtype=np.int64).reshape(-1, 1)
    words = keyed_words(seed, stream, epoch, idx, np.arange(dim, dtype=np.int64).reshape(1, -1))
    return torch.from_numpy(_unit(words).astype(np.float32))


def to_device(values: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host-made ``values`` on ``device`` without stalling the host: a plain ``.to("cuda")`` of pageable memory
    waits for the GPU to finish its queue; a pinned, asynchronous copy does not."""
    if device.type != "cuda":
        return values.to(device)
    return values.pin_memory().to(device, non_blocking=True)


def keyed_coins(seed: int, stream: str, epoch: int, indices: Sequence[int] | np.ndarray) -> torch.Tensor:
    """bool [len(indices)] fair coin flips keyed by (seed, stream, epoch, index)."""
    words = keyed_words(seed, stream, epoch, np.asarray(indices, dtype=np.int64))
    return torch.from_numpy((words >> np.uint64(63)).astype(bool))


def keyed_permutation(seed: int, stream: str, epoch: int, n: int) -> torch.Tensor:
    """int64 permutation of ``range(n)`` for this (seed, stream, epoch), the same on every rank.

    Sorting hashed keys is paid once per epoch (its cost: docs/data.md).
    """
    words = keyed_words(seed, stream, epoch, np.arange(n, dtype=np.int64))
    return torch.from_numpy(np.argsort(words, kind="stable"))
