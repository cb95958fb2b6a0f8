"""Synthetic faces made on the fly by the DCGAN: face ``i`` is a pure function of ``(seed, i)``."""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from data.align import reframe
from data.dcgan import LATENT_DIM, load_dcgan
from data.keyed_random import keyed_normals


class GeneratedFaces:
    """``count`` DCGAN faces, RGB, ``size`` x ``size``; reproducible across batch sizes, devices and resumes.

    The generator's faces are framed like ArcFace crops; for a network aligned otherwise (``alignment``,
    e.g. dlib's chip) each face is re-framed onto that template from the 112-px ArcFace-framed face.

    The latent of face ``i`` is hashed from ``(seed, i)`` on the CPU (see ``data.keyed_random``), then
    the generator (eval mode: BatchNorm running statistics, so faces do not depend on batch
    composition) runs in chunks of ``batch_size`` on ``device``.  The 64x64 output is upsampled
    bicubically and rounded to 0..255, so faces saved as PNG by ``tools.generate_faces`` and read
    back by ``FaceFolderDataset`` are the very same pixels.
    """

    def __init__(self, weights: str | os.PathLike, count: int, seed: int = 0, size: int = 112,
                 device: str | torch.device = "cpu", batch_size: int = 256, alignment: str = "arcface_112") -> None:
        if count < 1:
            raise ValueError(f"GeneratedFaces needs count >= 1, got {count}")
        self.device = torch.device(device)
        self.generator = load_dcgan(weights, self.device)
        self.count, self.seed, self.size, self.alignment = count, seed, size, alignment
        self.batch_size = batch_size

    def __len__(self) -> int:
        return self.count

    def latents(self, indices: Sequence[int] | np.ndarray) -> torch.Tensor:
        """CPU float32 [B, 100] noise of faces ``indices``."""
        return keyed_normals(self.seed, "latent", indices, LATENT_DIM)

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
                faces = F.interpolate(faces, size=(side, side), mode="bicubic", align_corners=False,
                                      antialias=side < faces.shape[-1])
            faces = ((faces + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8)
            chunks.append(reframe(faces, "arcface_112", self.alignment, self.size))
        return torch.cat(chunks) if chunks else torch.empty(0, 3, self.size, self.size, dtype=torch.uint8,
                                                            device=self.device)

    def __getitem__(self, index: int) -> torch.Tensor:
        """Face ``index`` as a uint8 RGB [3, size, size] tensor (like ``FaceFolderDataset``)."""
        if not 0 <= index < self.count:
            raise IndexError(f"face {index} out of range for {self.count} generated faces")
        return self.generate([index])[0]
