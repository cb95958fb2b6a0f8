"""The DCGAN face generator of PyPI ``gan-face-generate`` (64x64 RGB in [-1, 1] from 100-d noise)."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from utils.checkpoint import CheckpointError, load_state_strict

LATENT_DIM = 100


def _up(cin: int, cout: int, stride: int, padding: int) -> list[nn.Module]:
    return [nn.ConvTranspose2d(cin, cout, 4, stride, padding, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)]


class DCGANGenerator(nn.Module):
    """Radford et al. generator; module names match the released ``netG_state_dict`` (``main.N``)."""

    def __init__(self, latent_dim: int = LATENT_DIM, width: int = 64) -> None:
        super().__init__()
        self.main = nn.Sequential(
            *_up(latent_dim, width * 8, 1, 0), *_up(width * 8, width * 4, 2, 1),
            *_up(width * 4, width * 2, 2, 1), *_up(width * 2, width, 2, 1),
            nn.ConvTranspose2d(width, 3, 4, 2, 1, bias=False), nn.Tanh())

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        """[B, latent_dim] or [B, latent_dim, 1, 1] noise -> [B, 3, 64, 64] RGB in [-1, 1]."""
        return self.main(latent.reshape(latent.shape[0], -1, 1, 1))


def load_dcgan(path: str | os.PathLike, device: str | torch.device = "cpu") -> DCGANGenerator:
    """The generator with weights from ``path`` (key ``netG_state_dict``), in eval mode, gradients off."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"DCGAN generator weights not found: {path} (run `python -m tools.fetch_assets`, "
                              "or set generator_weights)")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read DCGAN weights {path}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(blob, dict) or "netG_state_dict" not in blob:
        raise CheckpointError(f"{path} has no 'netG_state_dict' (expected gan-face-generate's weights.tar)")
    model = load_state_strict(DCGANGenerator(), blob["netG_state_dict"], str(path))
    return model.to(device).eval().requires_grad_(False)
