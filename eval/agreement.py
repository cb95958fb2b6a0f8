"""How closely a (quantized) student reproduces its teacher, and how well each separates identities.

Used where no benchmark set is at hand (the demo on a handful of real photos and held-out generated
faces): per-face student<->teacher cosine, the correlation of all pair scores, and genuine/impostor
score statistics per identity.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from eval.ijb import far_key, tar_at_far
from eval.scores import all_pairs, pair_scores

IDENTITY_FAR = 1e-2  # the FAR of the TAR reported for a small identity set (the 55 johns faces: 1,210 impostor pairs)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def embedding_agreement(teacher: np.ndarray, student: np.ndarray) -> dict[str, float]:
    """Cosine between each face's teacher and student embedding: mean and min (1.0 = identical)."""
    if teacher.shape[0] != student.shape[0]:
        raise ValueError(f"teacher has {teacher.shape[0]} embeddings, student {student.shape[0]}")
    cos = np.sum(_unit(teacher) * _unit(student), axis=1)
    return {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min())}


def cosine_scores(embeddings: np.ndarray) -> np.ndarray:
    """Cosine score of every unordered pair (i < j), in ``np.triu_indices`` order."""
    return pair_scores(_unit(embeddings), all_pairs(len(embeddings)))


def identity_scores(embeddings: np.ndarray, identities: Sequence[str]) -> dict[str, object]:
    """Genuine (same identity) and impostor pair scores: overall means, separation, and per identity."""
    scores = cosine_scores(embeddings)
    ids = np.asarray(identities)
    rows, cols = np.triu_indices(len(ids), k=1)
    genuine = ids[rows] == ids[cols]
    result: dict[str, object] = {
        "genuine_mean": float(scores[genuine].mean()) if genuine.any() else float("nan"),
        "impostor_mean": float(scores[~genuine].mean()) if (~genuine).any() else float("nan"),
        "impostor_max": float(scores[~genuine].max()) if (~genuine).any() else float("nan"),
        "tar_at_far": (tar_at_far(genuine, scores, [IDENTITY_FAR])[0][far_key(IDENTITY_FAR)]
                       if genuine.any() and (~genuine).any() else float("nan")),
    }
    per_identity = {}
    for name in sorted(set(identities)):
        involved = (ids[rows] == name) | (ids[cols] == name)
        own = involved & genuine
        per_identity[name] = {
            "faces": int((ids == name).sum()),
            "genuine_mean": float(scores[own].mean()) if own.any() else None,
            "impostor_mean": float(scores[involved & ~genuine].mean()) if (involved & ~genuine).any() else None,
        }
    result["per_identity"] = per_identity
    return result


def compare_models(teacher: np.ndarray, student: np.ndarray, identities: Sequence[str] | None = None
                   ) -> dict[str, object]:
    """Everything above for one student against its teacher on the same faces.

    ``pair_score_correlation`` is Pearson's r between the teacher's and the student's pair scores:
    1.0 means the student ranks every pair as the teacher does.
    """
    result: dict[str, object] = embedding_agreement(teacher, student)
    if len(teacher) > 2:
        result["pair_score_correlation"] = float(np.corrcoef(cosine_scores(teacher), cosine_scores(student))[0, 1])
    if identities is not None:
        result["teacher_identity"] = identity_scores(teacher, identities)
        result["student_identity"] = identity_scores(student, identities)
    return result
