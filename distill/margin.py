"""Margin softmax heads over the identities of labelled data (QuantFace's real-data setting, VarGFaceNet's
training): ArcFace (Deng et al. 2019, additive angular margin) and CosFace (Wang et al. 2018, additive
cosine margin).

``logits = s * cos(theta_j)`` for every class ``j``, with the target class's ``cos(theta_y)`` replaced by
``cos(theta_y + m)`` (ArcFace; where ``theta_y + m`` would pass pi, insightface's fallback
``cos(theta_y) - m sin(pi - m)`` keeps it monotonic) or ``cos(theta_y) - m`` (CosFace); then cross entropy.
The class centres are one ``[classes, D]`` weight, replicated on every rank (DDP averages its gradient
like any other parameter) and saved in the training checkpoints.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

HEADS = ("arcface", "cosface")


def check_head(kind: str, num_classes: int) -> None:
    """ValueError naming the field when ``kind`` is no margin head or there are too few identities."""
    if kind not in HEADS:
        raise ValueError(f"margin_head={kind!r} is not one of {', '.join(HEADS)}")
    if num_classes < 2:
        raise ValueError(f"margin_head={kind!r} needs num_classes >= 2 (the identities; got {num_classes})")


class MarginHead(nn.Module):
    """``head(embedding [B, D], labels [B]) -> cross-entropy loss`` of the margin logits."""

    def __init__(self, embedding_size: int, num_classes: int, kind: str = "arcface", s: float = 64.0,
                 m: float = 0.5) -> None:
        super().__init__()
        check_head(kind, num_classes)
        self.kind, self.s, self.m, self.num_classes = kind, float(s), float(m), num_classes
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_size).normal_(0.0, 0.01))

    def logits(self, embedding: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``[B, classes]`` scaled cosines with the margin on each sample's own class."""
        cos = F.linear(F.normalize(embedding.float(), dim=1), F.normalize(self.weight.float(), dim=1)).clamp(-1, 1)
        target = cos.gather(1, labels[:, None])
        if self.kind == "arcface":
            sine = (1.0 - target * target).clamp_min(0.0).sqrt()
            shifted = target * math.cos(self.m) - sine * math.sin(self.m)
            margined = torch.where(target > math.cos(math.pi - self.m), shifted,
                                   target - math.sin(math.pi - self.m) * self.m)
        else:
            margined = target - self.m
        return cos.scatter(1, labels[:, None], margined) * self.s

    def forward(self, embedding: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        bad = labels[(labels < 0) | (labels >= self.num_classes)]
        if bad.numel():
            raise ValueError(f"class labels must lie in 0..{self.num_classes - 1}, the batch has {bad[:5].tolist()}; "
                             "set num_classes to the data's number of identities (and use labelled data: "
                             "data_source='recordio')")
        return F.cross_entropy(self.logits(embedding, labels), labels)
