"""dlib's ResNet-29 face recognition network (``dlib_face_recognition_resnet_model_v1``), layer for layer.

As in dlib's ``dnn_face_recognition_ex.cpp``: a 150x150 RGB chip, 7x7/2 conv to 32 channels + ReLU,
3x3/2 max pool, basic residual blocks (3x3 conv, ReLU, 3x3 conv, sum, ReLU): 3 at 32 channels, 4 at 64,
3 at 128, 3 at 256 (the first of each down-samples), one more down-sampling block at 256; global average
pool and a 256 -> 128 linear layer without bias.  dlib's affine layers (its frozen BatchNorm) are folded
into the convolutions by the importer (``backbones.dlib_dat``), so every conv has a bias and there is no
BatchNorm.  dlib quirks kept exactly: stride-2 convs and pools pad nothing; a down-sampling shortcut is
2x2 average pooling with the new channels zero; when the two branches of a sum differ in size, the
smaller one is zero-filled at the bottom/right.  The output is not normalised (dlib: same person when the
Euclidean distance is below 0.6).
"""
from __future__ import annotations

import torch
from torch import nn

from backbones.layers import Add, ChannelPad
from backbones.spec import InputSpec

# dlib's input_rgb_image_sized<150>: (pixel - mean) / 256 per RGB channel, on dlib's 150x150 face chip
INPUT_SPEC = InputSpec(size=150, mean=(122.782, 117.001, 104.298), std=(256.0, 256.0, 256.0),
                       alignment="dlib_150")
STAGES = ((32, 3), (64, 4), (128, 3), (256, 3), (256, 1))  # (channels, blocks); all but the first down-sample


class DlibBlock(nn.Module):
    """3x3 conv (stride 1 or 2) -> ReLU -> 3x3 conv, plus the shortcut, then ReLU."""

    def __init__(self, cin: int, cout: int, side: int, down: bool) -> None:
        super().__init__()
        stride = 2 if down else 1
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 0 if down else 1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        conv_side = (side - 3) // 2 + 1 if down else side
        short_side = side // 2 if down else side
        self.shortcut = nn.Sequential(nn.AvgPool2d(2, 2), ChannelPad(cout - cin)) if down else nn.Identity()
        grow = short_side - conv_side  # dlib's add zero-fills the smaller branch at the bottom/right
        self.pad = nn.ZeroPad2d((0, grow, 0, grow)) if grow > 0 else nn.Identity()
        if grow < 0:
            raise ValueError(f"input side {side}: the shortcut would be smaller than the conv branch")
        self.add = Add()
        self.relu2 = nn.ReLU()
        self.out_side = max(conv_side, short_side)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pad(self.conv2(self.relu1(self.conv1(x))))
        return self.relu2(self.add(out, self.shortcut(x)))


class DlibResNet(nn.Module):
    """150x150 RGB chip -> ``num_features``-D embedding (dlib: 128, not normalised)."""

    def __init__(self, num_features: int = 128, input_size: int = 150) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 7, 2, 0)
        self.relu1 = nn.ReLU()
        self.pool = nn.MaxPool2d(3, 2)
        side = ((input_size - 7) // 2 + 1 - 3) // 2 + 1
        blocks, cin = [], 32
        for index, (cout, count) in enumerate(STAGES):
            for b in range(count):
                block = DlibBlock(cin, cout, side, down=index > 0 and b == 0)
                blocks.append(block)
                cin, side = cout, block.out_side
        self.blocks = nn.Sequential(*blocks)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(cin, num_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.pool(self.relu1(self.conv1(x))))
        return self.fc(self.flatten(self.avgpool(x)))


def dlib_resnet(num_features: int = 128, input_size: int = 150) -> DlibResNet:
    return DlibResNet(num_features, input_size)
