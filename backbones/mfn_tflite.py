"""The pretrained 192-D MobileFaceNet shipped as a TFLite graph, rebuilt layer for layer in PyTorch.

Layout as in the graph (``backbones/tflite.py`` reads the weights and checks every layer against it):
conv 3x3/2 + PReLU, depthwise 3x3 + PReLU, linear 1x1, five bottleneck stages (expand 1x1 + PReLU,
depthwise 3x3 + PReLU, linear project 1x1; residual sum when stride 1), conv 1x1 to 512 + PReLU,
global depthwise 7x7 (linear), linear 1x1 512 -> 512, linear 1x1 512 -> 192.  The graph has its
BatchNorms folded into the convolutions, so every conv has a bias and there is no BatchNorm.  There is
no L2 normalisation at the end of the graph; the embedding is returned unnormalised like every backbone.

TensorFlow "SAME" padding on a stride-2 3x3 conv with an even input pads 0 before and 1 after (not 1
and 1), so stride-2 layers pad explicitly; the input side must be even (112).
Input: 112x112 RGB normalised as (x - 127.5) / 128.
"""
from __future__ import annotations

import torch
from torch import nn

from backbones.layers import Add
from backbones.spec import InputSpec

INPUT_SPEC = InputSpec(size=112, mean=(127.5, 127.5, 127.5), std=(128.0, 128.0, 128.0))

# (expansion, output channels, blocks, stride of the first block) as in the graph
STAGES = ((2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1))


class ConvAct(nn.Module):
    """Conv with bias (BatchNorm folded in), TF-SAME padding, then PReLU or nothing (a linear layer)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 1, stride: int = 1, depthwise: bool = False,
                 prelu: bool = True, same: bool = True) -> None:
        super().__init__()
        self.same = same
        if stride == 1 or kernel == 1 or not same:
            self.pad, padding = nn.Identity(), (kernel // 2 if same else 0)
        elif kernel == 3 and stride == 2:
            self.pad, padding = nn.ZeroPad2d((0, 1, 0, 1)), 0
        else:
            raise ValueError(f"TF-SAME padding for kernel {kernel} stride {stride} is not implemented")
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride, padding, groups=in_ch if depthwise else 1, bias=True)
        self.act = nn.PReLU(out_ch) if prelu else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(self.pad(x)))


class Bottleneck(nn.Module):
    """Inverted residual: expand 1x1 + PReLU, depthwise 3x3 + PReLU, linear 1x1; sum when shapes allow."""

    def __init__(self, in_ch: int, out_ch: int, expansion: int, stride: int) -> None:
        super().__init__()
        hidden = in_ch * expansion
        self.expand = ConvAct(in_ch, hidden)
        self.depthwise = ConvAct(hidden, hidden, 3, stride, depthwise=True)
        self.project = ConvAct(hidden, out_ch, prelu=False)
        self.residual = stride == 1 and in_ch == out_ch
        if self.residual:
            self.add = Add()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        return self.add(out, x) if self.residual else out


class MobileFaceNetTFLite(nn.Module):
    """MobileFaceNet as in the pretrained TFLite graph; returns the (unnormalised) embedding [B, num_features]."""

    def __init__(self, num_features: int = 192) -> None:
        super().__init__()
        self.conv1 = ConvAct(3, 64, 3, 2)
        self.conv2_dw = ConvAct(64, 64, 3, depthwise=True)
        self.conv2_pw = ConvAct(64, 64, prelu=False)
        stages, channels = [], 64
        for expansion, out_ch, blocks, stride in STAGES:
            layers = []
            for index in range(blocks):
                layers.append(Bottleneck(channels, out_ch, expansion, stride if index == 0 else 1))
                channels = out_ch
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.conv_last = ConvAct(channels, 512)
        self.gdc = ConvAct(512, 512, 7, depthwise=True, prelu=False, same=False)
        self.linear = ConvAct(512, 512, prelu=False)
        self.features = ConvAct(512, num_features, prelu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2_pw(self.conv2_dw(self.conv1(x)))
        x = self.conv_last(self.stages(x))
        return self.features(self.linear(self.gdc(x))).flatten(1)


def mfn_tflite(num_features: int = 192) -> MobileFaceNetTFLite:
    """The architecture of the pretrained TFLite MobileFaceNet (weights: ``backbones.tflite``)."""
    return MobileFaceNetTFLite(num_features=num_features)
