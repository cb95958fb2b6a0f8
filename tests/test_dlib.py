"""dlib's ResNet-29: the importer reproduces dlib's own descriptors, refuses other files, and the chip
alignment puts the landmarks where dlib's template does."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from assets import ensure_asset
from backbones import input_spec, load_float_model
from backbones.dlib_dat import DlibImportError, convert_dat, read_dat
from data.align import DLIB_TEMPLATE, reframe, reframe_image, reframe_matrix, similarity_transform, template
from lab.realfaces import aligned_real_faces
from lab.dlib_reference import random_chips

REFERENCE = Path(__file__).parent / "data" / "dlib_reference.npz"  # written by lab.dlib_reference (dlib 20.0.1)
SPEC = input_spec("dlib_resnet")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def dat() -> Path:
    return ensure_asset("dlib_resnet_source")


@pytest.fixture(scope="module")
def teacher() -> torch.nn.Module:
    return load_float_model(ensure_asset("dlib_resnet")).eval()


def _descriptors(model: torch.nn.Module, chips: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(SPEC.normalise(torch.from_numpy(chips).permute(0, 3, 1, 2))).numpy()


def test_converted_model_reproduces_dlib_descriptors(teacher) -> None:
    reference = np.load(REFERENCE)
    ours = _descriptors(teacher, random_chips())
    assert np.abs(ours - reference["random_descriptors"]).max() < 2e-6  # dlib's outputs are ~0.1 in size
    real, identities, _ = aligned_real_faces(None, SPEC)
    ours_real = _descriptors(teacher, real)
    # The real chips pass through a JPEG decoder and OpenCV's resampler, whose versions move a few pixels by
    # a few grey levels: 0.0003 (OpenCV 5.1) to 0.007 (4.14) from dlib's descriptors per face, while the
    # alignment one pixel off moves them 0.11.  The importer itself is held to 2e-6 by the random chips.
    gap = np.linalg.norm(ours_real - reference["real_descriptors"], axis=1)
    assert gap.max() < 0.02, f"the dlib chip alignment changed: descriptors moved {gap.max():.4f} from dlib's"
    # and it recognises: dlib's rule, same person below 0.6 Euclidean distance
    ids = np.asarray(identities)
    distance = np.linalg.norm(ours_real[:, None] - ours_real[None], axis=2)
    same = (ids[:, None] == ids[None]) & ~np.eye(len(ids), dtype=bool)
    assert distance[same].mean() < 0.6 < distance[ids[:, None] != ids[None]].mean()  # 0.52 / 0.80 here


def test_checkpoint_records_the_dlib_input_spec(teacher) -> None:
    assert teacher.input_spec == SPEC and SPEC.size == 150 and SPEC.std == (256.0, 256.0, 256.0)
    assert SPEC.alignment == "dlib_150" and SPEC.channels == "RGB"
    convs = [m for m in teacher.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 29 and all(c.bias is not None for c in convs)
    assert sum(p.numel() for p in teacher.parameters()) == 5_607_488


def test_truncated_dat_is_one_clear_error(dat, tmp_path) -> None:
    data = dat.read_bytes()
    for cut in (3, 20_000, len(data) - 100):
        short = tmp_path / f"cut{cut}.dat"
        short.write_bytes(data[:cut])
        with pytest.raises(DlibImportError, match=r"cut\d+\.dat: byte \d+: .*(file ends|truncated)"):
            read_dat(short)
    longer = tmp_path / "longer.dat"
    longer.write_bytes(data + b"\x01\x02")
    with pytest.raises(DlibImportError, match="2 bytes left after the network"):
        read_dat(longer)


def test_dat_of_another_dlib_network_is_refused(dat) -> None:
    detector = dat.parent / "mmod_human_face_detector.dat"  # dlib's CNN face detector, same package
    with pytest.raises(DlibImportError, match=r"mmod_human_face_detector\.dat: byte \d+: .*found dlib layer "
                                              r"'loss_mmod.*not dlib's ResNet-29"):
        convert_dat(detector)


def test_a_changed_layer_is_named(dat, tmp_path) -> None:
    data = bytearray(dat.read_bytes())
    at = data.index(b"max_pool_2") + len(b"max_pool_2")
    assert data[at:at + 2] == b"\x01\x03"  # the pool's kernel height, 3
    data[at + 1] = 5
    changed = tmp_path / "changed.dat"
    changed.write_bytes(bytes(data))
    with pytest.raises(DlibImportError, match=r"layer 3 \(max_pool\): max_pool \(5, 3\)"):
        read_dat(changed)


def test_dlib_template_is_where_dlibs_chip_puts_the_points() -> None:
    # dlib_150 maps onto itself exactly; the eye line is level and the face centred
    assert np.allclose(similarity_transform(DLIB_TEMPLATE, 150, "dlib_150"), [[1, 0, 0], [0, 1, 0]], atol=1e-9)
    eyes = DLIB_TEMPLATE[:2]
    assert eyes[0, 1] == eyes[1, 1] and abs(eyes.mean(0)[0] - 74.0) < 0.1
    assert np.allclose(template("dlib_150", 300), DLIB_TEMPLATE * 2)


def test_reframe_moves_the_landmarks_onto_the_new_template() -> None:
    """Dots drawn at the ArcFace template, re-framed: each lands where the fitted similarity sends it, and
    that is within 3.5 px of dlib's template (the two templates are not exactly similar shapes)."""
    image = np.zeros((112, 112, 3), dtype=np.uint8)
    dots = template("arcface_112", 112).round().astype(int)
    for x, y in dots:
        image[y - 1:y + 2, x - 1:x + 2] = 255
    back = np.vstack([reframe_matrix("arcface_112", "dlib_150", 112, 150), [0, 0, 1]])
    forward = np.linalg.inv(back)[:2]
    fitted = np.c_[template("arcface_112", 112), np.ones(5)] @ forward.T
    assert np.abs(fitted - DLIB_TEMPLATE).max() < 3.5  # ArcFace's mouth is narrower: 3.0 px at the corners
    expected = np.c_[dots, np.ones(5)] @ forward.T
    batch = torch.from_numpy(image).permute(2, 0, 1)[None]
    for out in (reframe(batch, "arcface_112", "dlib_150", 150)[0, 0].numpy(),
                reframe_image(image, "arcface_112", "dlib_150", 150)[..., 0]):
        assert out.shape == (150, 150)
        for x, y in expected:
            x0, y0 = int(round(x)) - 4, int(round(y)) - 4
            patch = out[y0:y0 + 9, x0:x0 + 9].astype(float)
            ys, xs = np.mgrid[0:9, 0:9]
            centre = ((xs * patch).sum() / patch.sum() + x0, (ys * patch).sum() / patch.sum() + y0)
            assert np.hypot(centre[0] - x, centre[1] - y) < 0.5
