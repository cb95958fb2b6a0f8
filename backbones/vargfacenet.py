"""VarGFaceNet (Yan et al., 2019, arXiv:1910.04985): variable group convolutions, 8 channels per group.

Follows the authors' published MXNet symbol (``VarGFaceNet.py`` of the LFR2019 winning entry, also
``recognition/symbol/vargfacenet.py`` in insightface): width multiplier 1.25, PReLU everywhere,
squeeze-and-excitation (ratio 4) in the normal blocks, MXNet BatchNorm eps 2e-5.

* Separable unit: 3x3 group conv C -> factor*C (groups C/8) + BN + PReLU, 1x1 conv -> C_out + BN
  (+ PReLU when ``act_out``).
* Normal block: sep(act) -> sep -> SE -> + shortcut -> PReLU.
* Down-sampling block: two parallel stride-2 seps summed -> PReLU -> sep; shortcut = stride-2 sep;
  + -> PReLU.
* Head: 3x3 conv 3->40 + BN + PReLU, then a stride-2 normal block (factor 1) -> 40 x 56 x 56.
  Stages of 80 / 160 / 320 channels with 3 / 7 / 4 blocks (the first down-samples) -> 28, 14, 7.
* Embedding: 1x1 320->1024 + BN + PReLU; 7x7 group conv (groups 128, valid) + BN; 1x1 1024->512
  + BN + PReLU; FC 512 -> ``num_features`` + BN1d.

Measured here (``python -m tools.model_info vargfacenet``) at 512-D: 5.20 M parameters and
0.513 GMACs (Conv2d + Linear multiply-accumulates at 112x112), matching the 1022 MFLOPs
(= 2 x 511 M MACs) listed in the authors' README.  Sums use ``backbones.layers.Add`` and SE gating
``backbones.layers.Mul``.
"""
from __future__ import annotations

import torch
from torch import nn

from backbones.layers import Add, Mul

GROUP_CHANNELS = 8
BN_EPS = 2e-5


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


class SeparableConv(nn.Module):
    """3x3 variable-group conv (``factor`` x widening) + BN + PReLU, then 1x1 conv + BN (+ PReLU)."""

    def __init__(self, in_c: int, out_c: int, stride: int = 1, factor: int = 2, act_out: bool = True):
        super().__init__()
        if in_c % GROUP_CHANNELS:
            raise ValueError(f"VarGFaceNet needs channel counts divisible by {GROUP_CHANNELS}, got {in_c}")
        mid = in_c * factor
        self.dw = nn.Conv2d(in_c, mid, 3, stride, 1, groups=in_c // GROUP_CHANNELS, bias=False)
        self.dw_bn = _bn(mid)
        self.dw_act = nn.PReLU(mid)
        self.pw = nn.Conv2d(mid, out_c, 1, bias=False)
        self.pw_bn = _bn(out_c)
        self.pw_act = nn.PReLU(out_c) if act_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dw_act(self.dw_bn(self.dw(x)))
        return self.pw_act(self.pw_bn(self.pw(x)))


class SqueezeExcite(nn.Module):
    """Global average pool -> 1x1 (C/ratio, bias) -> PReLU -> 1x1 (C, bias) -> sigmoid gate on the input."""

    def __init__(self, channels: int, ratio: int = 4):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // ratio, 1)
        self.act = nn.PReLU(channels // ratio)
        self.fc2 = nn.Conv2d(channels // ratio, channels, 1)
        self.gate = nn.Sigmoid()
        self.mul = Mul()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mul(x, self.gate(self.fc2(self.act(self.fc1(self.pool(x))))))


class NormalBlock(nn.Module):
    """sep -> sep -> SE, plus identity (or a separable shortcut when ``stride`` > 1), then PReLU."""

    def __init__(self, in_c: int, out_c: int, stride: int = 1, factor: int = 2):
        super().__init__()
        self.sep1 = SeparableConv(in_c, out_c, stride, factor, act_out=True)
        self.sep2 = SeparableConv(out_c, out_c, 1, factor, act_out=False)
        self.se = SqueezeExcite(out_c)
        project = stride != 1 or in_c != out_c
        self.shortcut = SeparableConv(in_c, out_c, stride, factor, act_out=False) if project else None
        self.add = Add()
        self.act = nn.PReLU(out_c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.se(self.sep2(self.sep1(x)))
        identity = x if self.shortcut is None else self.shortcut(x)
        return self.act(self.add(out, identity))


class DownBlock(nn.Module):
    """Two stride-2 seps summed -> PReLU -> sep, plus a stride-2 separable shortcut, then PReLU."""

    def __init__(self, in_c: int, out_c: int, factor: int = 2):
        super().__init__()
        self.branch1 = SeparableConv(in_c, out_c, 2, factor, act_out=False)
        self.branch2 = SeparableConv(in_c, out_c, 2, factor, act_out=False)
        self.merge = Add()
        self.merge_act = nn.PReLU(out_c)
        self.sep2 = SeparableConv(out_c, out_c, 1, factor, act_out=False)
        self.shortcut = SeparableConv(in_c, out_c, 2, factor, act_out=False)
        self.add = Add()
        self.act = nn.PReLU(out_c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.merge_act(self.merge(self.branch1(x), self.branch2(x)))
        return self.act(self.add(self.sep2(out), self.shortcut(x)))


class EmbeddingConvs(nn.Module):
    """1x1 expand + BN + PReLU, 7x7 variable-group conv (valid) + BN, 1x1 halve + BN + PReLU, flatten."""

    def __init__(self, in_c: int, last_channels: int = 1024):
        super().__init__()
        self.expand = nn.Conv2d(in_c, last_channels, 1, bias=False)
        self.expand_bn = _bn(last_channels)
        self.expand_act = nn.PReLU(last_channels)
        self.dw = nn.Conv2d(last_channels, last_channels, 7, groups=last_channels // GROUP_CHANNELS, bias=False)
        self.dw_bn = _bn(last_channels)
        self.pw = nn.Conv2d(last_channels, last_channels // 2, 1, bias=False)
        self.pw_bn = _bn(last_channels // 2)
        self.pw_act = nn.PReLU(last_channels // 2)
        self.flatten = nn.Flatten()
        self.out_channels = last_channels // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.expand_act(self.expand_bn(self.expand(x)))
        return self.flatten(self.pw_act(self.pw_bn(self.pw(self.dw_bn(self.dw(x))))))


def _stage(in_c: int, out_c: int, units: int) -> nn.Sequential:
    return nn.Sequential(DownBlock(in_c, out_c), *[NormalBlock(out_c, out_c) for _ in range(units - 1)])


class VarGFaceNet(nn.Module):
    """112x112 RGB -> ``num_features``-D embedding (not normalised); ``fc``/``features`` named as in iResNet."""

    def __init__(self, num_features: int = 512, dropout: float = 0.0, multiplier: float = 1.25):
        super().__init__()
        c0, c1, c2, c3 = (int(c * multiplier) for c in (32, 64, 128, 256))
        self.conv1 = nn.Conv2d(3, c0, 3, 1, 1, bias=False)
        self.bn1 = _bn(c0)
        self.prelu = nn.PReLU(c0)
        self.head = NormalBlock(c0, c0, stride=2, factor=1)
        self.stage2 = _stage(c0, c1, 3)
        self.stage3 = _stage(c1, c2, 7)
        self.stage4 = _stage(c2, c3, 4)
        self.embed = EmbeddingConvs(c3)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(self.embed.out_channels, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=BN_EPS)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.prelu(self.bn1(self.conv1(x))))
        x = self.stage4(self.stage3(self.stage2(x)))
        return self.features(self.fc(self.dropout(self.embed(x))))


def vargfacenet(num_features: int = 512, dropout: float = 0.0, multiplier: float = 1.25) -> VarGFaceNet:
    """``vargfacenet``: the LFR2019 configuration (multiplier 1.25)."""
    return VarGFaceNet(num_features, dropout, multiplier)
