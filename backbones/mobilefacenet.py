"""MobileFaceNet as in insightface ``recognition/arcface_torch/backbones/mobilefacenet.py``.

Module names and shapes match arcface_torch exactly (``layers.N.layers...``, ``conv_sep.layers...``,
``features.layers...``), so its ``backbone.pth`` state_dicts load with ``strict=True``.

* ``mbf``: ``blocks=(1, 4, 6, 2)``, ``scale=2`` (arcface_torch default since 2021-07):
  2.06 M parameters and 0.44 GMACs at 512-D.  ``scale=1`` is the earlier / original MobileFaceNet
  width (1.20 M parameters at 512-D, 1.00 M at 128-D as used by QuantFace; 0.22 GMACs).
* ``mbf_large``: ``blocks=(2, 8, 12, 4)``, ``scale=4``: 6.31 M parameters, 1.82 GMACs at 512-D.

Residual sums go through ``backbones.layers.Add`` so quant/ can place a quantizer on them.
"""
from __future__ import annotations

import torch
from torch import nn

from backbones.layers import Add


class ConvBlock(nn.Module):
    """Conv (no bias) -> BN -> PReLU."""

    def __init__(self, in_c: int, out_c: int, kernel: int = 1, stride: int = 1, padding: int = 0,
                 groups: int = 1):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_c, out_c, kernel, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(out_c),
            nn.PReLU(out_c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class LinearBlock(nn.Module):
    """Conv (no bias) -> BN, no activation (a linear bottleneck)."""

    def __init__(self, in_c: int, out_c: int, kernel: int = 1, stride: int = 1, padding: int = 0,
                 groups: int = 1):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_c, out_c, kernel, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(out_c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class DepthWise(nn.Module):
    """Inverted bottleneck: 1x1 expand to ``groups`` -> depthwise 3x3 (``stride``) -> 1x1 linear project."""

    def __init__(self, in_c: int, out_c: int, residual: bool = False, stride: int = 2, groups: int = 1):
        super().__init__()
        self.residual = residual
        self.layers = nn.Sequential(
            ConvBlock(in_c, groups),
            ConvBlock(groups, groups, 3, stride, 1, groups=groups),
            LinearBlock(groups, out_c))
        if residual:
            self.add = Add()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(x)
        return self.add(out, x) if self.residual else out


class Residual(nn.Module):
    """``num_block`` stride-1 residual ``DepthWise`` units on ``c`` channels."""

    def __init__(self, c: int, num_block: int, groups: int):
        super().__init__()
        self.layers = nn.Sequential(*[DepthWise(c, c, residual=True, stride=1, groups=groups)
                                      for _ in range(num_block)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class GDC(nn.Module):
    """Global depthwise 7x7 conv -> flatten -> linear (no bias) -> BN1d: the embedding head."""

    def __init__(self, embedding_size: int):
        super().__init__()
        self.layers = nn.Sequential(
            LinearBlock(512, 512, kernel=7, groups=512),
            nn.Flatten(),
            nn.Linear(512, embedding_size, bias=False),
            nn.BatchNorm1d(embedding_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class MobileFaceNet(nn.Module):
    """112x112 RGB -> ``num_features``-D embedding (not normalised); 7x7 feature map before the head."""

    def __init__(self, num_features: int = 512, blocks: tuple[int, int, int, int] = (1, 4, 6, 2),
                 scale: int = 2):
        super().__init__()
        c1, c2 = 64 * scale, 128 * scale
        first = (ConvBlock(c1, c1, 3, 1, 1, groups=64) if blocks[0] == 1
                 else Residual(c1, blocks[0], groups=128))
        self.layers = nn.ModuleList([
            ConvBlock(3, c1, 3, 2, 1),
            first,
            DepthWise(c1, c1, stride=2, groups=128),
            Residual(c1, blocks[1], groups=128),
            DepthWise(c1, c2, stride=2, groups=256),
            Residual(c2, blocks[2], groups=256),
            DepthWise(c2, c2, stride=2, groups=512),
            Residual(c2, blocks[3], groups=256),
        ])
        self.conv_sep = ConvBlock(c2, 512)
        self.features = GDC(num_features)
        self._initialize_weights()

    def _initialize_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.features(self.conv_sep(x))


def mobilefacenet(num_features: int = 512, blocks: tuple[int, int, int, int] = (1, 4, 6, 2),
                  scale: int = 2) -> MobileFaceNet:
    """``mbf``: arcface_torch MobileFaceNet (``scale=1`` for checkpoints from before 2021-07)."""
    return MobileFaceNet(num_features, tuple(blocks), scale)


def mobilefacenet_large(num_features: int = 512, blocks: tuple[int, int, int, int] = (2, 8, 12, 4),
                        scale: int = 4) -> MobileFaceNet:
    """``mbf_large``: arcface_torch's wide and deep MobileFaceNet."""
    return MobileFaceNet(num_features, tuple(blocks), scale)
