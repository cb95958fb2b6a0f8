"""Decoding, sizing and flipping face images: the one image path shared by every data source and evaluation.

Sources hand over uint8 RGB images of the network's input size; flips and normalisation
(``InputSpec.normalise``) run on whole batches on the training device, so workers ship 4x fewer bytes
than float32.
"""
from __future__ import annotations

import os

import cv2
import numpy as np
import torch

from data.align import reframe_image
from utils.errors import InputError

SOURCE_ALIGNMENT = "arcface_112"  # how insightface-format data (.rec, .bin, face folders) is aligned
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class ImageDataError(InputError, ValueError):
    """An image file or record cannot be used; the message names it and what to do."""


def _png_needs_unchanged(buffer: np.ndarray) -> bool:
    """True for a PNG with an alpha channel or 16-bit samples (read from its IHDR chunk)."""
    header = buffer[:26].tobytes()
    if len(header) < 26 or not header.startswith(_PNG_SIGNATURE):
        return False
    bit_depth, colour_type = header[24], header[25]
    return bit_depth == 16 or colour_type in (4, 6)


def _to_rgb8(image: np.ndarray) -> np.ndarray:
    """An image decoded with IMREAD_UNCHANGED -> 8-bit RGB (16-bit scaled, alpha composited over black)."""
    if image.dtype == np.uint16:
        image = (image.astype(np.float32) / 257.0).round().astype(np.uint8)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:  # composite over black so transparent pixels do not keep stray colours
        alpha = image[..., 3:].astype(np.float32) / 255.0
        image = (image[..., :3].astype(np.float32) * alpha).round().astype(np.uint8)
    if image.shape[2] == 2:  # grey + alpha
        alpha = image[..., 1:].astype(np.float32) / 255.0
        grey = (image[..., :1].astype(np.float32) * alpha).round().astype(np.uint8)
        return cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def decode_rgb(data: bytes | np.ndarray, source: str) -> np.ndarray:
    """JPEG/PNG bytes -> HxWx3 uint8 RGB.  Grey images become 3-channel; 16-bit and alpha PNGs are
    scaled to 8 bits and composited over black; everything else decodes as OpenCV's IMREAD_COLOR."""
    buffer = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else data
    if not buffer.size:
        image = None
    elif _png_needs_unchanged(buffer):
        image = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
        image = None if image is None else _to_rgb8(image)
    else:
        image = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
        image = None if image is None else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if image is None:
        raise ImageDataError(f"cannot decode image {source} ({buffer.size} bytes): not a valid JPEG/PNG; "
                             "replace or remove it")
    return image


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """The image file ``path`` as HxWx3 uint8 RGB (``decode_rgb``); a missing file names itself."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise ImageDataError(f"cannot read image {path}: {exc}") from exc
    return decode_rgb(data, str(path))


def fit_size(image: np.ndarray, size: int, alignment: str = SOURCE_ALIGNMENT) -> np.ndarray:
    """An insightface-format face (ArcFace-aligned, any side) as a size x size face aligned by ``alignment``:
    resized unless it already fits (area filter when shrinking, bilinear when enlarging), or re-framed
    onto another template (``data.align.reframe_image``)."""
    if alignment != SOURCE_ALIGNMENT:
        return reframe_image(image, SOURCE_ALIGNMENT, alignment, size)
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
