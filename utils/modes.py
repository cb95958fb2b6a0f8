"""Running a module in eval mode for a while, and getting its own mode back afterwards."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from torch import nn


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``with eval_mode(model):`` runs ``model`` in eval mode; on exit (errors included) it is back in the
    train/eval mode it had, so callers such as verification inside a training loop change nothing."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
