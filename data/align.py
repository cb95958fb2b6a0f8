"""5-point face alignment to the ArcFace 112x112 template (used by IJB-B/C and the real-photo demo)."""
from __future__ import annotations

import cv2
import numpy as np

ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float32)


def similarity_transform(landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """The 2x3 similarity (rotation, uniform scale, shift) mapping 5 landmarks onto the template.

    Least squares (Umeyama) as insightface's ``norm_crop`` does; the template scales with ``size``.
    """
    src = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    dst = ARCFACE_TEMPLATE.astype(np.float64) * (size / 112.0)
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


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """Warp an HxWx3 image so its 5 landmarks land on the ArcFace template; returns size x size x 3."""
    matrix = similarity_transform(landmarks, size)
    return cv2.warpAffine(image, matrix, (size, size), borderValue=0.0)
