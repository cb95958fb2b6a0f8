"""Synthetic faces made on the fly by the DCGAN: face ``i`` is a pure function of ``(seed, i)``."""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from data.align import reframe
from data.augment import gaussian_blur
from data.dcgan import LATENT_DIM, load_dcgan
from data.keyed_random import keyed_normals, keyed_uniforms

UPSAMPLING = ("bicubic", "bilinear", "sharp")
SHARPENING = (1.0, 1.0)  # "sharp": unsharp mask (amount, Gaussian sigma in output pixels) after bicubic


def check_options(interpolation: float, upsample: str) -> None:
    """ValueError naming the config field when ``latent_interpolation`` or ``generator_upsample`` is invalid."""
    if not 0.0 <= interpolation <= 1.0:
        raise ValueError(f"latent_interpolation={interpolation} must be in [0, 1] (a share of the faces)")
    if upsample not in UPSAMPLING:
        raise ValueError(f"generator_upsample={upsample!r} is not one of {', '.join(UPSAMPLING)}")


class GeneratedFaces:
    """``count`` DCGAN faces, RGB, ``size`` x ``size``; reproducible across batch sizes, devices and resumes.

    The generator's faces are framed like ArcFace crops; for a network aligned otherwise (``alignment``,
    e.g. dlib's chip) each face is re-framed onto that template from the 112-px ArcFace-framed face.

    The latent of face ``i`` is hashed from ``(seed, i)`` on the CPU (see ``data.keyed_random``), then
    the generator (eval mode: BatchNorm running statistics, so faces do not depend on batch
    composition) runs in chunks of ``batch_size`` on ``device``.  The 64x64 output is upsampled
    (``upsample``: bicubic, bilinear, or ``sharp``: bicubic then an unsharp mask that gives back some of
    the edge contrast an enlargement from 64 px loses) and rounded to 0..255, so faces saved as
    PNG by ``tools.generate_faces`` and read back by ``FaceFolderDataset`` are the very same pixels.
    ``interpolation``: the share of faces whose latent lies on the line between two keyed latents (at a
    keyed point): faces between two identities, nearer the generator's average face.
    """

    def __init__(self, weights: str | os.PathLike, count: int, seed: int = 0, size: int = 112,
                 device: str | torch.device = "cpu", batch_size: int = 256, alignment: str = "arcface_112",
                 interpolation: float = 0.0, upsample: str = "bicubic") -> None:
        if count < 1:
            raise ValueError(f"GeneratedFaces needs count >= 1, got {count}")
        check_options(interpolation, upsample)
        self.device = torch.device(device)
        self.generator = load_dcgan(weights, self.device)
        self.count, self.seed, self.size, self.alignment = count, seed, size, alignment
        self.batch_size, self.interpolation, self.upsample = batch_size, interpolation, upsample

    def __len__(self) -> int:
        return self.count

    def latents(self, indices: Sequence[int] | np.ndarray) -> torch.Tensor:
        """CPU float32 [B, 100] noise of faces ``indices``."""
        latents = keyed_normals(self.seed, "latent", indices, LATENT_DIM)
        if self.interpolation == 0.0:
            return latents
        draws = keyed_uniforms(self.seed, "interpolation", 0, indices, 2)
        point = torch.where(draws[:, 0] < self.interpolation, draws[:, 1], torch.zeros(())).unsqueeze(1)
        return torch.lerp(latents, keyed_normals(self.seed, "latent partner", indices, LATENT_DIM), point)

    def _resize(self, faces: torch.Tensor, side: int) -> torch.Tensor:
        """[B, 3, h, w] generator output in [-1, 1] at ``side`` x ``side``."""
        mode = "bilinear" if self.upsample == "bilinear" else "bicubic"
        faces = F.interpolate(faces, size=(side, side), mode=mode, align_corners=False, antialias=side < faces.shape[-1])
        if self.upsample != "sharp":
            return faces
        amount, sigma = SHARPENING
        return faces + amount * (faces - gaussian_blur(faces, torch.full((len(faces),), sigma)))

    @torch.no_grad()
    def generate(self, indices: Sequence[int] | np.ndarray) -> torch.Tensor:
        """uint8 RGB [B, 3, size, size] faces ``indices`` on ``device``."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        chunks = []
        for start in range(0, len(indices), self.batch_size):
            latent = self.latents(indices[start:start + self.batch_size]).to(self.device, non_blocking=True)
            faces = self.generator(latent)
            side = self.size if self.alignment == "arcface_112" else 112
            if faces.shape[-1] != side:
                faces = self._resize(faces, side)
            faces = ((faces + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8)
            chunks.append(reframe(faces, "arcface_112", self.alignment, self.size))
        return torch.cat(chunks) if chunks else torch.empty(0, 3, self.size, self.size, dtype=torch.uint8,
                                                            device=self.device)

    def __getitem__(self, index: int) -> torch.Tensor:
        """Face ``index`` as a uint8 RGB [3, size, size] tensor (like ``FaceFolderDataset``)."""
        if not 0 <= index < self.count:
            raise IndexError(f"face {index} out of range for {self.count} generated faces")
        return self.generate([index])[0]
