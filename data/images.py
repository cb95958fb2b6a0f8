"""Decoding, sizing, flipping and normalising face images: one path shared by every data source.

Sources hand over uint8 RGB images of the network's input size; flips and ``(x - mean) / std`` run
on whole batches on the training device, so workers ship 4x fewer bytes than float32.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch


class ImageDataError(ValueError):
    """An image file or record cannot be used; the message names it and what to do."""


def decode_rgb(data: bytes | np.ndarray, source: str) -> np.ndarray:
    """JPEG/PNG bytes -> HxWx3 uint8 RGB (OpenCV decodes BGR; grey images become 3-channel)."""
    buffer = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else data
    image = cv2.imdecode(buffer, cv2.IMREAD_COLOR) if buffer.size else None
    if image is None:
        raise ImageDataError(f"cannot decode image {source} ({buffer.size} bytes): not a valid JPEG/PNG; "
                             "replace or remove it")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def fit_size(image: np.ndarray, size: int) -> np.ndarray:
    """Resize to size x size unless it already is (area filter when shrinking, bilinear when enlarging)."""
    height, width = image.shape[:2]
    if (height, width) == (size, size):
        return image
    shrink = height * width > size * size
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def to_chw(image: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 array -> 3xHxW uint8 tensor."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


def flip_where(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mirror (left-right) the images of a [B,3,H,W] batch where ``mask`` [B] is True."""
    mask = mask.to(images.device).view(-1, 1, 1, 1)
    return torch.where(mask, images.flip(-1), images)


def normalise(images: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """Pixel-scale images (uint8 or float in 0..255) -> float32 ``(x - mean) / std``."""
    return (images.float() - mean) / std


def to_input(image: np.ndarray, mean: float, std: float, random_flip: bool) -> torch.Tensor:
    """One HxWx3 uint8 image -> normalised float 3xHxW tensor, mirrored with probability 1/2 if asked."""
    tensor = to_chw(image)
    if random_flip and bool(torch.rand(()) < 0.5):
        tensor = tensor.flip(-1)
    return normalise(tensor, mean, std)
