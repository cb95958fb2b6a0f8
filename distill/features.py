"""Feature distillation: the student also reproduces the teacher's intermediate outputs, layer by layer.

Matching only the final embedding leaves a quantized student free to reach it by any route that works
on the training faces; matching the outputs of chosen modules too (a quantized student keeps its
teacher's module names) pins every stage to the teacher's function, which carries over to faces unlike
the synthetic ones and gives every layer a direct training signal (as block reconstruction does in
BRECQ, Li et al. 2021).  The loss of one layer is its relative squared error
``mean((s - t)^2) / mean(t^2)``; ``FeatureDistillation.loss()`` averages it over the layers.
"""
from __future__ import annotations

import fnmatch
from typing import Sequence

import torch
from torch import nn


def match_modules(model: nn.Module, patterns: Sequence[str]) -> list[str]:
    """Names of the modules of ``model`` matched by any fnmatch pattern (``*`` also crosses dots), in model order.

    A pattern that matches nothing is an error naming a few valid module names.
    """
    names = [name for name, _ in model.named_modules() if name]
    chosen = set()
    for pattern in patterns:
        hits = [name for name in names if fnmatch.fnmatchcase(name, pattern)]
        if not hits:
            raise ValueError(f"feature_layers pattern {pattern!r} matches no module; names look like "
                             f"{', '.join(names[:4])}, ..., {names[-1]} ({len(names)} modules)")
        chosen.update(hits)
    return [name for name in names if name in chosen]


class FeatureDistillation:
    """Records the outputs of the same-named modules of teacher and student during their forward passes.

    Run the teacher, then the student, on the same batch; ``loss()`` then compares what was recorded
    and clears it.  ``close()`` removes the hooks.
    """

    def __init__(self, teacher: nn.Module, student: nn.Module, patterns: Sequence[str]) -> None:
        self.names = match_modules(teacher, patterns)
        student_modules = dict(student.named_modules())
        missing = [name for name in self.names if name not in student_modules]
        if missing:
            raise ValueError(f"feature_layers: the student has no module {missing[0]!r}; feature distillation "
                             "needs a student of the teacher's architecture")
        self.teacher_out: dict[str, torch.Tensor] = {}
        self.student_out: dict[str, torch.Tensor] = {}
        self._handles = []
        teacher_modules = dict(teacher.named_modules())
        for name in self.names:
            self._handles.append(teacher_modules[name].register_forward_hook(self._recorder(self.teacher_out, name)))
            self._handles.append(student_modules[name].register_forward_hook(self._recorder(self.student_out, name)))

    @staticmethod
    def _recorder(store: dict[str, torch.Tensor], name: str):
        def record(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            store[name] = output
        return record

    def loss(self) -> torch.Tensor:
        """Mean over the layers of the relative squared error (float32); clears the recorded outputs."""
        missing = [name for name in self.names if name not in self.teacher_out or name not in self.student_out]
        if missing:
            raise RuntimeError(f"feature_layers: module {missing[0]!r} did not run in both teacher and student")
        terms = []
        for name in self.names:
            s, t = self.student_out[name].float(), self.teacher_out[name].detach().float()
            if s.shape != t.shape:
                raise ValueError(f"feature_layers: {name!r} gives {tuple(s.shape)} in the student but "
                                 f"{tuple(t.shape)} in the teacher")
            terms.append((s - t).pow(2).mean() / t.pow(2).mean().clamp_min(1e-12))
        self.teacher_out.clear()
        self.student_out.clear()
        return torch.stack(terms).mean()

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
