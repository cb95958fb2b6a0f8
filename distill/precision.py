"""Mixed precision that stops before the embedding: the student's last Linear and what follows it run in fp32.

arcface_torch runs its ``fc`` in fp32 under AMP (``self.fc(x.float() if self.fp16 else x)``): the
25088x512 product sums 25,088 terms, and the final BatchNorm's running statistics and the observers'
running min/max of those outputs would keep a single fp16 overflow for the rest of the run.  Backbones
know nothing of training, so instead of an ``fp16`` flag in each one, two hooks do it from outside:
before the model's last ``nn.Linear`` autocast is switched off and its input cast to float32; after the
model's forward (or its exception) autocast is switched back on.  The state_dict is untouched.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle


class _Fp32Tail:
    """The autocast-off region from the last Linear's input to the end of the model's forward."""

    def __init__(self) -> None:
        self.open: list[torch.autocast] = []

    def enter(self, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        device_type = next((a.device.type for a in args if isinstance(a, torch.Tensor)), "cpu")
        if not torch.is_autocast_enabled(device_type):
            return None
        region = torch.autocast(device_type, enabled=False)
        region.__enter__()
        self.open.append(region)
        return tuple(a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)

    def leave(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        while self.open:
            self.open.pop().__exit__(None, None, None)


def keep_tail_fp32(model: nn.Module) -> list[RemovableHandle]:
    """Make ``model``'s last ``nn.Linear`` (a quantized one too) and the layers after it run in float32 under
    autocast; returns the hooks' handles (``handle.remove()`` undoes it).  No Linear: nothing changes."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        return []
    tail = _Fp32Tail()
    return [linears[-1].register_forward_pre_hook(tail.enter),
            model.register_forward_hook(tail.leave, always_call=True)]
