"""Similarity scores of embedding pairs: the one place that turns features into pair scores."""
from __future__ import annotations

import numpy as np
import torch

PAIR_CHUNK = 100_000


def pair_scores(features: torch.Tensor | np.ndarray, pairs: np.ndarray, chunk: int = PAIR_CHUNK) -> np.ndarray:
    """Dot products ``features[i] . features[j]`` for each row ``(i, j)`` of ``pairs`` [P, 2] (cosines when
    the features are L2-normalised), ``chunk`` pairs at a time on the features' device, in their dtype."""
    feats = torch.as_tensor(features)
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    out = np.empty(len(pairs), dtype=torch.empty(0, dtype=feats.dtype).numpy().dtype)
    for begin in range(0, len(pairs), chunk):
        rows = torch.as_tensor(pairs[begin:begin + chunk], device=feats.device)
        out[begin:begin + chunk] = (feats[rows[:, 0]] * feats[rows[:, 1]]).sum(1).cpu().numpy()
    return out


def all_pairs(count: int) -> np.ndarray:
    """Every unordered pair ``(i, j)``, i < j, of ``count`` items, in ``np.triu_indices`` order."""
    return np.stack(np.triu_indices(count, k=1), axis=1)
