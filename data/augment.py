"""Augmentation of training faces: random crops, small rotations, colour jitter, blur or sharpening, mixup.

Why: the generated faces are blurry 64-px DCGAN faces, all framed alike; real photos vary in framing, pose,
colour and sharpness, and a student fitted to the generator's narrow distribution alone can drift elsewhere.
Each draw is keyed by ``(seed, epoch, sample index)`` (``data.keyed_random``), so a sample is augmented the
same way whatever the batch size, device or resume; only mixup's partner (the next sample of the same batch)
depends on how the batch was put together, which the epoch's plan fixes.  Augmented batches are rounded back
to uint8, like every other source's images.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from data.keyed_random import keyed_uniforms, to_device

_LUMA = (0.299, 0.587, 0.114)
_BLUR_RADIUS = 3  # 7-tap Gaussian: enough for sigma up to 1.5
_DRAWS = 12       # uniforms per sample (see Augmentation.__call__)


@dataclass(frozen=True)
class Augmentation:
    """What is done to each training face; the defaults do nothing.

    ``crop``: smallest crop area as a share of the face (square crops anywhere inside it, resized back;
    1 = off); ``rotate``: largest rotation in degrees (either way); ``color``: brightness, contrast and
    saturation each scaled by a factor in [1 - color, 1 + color]; ``blur``: share of faces blurred or
    sharpened (half each; Gaussian sigma 0.5-1.5, sharpening by unsharp masking of strength 0.5-2);
    ``mixup``: largest share of the batch's next face blended into each face.
    """

    crop: float = 1.0
    rotate: float = 0.0
    color: float = 0.0
    blur: float = 0.0
    mixup: float = 0.0

    def __post_init__(self) -> None:
        valid = {"crop": (0.0 < self.crop <= 1.0, "in (0, 1]"), "rotate": (0.0 <= self.rotate <= 45.0, "in [0, 45]"),
                 "color": (0.0 <= self.color < 1.0, "in [0, 1)"), "blur": (0.0 <= self.blur <= 1.0, "in [0, 1]"),
                 "mixup": (0.0 <= self.mixup <= 0.5, "in [0, 0.5]")}
        for name, (ok, interval) in valid.items():
            if not ok:
                raise ValueError(f"augment_{name}={getattr(self, name)} must be {interval}")

    @property
    def active(self) -> bool:
        return self != Augmentation()

    def __call__(self, images: torch.Tensor, seed: int, epoch: int, indices: Sequence[int] | np.ndarray
                 ) -> torch.Tensor:
        """uint8 [B, 3, H, W] faces (sample ``indices`` of ``epoch``) augmented, uint8 again."""
        if not self.active:
            return images
        u = to_device(keyed_uniforms(seed, "augment", epoch, np.asarray(indices), _DRAWS), images.device)
        x = images.float()
        if self.crop < 1.0 or self.rotate > 0.0:
            x = self._geometry(x, u[:, 0:4])
        if self.color > 0.0:
            x = self._colour(x, u[:, 4:7])
        if self.blur > 0.0:
            x = self._sharpness(x, u[:, 7:11])
        if self.mixup > 0.0:
            share = (self.mixup * u[:, 11]).view(-1, 1, 1, 1)
            x = torch.lerp(x, x.roll(1, dims=0), share)
        return x.round_().clamp_(0, 255).to(torch.uint8)

    def _geometry(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """A square crop of area share in [crop, 1] anywhere inside the face, rotated, resized back."""
        side = torch.sqrt(self.crop + (1.0 - self.crop) * u[:, 0])
        shift = (1.0 - side).unsqueeze(1) * (2.0 * u[:, 1:3] - 1.0)
        angle = math.radians(self.rotate) * (2.0 * u[:, 3] - 1.0)
        cos, sin = side * torch.cos(angle), side * torch.sin(angle)
        theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def _colour(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Brightness, then contrast about the face's mean grey, then saturation about each pixel's grey."""
        factors = (1.0 + self.color * (2.0 * u - 1.0)).view(-1, 3, 1, 1)
        luma = torch.tensor(_LUMA, device=x.device).view(1, 3, 1, 1)
        x = x * factors[:, 0:1]
        mean = (x * luma).sum(1, keepdim=True).mean((2, 3), keepdim=True)
        x = torch.lerp(mean, x, factors[:, 1:2])
        grey = (x * luma).sum(1, keepdim=True)
        return torch.lerp(grey, x, factors[:, 2:3]).clamp_(0, 255)

    def _sharpness(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """``x + amount * (x - gaussian(x))``: amount -1 blurs, 0.5-2 sharpens, 0 leaves the face."""
        chosen = u[:, 0] < self.blur
        sharpen = u[:, 1] >= 0.5
        amount = torch.where(sharpen, 0.5 + 1.5 * u[:, 3], torch.full_like(u[:, 3], -1.0))
        amount = torch.where(chosen, amount, torch.zeros_like(amount)).view(-1, 1, 1, 1)
        return (x + amount * (x - gaussian_blur(x, 0.5 + u[:, 2]))).clamp_(0, 255)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """float [B, C, H, W] blurred by a separable 7-tap Gaussian of standard deviation ``sigma`` [B] per image
    (reflected borders)."""
    taps = torch.arange(-_BLUR_RADIUS, _BLUR_RADIUS + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (taps / sigma.to(x).unsqueeze(1)) ** 2)
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(x.shape[1], 0)  # [B*C, taps]
    b, c, h, w = x.shape
    flat = F.pad(x.reshape(1, b * c, h, w), (_BLUR_RADIUS,) * 4, mode="reflect")
    flat = F.conv2d(flat, kernel.view(b * c, 1, 1, -1), groups=b * c)
    return F.conv2d(flat, kernel.view(b * c, 1, -1, 1), groups=b * c).view(b, c, h, w)
