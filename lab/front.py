"""The size–fidelity front of a teacher: packed-file size against agreement with the float teacher.

    python -m lab.front config/demo_mbf_w8a8.py [--uniform 8 6 5 4] [--budgets 0.25 0.20 0.16 0.13 0.10]
                        [--seeds 0 1 2] [--out DIR]

Each point is a calibration-only student of the config's recipe (no distillation): uniform weight widths, or
the widths ``size_budget`` allocates from the teacher's measured sensitivity, activations at the config's
``act_bits``.  Each is written as a packed file (its size ÷ the fp32 checkpoint is the x axis) and scored on
the real photos and, when ``../shared`` is beside the checkout, the johns faces (mean cosine to the teacher).
Writes ``front.json`` (one point per width or budget: mean over the seeds and spread) and ``front.png``.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

import quant
from deploy.packed import load_packed, save_packed
from distill.bit_allocation import allocate_layer_bits
from distill.settings import TrainSettings
from lab.demo_report import HOLDOUT_SEED, _ptq_baseline, score_model, teacher_face_sets
from lab.realfaces import JOHNS_DIR
from utils.checkpoint import read_checkpoint
from utils.config import Config, load_config


def point(cfg: Config, teacher: torch.nn.Module, kwargs: dict[str, Any], sets: list, work: Path) -> dict[str, Any]:
    """One calibrated student of ``cfg``, packed and reloaded (what ships), scored on the face sets."""
    student = _ptq_baseline(teacher, cfg, torch.device("cpu")).eval()
    meta = {"network": cfg.network, "network_kwargs": dict(kwargs), "quant": quant.QuantConfig.from_config(cfg).to_dict(),
            "input_spec": teacher.input_spec.to_dict()}
    packed = save_packed(work / "student.qfpack", student, meta)
    shipped, _ = load_packed(packed)
    scores = score_model(shipped.eval(), sets, cfg, torch.device("cpu"), "front")
    out = {"size_ratio": packed.stat().st_size / Path(cfg.teacher).stat().st_size,
           "real_cos_mean": scores["real"]["cosine_mean"], "real_cos_min": scores["real"]["cosine_min"]}
    if "johns" in scores:
        out["johns_cos_mean"] = scores["johns"]["cosine_mean"]
    return out


def combine(runs: list[dict[str, Any]], label: dict[str, Any], seeds: list[int]) -> dict[str, Any]:
    """Mean over the seeds, with the spread (max - min) of each number."""
    keys = runs[0].keys()
    return {**label, **{k: float(np.mean([r[k] for r in runs])) for k in keys}, "seeds": seeds,
            "spread": {k: float(np.ptp([r[k] for r in runs])) for k in keys}}


def plot(points: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for kind, marker in (("weight_bits", "o"), ("budget", "s")):
        series = sorted((p for p in points if kind in p), key=lambda p: p["size_ratio"])
        if series:
            ax.errorbar([p["size_ratio"] for p in series], [p["real_cos_mean"] for p in series],
                        yerr=[p["spread"]["real_cos_mean"] / 2 for p in series], marker=marker,
                        label="uniform widths" if kind == "weight_bits" else "allocated (size_budget)")
    ax.set_xlabel("packed file / fp32 checkpoint")
    ax.set_ylabel("mean cosine to the teacher (real photos)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="a demo config (its teacher and recipe)")
    parser.add_argument("--uniform", type=int, nargs="*", default=[8, 6, 5, 4])
    parser.add_argument("--budgets", type=float, nargs="*", default=[0.25, 0.20, 0.16, 0.13, 0.10])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", default="work_dirs/front")
    args = parser.parse_args(argv)
    base = load_config(args.config)
    labels = [{"weight_bits": w} for w in args.uniform] + [{"budget": b} for b in args.budgets]
    teacher, sets = teacher_face_sets(base, torch.device("cpu"), (HOLDOUT_SEED, 1), JOHNS_DIR)
    sets = [s for s in sets if s.name in ("real", "johns")]
    kwargs = read_checkpoint(base.teacher)[1].get("network_kwargs", base.network_kwargs)  # the student's own
    points = []
    with tempfile.TemporaryDirectory() as work:
        for label in labels:
            runs = []
            for seed in args.seeds:
                overrides = [f"seed={seed}", f"act_bits={base.act_bits}"]
                overrides.append(f"weight_bits={label['weight_bits']}" if "weight_bits" in label
                                 else f"size_budget={label['budget']}")
                cfg = load_config(args.config, overrides)
                if cfg.size_budget:
                    cfg.layer_bits = allocate_layer_bits(TrainSettings.from_config(cfg), teacher, torch.device("cpu"))
                runs.append(point(cfg, teacher, kwargs, sets, Path(work)))
            points.append(combine(runs, {"teacher": Path(base.teacher).stem, **label, "act_bits": base.act_bits},
                                  args.seeds))
            print(json.dumps(points[-1]), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "front.json").write_text(json.dumps(points, indent=1) + "\n")
    plot(points, out / "front.png", f"{Path(base.teacher).stem}, A{base.act_bits}, calibration only")
    print(f"wrote {out / 'front.json'} and front.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
