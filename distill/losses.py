"""Embedding distillation losses: the student learns to reproduce the float teacher's face embedding.

* ``mse`` (QuantFace): mean squared error between the L2-normalised embeddings, averaged over batch
  and dimensions, i.e. ``nn.MSELoss()(normalize(s), normalize(t))`` = ``2 (1 - cos) / D`` per sample.
* ``cosine``: ``1 - cos(s, t)`` averaged over the batch (independent of the embedding size D).
* ``angular``: the angular distillation loss of ShrinkTeaNet (Duong et al. 2019) that VarGFaceNet
  (Yan et al. 2019) distils with: ``(1 - cos(s, t))^2`` averaged over the batch.  It weights badly
  aligned samples more and vanishes faster near agreement.  (VarGFaceNet trains with the equivalent
  ``||s/|s| - t/|t|||^2 = 2 (1 - cos)``, which is ``cosine`` up to a factor of 2.)

Only directions are distilled: face verification compares embeddings by cosine similarity.  When the
student's embedding size differs from the teacher's, a learned linear projection (no bias) maps the
student embedding into the teacher's space; it trains with the student and is saved in the training
checkpoint, but is not part of the deployed student.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distill.margin import MarginHead

LOSSES = ("mse", "cosine", "angular")


def check_loss(kind: str) -> None:
    """ValueError naming the field when ``kind`` is not a distillation loss."""
    if kind not in LOSSES:
        raise ValueError(f"loss={kind!r} is not one of {', '.join(LOSSES)}")


class DistillationLoss(nn.Module):
    """``loss(student_emb [B, Ds], teacher_emb [B, Dt], labels [B]) -> scalar`` in float32 (call it outside
    autocast); with a ``head`` (``distill.margin``), ``head_weight`` times its margin softmax loss on the
    student's own embedding is added (``labels`` needed)."""

    def __init__(self, kind: str = "mse", student_dim: int = 512, teacher_dim: int = 512,
                 head: MarginHead | None = None, head_weight: float = 1.0):
        super().__init__()
        check_loss(kind)
        self.kind, self.head, self.head_weight = kind, head, head_weight
        self.projection = nn.Linear(student_dim, teacher_dim, bias=False) if student_dim != teacher_dim else None

    @property
    def learns(self) -> bool:
        """True when the loss has parameters of its own (a projection or a margin head)."""
        return self.projection is not None or self.head is not None

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor | None = None
                ) -> torch.Tensor:
        margin = 0.0
        if self.head is not None:
            if labels is None:
                raise ValueError("the margin head needs the batch's class labels")
            margin = self.head_weight * self.head(student, labels)
        return self._distillation(student, teacher) + margin

    def _distillation(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        student = student.float()
        if self.projection is not None:
            student = self.projection(student)
        if student.shape != teacher.shape:
            raise ValueError(f"student embeddings {tuple(student.shape)} and teacher embeddings "
                             f"{tuple(teacher.shape)} differ in shape")
        s = F.normalize(student, dim=1)
        t = F.normalize(teacher.float(), dim=1)
        if self.kind == "mse":
            return F.mse_loss(s, t)
        distance = 1.0 - (s * t).sum(dim=1)
        return distance.mean() if self.kind == "cosine" else distance.pow(2).mean()
