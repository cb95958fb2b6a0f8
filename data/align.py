"""5-point face alignment onto a backbone's template (IJB-B/C, the real photos, re-framing training faces).

Landmarks are the 5 points insightface's detectors give: eye centres, nose tip, mouth corners (image left
first).  Two templates: ``arcface_112``, insightface's ``norm_crop`` template; ``dlib_150``, where dlib's
``get_face_chip_details`` (150 px, padding 0.25, as in dlib's face recognition example) puts those
points: eye centres, nose tip (point 30) and mouth corners (48, 54) of its 68-point mean face shape.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float32)
DLIB_TEMPLATE = np.array([[47.5492, 46.5990], [100.4761, 46.5990], [74.0127, 76.5625],
                          [50.4149, 103.0233], [97.6104, 103.0233]], dtype=np.float32)
TEMPLATES = {"arcface_112": (ARCFACE_TEMPLATE, 112), "dlib_150": (DLIB_TEMPLATE, 150)}


def template(alignment: str, size: int) -> np.ndarray:
    """The 5x2 landmark positions of ``alignment`` in a ``size`` x ``size`` crop."""
    if alignment not in TEMPLATES:
        raise ValueError(f"unknown alignment '{alignment}' (known: {', '.join(TEMPLATES)})")
    points, native = TEMPLATES[alignment]
    return points.astype(np.float64) * (size / native)


def similarity_transform(landmarks: np.ndarray, size: int = 112, alignment: str = "arcface_112") -> np.ndarray:
    """The 2x3 similarity (rotation, uniform scale, shift) mapping 5 landmarks onto the template.

    Least squares (Umeyama) as insightface's ``norm_crop`` and dlib's ``find_similarity_transform`` do;
    the template scales with ``size``.
    """
    src = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    dst = template(alignment, size)
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    cov = dst_c.T @ src_c / len(src)
    u, s, vt = np.linalg.svd(cov)
    d = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[1, 1] = -1
    rot = u @ d @ vt
    scale = np.trace(np.diag(s) @ d) / src_c.var(0).sum()
    matrix = np.zeros((2, 3))
    matrix[:, :2] = scale * rot
    matrix[:, 2] = dst_mean - scale * rot @ src_mean
    return matrix


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int = 112, alignment: str = "arcface_112"
               ) -> np.ndarray:
    """Warp an HxWx3 image so its 5 landmarks land on the template; returns size x size x 3."""
    matrix = similarity_transform(landmarks, size, alignment)
    return cv2.warpAffine(image, matrix, (size, size), borderValue=0.0)


def reframe_matrix(source: str, alignment: str, side: int, size: int) -> np.ndarray:
    """2x3 map from pixels of a ``size`` crop aligned by ``alignment`` to pixels of a ``side`` crop aligned
    by ``source`` (the similarity fitted between the two templates)."""
    return similarity_transform(template(alignment, size), side, source)


def reframe_image(image: np.ndarray, source: str, alignment: str, size: int) -> np.ndarray:
    """One HxWx3 face aligned by ``source`` -> size x size x 3 aligned by ``alignment`` (bilinear)."""
    back = reframe_matrix(source, alignment, image.shape[1], size)
    return cv2.warpAffine(image, back, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderValue=0.0)


def reframe(images: torch.Tensor, source: str, alignment: str, size: int) -> torch.Tensor:
    """uint8 [B, 3, H, W] faces aligned by ``source`` -> [B, 3, size, size] aligned by ``alignment``
    (bilinear, on the images' device; zero outside the source).  Same alignment: a plain resize."""
    if source == alignment:
        if images.shape[-1] == size:
            return images
        return F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False,
                             antialias=size < images.shape[-1]).round_().clamp_(0, 255).to(torch.uint8)
    side = images.shape[-1]
    back = reframe_matrix(source, alignment, side, size)
    # to the normalised coordinates of affine_grid (align_corners=False): u = (2x + 1) / n - 1
    to_norm = np.array([[2.0 / side, 0, 1.0 / side - 1], [0, 2.0 / side, 1.0 / side - 1], [0, 0, 1]])
    from_norm = np.array([[size / 2.0, 0, size / 2.0 - 0.5], [0, size / 2.0, size / 2.0 - 0.5], [0, 0, 1]])
    theta = (to_norm @ np.vstack([back, [0, 0, 1]]) @ from_norm)[:2]
    theta_t = torch.tensor(theta, dtype=torch.float32, device=images.device).expand(len(images), 2, 3)
    grid = F.affine_grid(theta_t, [len(images), 3, size, size], align_corners=False)
    out = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)
