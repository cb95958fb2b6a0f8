"""FaceFolderDataset on real image files: nested folders, PNG and JPEG, resizing, RGB order, errors."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from data.folder import FaceFolderDataset
from data.images import ImageDataError


def quadrants(height: int, width: int) -> np.ndarray:
    """RGB image: red, green / blue, white quadrants (catches BGR mix-ups and flips)."""
    image = np.zeros((height, width, 3), dtype=np.uint8)
    h, w = height // 2, width // 2
    image[:h, :w] = (255, 0, 0)
    image[:h, w:] = (0, 255, 0)
    image[h:, :w] = (0, 0, 255)
    image[h:, w:] = (255, 255, 255)
    return image


def save(path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)
    save(tmp_path / "b" / "x" / "0.png", noise)
    save(tmp_path / "a.png", quadrants(112, 112))
    save(tmp_path / "b" / "big.JPG", quadrants(160, 160))
    save(tmp_path / "b" / "small.jpeg", quadrants(64, 96))
    (tmp_path / "b" / "notes.txt").write_text("not an image")
    return tmp_path, noise


def test_nested_sorted_rgb_and_resized(folder):
    root, noise = folder
    dataset = FaceFolderDataset(root)
    names = [str(dataset.path(i).relative_to(root)) for i in range(len(dataset))]
    assert names == ["a.png", "b/big.JPG", "b/small.jpeg", "b/x/0.png"]
    np.testing.assert_array_equal(dataset.read(3), noise)
    np.testing.assert_array_equal(dataset.read(0), quadrants(112, 112))
    for index in (1, 2):  # resized JPEGs: quadrant centres keep their colour
        image = dataset.read(index).astype(int)
        assert image.shape == (112, 112, 3)
        for (y, x), colour in zip([(28, 28), (28, 84), (84, 28), (84, 84)],
                                  [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)]):
            assert np.abs(image[y, x] - colour).max() <= 12, (index, y, x, image[y, x])


def test_items_are_the_uint8_images_unflipped(folder):
    root, noise = folder
    dataset = FaceFolderDataset(root)
    expected = torch.from_numpy(noise).permute(2, 0, 1)
    draws = [dataset[3] for _ in range(8)]  # flips are keyed per epoch in data.train_batches, never drawn here
    assert all(d.dtype == torch.uint8 and torch.equal(d, expected) for d in draws)


def test_corrupt_file_is_named(folder):
    root, _ = folder
    (root / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    dataset = FaceFolderDataset(root)
    index = [dataset.path(i).name for i in range(len(dataset))].index("broken.png")
    with pytest.raises(ImageDataError, match=r"cannot decode image .*b/broken\.png"):
        dataset[index]


def test_empty_and_missing_folders(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "readme.txt").write_text("no faces here")
    with pytest.raises(ImageDataError, match=r"no \.jpg/\.jpeg/\.png images found under .*empty"):
        FaceFolderDataset(tmp_path / "empty")
    with pytest.raises(ImageDataError, match=r"face image folder not found: .*nowhere"):
        FaceFolderDataset(tmp_path / "nowhere")
