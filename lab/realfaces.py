"""Real face photos with 5-point landmarks, for sanity checks and evaluation only (never for training).

The photos come from published package archives (``assets``, asset ``realfaces``); the face list
with landmarks and identities is ``assets/realfaces.json``: obama (5 photos, two of them crops of one photo
and one a 32-bit PNG copy of another), biden, six people of a group photo (``t1_face0`` ...) and one
already aligned 112x112 photo (``Tom_Hanks_54745``, identity ``tom_hanks``; its landmarks are the
template, so aligning it is the identity warp and it goes through the same code as the others).
"""
from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from assets import ensure_asset, realface_dest, realface_records
from backbones.spec import ARCFACE, InputSpec
from data.align import align_face, template
from data.images import ImageDataError, read_rgb
from utils.fileio import sha256_file


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


JOHNS_DIR = Path(__file__).resolve().parents[2] / "shared" / "realfaces"  # ``../shared`` beside the checkout


def johns_faces(root: str | os.PathLike = JOHNS_DIR, spec: InputSpec = ARCFACE
                ) -> tuple[np.ndarray, list[str], list[str]] | None:
    """The 55 johns chips (``root/johns.json``; 11 photos of each of 5 people), aligned as ``spec`` says:
    ``(images uint8 [55, S, S, 3], identities, paths)``, or None when ``root`` has no ``johns.json`` (they
    are not in any registry package; the project reads them from ``../shared`` and never copies them).

    The chips are dlib's own (150 px, padding 0.25), so the landmarks of every chip are dlib's template;
    each file is checked against its sha256 in the list."""
    listing = Path(root) / "johns.json"
    if not listing.is_file():
        return None
    faces = json.loads(listing.read_text())["faces"]
    chips, identities, paths = [], [], []
    for face in faces:
        path = Path(root) / face["path"]
        if not path.is_file() or sha256_file(path) != face["sha256"]:
            raise ImageDataError(f"{path}: missing or not the file {listing} lists (sha256 {face['sha256']})")
        chip = read_rgb(path)
        chips.append(align_face(chip, template("dlib_150", chip.shape[1]), spec.size, spec.alignment))
        identities.append(face["identity"])
        paths.append(face["path"])
    return np.stack(chips), identities, paths
