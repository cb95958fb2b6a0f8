"""Calibration batches as the whole-model passes take them: input tensors, or ``(input, label, ...)``
tuples as a labelled DataLoader yields them."""
from __future__ import annotations

from typing import Any

import torch


def batch_input(batch: Any) -> torch.Tensor:
    """The input tensor of one calibration batch."""
    return batch[0] if isinstance(batch, (tuple, list)) else batch
