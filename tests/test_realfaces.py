"""Real face photos: all listed faces load from the verified cache and align onto the ArcFace template."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from assets import realface_records
from backbones import input_spec
from backbones.spec import InputSpec
from data.align import ARCFACE_TEMPLATE, similarity_transform
from data.images import ImageDataError, read_rgb
from lab.realfaces import JOHNS_DIR, aligned_real_faces, johns_faces, real_faces
from utils.fileio import sha256_file


@pytest.fixture(scope="module")
def faces():
    return real_faces()


def test_every_listed_face_loads_with_its_pinned_photo(faces):
    records = realface_records()
    assert len(faces) == len(records) >= 14
    assert len({f.name for f in faces}) == len(faces)
    for face, record in zip(faces, records):
        assert sha256_file(face.photo_path) == record["sha256"], face.photo_path
        assert face.landmarks.shape == (5, 2) and face.landmarks.dtype == np.float32
    identities = [f.identity for f in faces]
    assert identities.count("obama") == 6 and identities.count("biden") == 1
    assert {f"t1_person{i}" for i in range(6)} <= set(identities)
    assert {f.name for f in faces} >= {"obama2", "32bit", "t1_face3", "Tom_Hanks_54745"}


def test_aligned_crops_are_rgb_uint8_in_list_order(faces):
    images, identities, names = aligned_real_faces()
    assert images.shape == (len(faces), 112, 112, 3) and images.dtype == np.uint8
    assert names == [f.name for f in faces] and identities == [f.identity for f in faces]
    tom = names.index("Tom_Hanks_54745")  # already aligned: its landmarks are the template, warp is identity
    np.testing.assert_array_equal(images[tom], read_rgb(faces[tom].photo_path))
    small, _, _ = aligned_real_faces(spec=InputSpec(size=96))
    assert small.shape[1:] == (96, 96, 3)


def test_eyes_land_on_the_template(faces):
    """Photo and landmarks agree: after the similarity fit the eye centre is where the template puts it."""
    template_eyes = ARCFACE_TEMPLATE[:2].mean(0)
    checked = 0
    for face in faces:
        if "partial" in face.name:  # crops with half the face outside the photo
            continue
        matrix = similarity_transform(face.landmarks, 112)
        moved = face.landmarks @ matrix[:2, :2].T + matrix[:, 2]
        assert np.linalg.norm(moved[:2].mean(0) - template_eyes) < 3.5, face.name
        assert moved[0, 0] < moved[1, 0], f"{face.name}: left and right eye swapped"
        checked += 1
    assert checked == 12


def test_32bit_png_decodes_like_its_jpeg_twin(faces):
    by_name = {f.name: f for f in faces}
    png = cv2.imread(str(by_name["32bit"].photo_path), cv2.IMREAD_UNCHANGED)
    assert png.shape[2] == 4  # the file really has an alpha channel
    rgb_png, rgb_jpg = read_rgb(by_name["32bit"].photo_path), read_rgb(by_name["obama2"].photo_path)
    assert rgb_png.shape == rgb_jpg.shape == (1200, 626, 3)
    assert np.abs(rgb_png.astype(int) - rgb_jpg.astype(int)).mean() < 4  # same photo, JPEG noise only
    assert np.abs(rgb_png.astype(int) - rgb_jpg[..., ::-1].astype(int)).mean() > 10  # and in RGB order


def test_read_rgb_composites_alpha_and_expands_grey(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = (200, 100, 50)  # BGR as OpenCV writes it
    rgba[..., 3] = 255
    rgba[0, 0, 3] = 0
    cv2.imwrite(str(tmp_path / "a.png"), rgba)
    out = read_rgb(tmp_path / "a.png")
    assert out.shape == (4, 4, 3) and tuple(out[1, 1]) == (50, 100, 200) and tuple(out[0, 0]) == (0, 0, 0)
    cv2.imwrite(str(tmp_path / "g.png"), np.full((3, 5), 77, np.uint8))
    assert read_rgb(tmp_path / "g.png").shape == (3, 5, 3)


def test_johns_faces_are_read_from_shared_checked_and_aligned(tmp_path) -> None:
    johns = johns_faces(JOHNS_DIR, input_spec("dlib_resnet"))
    assert johns is not None, f"{JOHNS_DIR / 'johns.json'} is part of ../shared beside the checkout"
    chips, identities, paths = johns
    assert chips.shape == (55, 150, 150, 3) and len(set(identities)) == 5
    assert {identities.count(name) for name in set(identities)} == {11}
    arcface = johns_faces(JOHNS_DIR, input_spec("mbf"))[0]
    assert arcface.shape == (55, 112, 112, 3)
    # dlib's chips are already on dlib's template: re-aligning them onto it changes nothing
    assert np.abs(chips.astype(int) - np.stack([read_rgb(JOHNS_DIR / p) for p in paths]).astype(int)).max() <= 1
    assert johns_faces(tmp_path) is None  # not there: the caller says it skipped them
    (tmp_path / "johns").mkdir()
    listing = json.loads((JOHNS_DIR / "johns.json").read_text())
    (tmp_path / "johns.json").write_text(json.dumps(listing))
    first = listing["faces"][0]["path"]
    (tmp_path / first).parent.mkdir(parents=True)
    (tmp_path / first).write_bytes(b"not the photo")
    with pytest.raises(ImageDataError, match=r"000179_02159509\.jpg: missing or not the file .*johns\.json lists"):
        johns_faces(tmp_path)
