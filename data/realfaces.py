"""Real face photos with 5-point landmarks, for sanity checks and evaluation only (never for training).

The photos come from published package archives (``assets``, asset ``realfaces``); the face list
with landmarks and identities is ``assets/realfaces.json``: obama (5 photos, two of them crops of one photo
and one a 32-bit PNG copy of another), biden, six people of a group photo (``t1_face0`` ...) and one
already aligned 112x112 photo (``Tom_Hanks_54745``, identity ``tom_hanks``; its landmarks are the
template, so aligning it is the identity warp and it goes through the same code as the others).
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from assets import ensure_asset, realface_dest, realface_records
from backbones.spec import ARCFACE, InputSpec
from data.align import align_face
from data.images import read_rgb


@dataclass(frozen=True)
class RealFace:
    """One face: ``landmarks`` are 5x2 (eyes, nose, mouth corners) in pixels of ``photo_path``."""

    name: str
    identity: str
    photo_path: Path
    landmarks: np.ndarray
    score: float
    face_index: int
    pre_aligned: bool = False


def real_faces(assets_dir: str | os.PathLike | None = None) -> list[RealFace]:
    """Every face of ``assets/realfaces.json`` with its photo in the asset cache (fetched if needed)."""
    root = ensure_asset("realfaces", assets_dir).parent
    records = realface_records()
    faces_per_photo = Counter(r["path"] for r in records)
    faces = []
    for record in records:
        stem = PurePosixPath(record["path"]).stem
        name = f"{stem}_face{record['face']}" if faces_per_photo[record["path"]] > 1 else stem
        faces.append(RealFace(name=name, identity=record["identity"],
                              photo_path=root / realface_dest(record["path"]),
                              landmarks=np.asarray(record["landmarks_5"], dtype=np.float32).reshape(5, 2),
                              score=float(record["score"]), face_index=int(record["face"]),
                              pre_aligned=bool(record.get("aligned", False))))
    return faces


def aligned_real_faces(assets_dir: str | os.PathLike | None = None, spec: InputSpec = ARCFACE
                       ) -> tuple[np.ndarray, list[str], list[str]]:
    """``(images uint8 [N, S, S, 3] RGB, identities, names)``, aligned as ``spec`` says (side S)."""
    faces = real_faces(assets_dir)
    photos: dict[Path, np.ndarray] = {}
    crops = []
    for face in faces:
        if face.photo_path not in photos:
            photos[face.photo_path] = read_rgb(face.photo_path)
        crops.append(align_face(photos[face.photo_path], face.landmarks, spec.size, spec.alignment))
    return np.stack(crops), [f.identity for f in faces], [f.name for f in faces]
