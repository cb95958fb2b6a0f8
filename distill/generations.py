"""Recursive knowledge distillation (VarGFaceNet, Yan et al. 2019): generation g+1 is the student of
generation g, distilled again from the same teacher.

``generations=N`` (N > 1) trains ``<output>/gen1`` ... ``<output>/genN``; each is an ordinary run (its own
config, checkpoints, ``resume=true``), generation 1 quantizes the teacher as usual, the others start from
the previous ``student_final.pt`` (``student_from``).  ``<output>/summary.json`` lists every generation's
summary, so they compare side by side.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from distill.loop import FINAL_STUDENT, train
from utils.config import Config
from utils.distributed import DistEnv, barrier


def train_generations(cfg: Config, env: DistEnv) -> tuple[nn.Module, dict[str, Any]]:
    """Run (or resume) every generation; return the last student and the combined summary (rank 0)."""
    if cfg.generations == 1:
        return train(cfg, env)
    summaries, previous, student = [], cfg.student_from, None
    for generation in range(1, cfg.generations + 1):
        output = Path(cfg.output) / f"gen{generation}"
        if env.is_main:
            print(f"\n== generation {generation} of {cfg.generations}: {output}"
                  + (f", from {previous}" if previous else ""), flush=True)
        student, summary = train(Config({**cfg, "output": str(output), "student_from": previous,
                                         "generations": 1}), env)
        summaries.append({"generation": generation, **summary})
        previous = str(output / FINAL_STUDENT)
        barrier()  # rank 0 has written the student the next generation starts from
    combined = {"generations": summaries}
    if env.is_main:
        (Path(cfg.output) / "summary.json").write_text(json.dumps(combined, indent=2) + "\n")
        print("\ngenerations:\n" + "\n".join(
            f"  gen{s['generation']}: final loss {s['final_loss']:.6g}, eval {json.dumps(s['eval'])}"
            for s in summaries), flush=True)
    return student, combined
