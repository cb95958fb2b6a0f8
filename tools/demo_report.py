"""How well do the distilled students still recognise real faces?  The demo's evaluation.

    python -m tools.demo_report config/demo_mbf_w8a8.py [config/demo_mbf_w4a4.py ...] [--out DIR]

For each config (after ``train_quantization.py`` has run it) this compares three models on the real
photos of ``utils.realfaces`` (evaluation only, never trained on) and on held-out generated faces
(seed ``demo_holdout_seed``, never trained on): the float teacher, the post-training-quantization
baseline (the same quantizer, calibrated on the same generated faces, no distillation) and the
distilled student (``<output>/student_final.pt``).  It prints one table and writes
``report.md``, ``report.json`` and ``report.png`` into ``--out`` (default: the first config's output).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

import quant
from data import GeneratedFaces, build_train_batches
from eval.agreement import compare_models
from eval.embed import embed_batches
from utils.assets import ensure_asset
from utils.checkpoint import CheckpointError, load_float_model
from utils.config import Config, ConfigError, load_config
from utils.distributed import resolve_device
from utils.realfaces import aligned_real_faces


def _embed(model: torch.nn.Module, images: np.ndarray, cfg: Config, device: torch.device, desc: str) -> np.ndarray:
    """Embeddings of uint8 HxWx3 RGB images without the flip test: the network's own output is compared."""
    return embed_batches(model, images, device, cfg.eval_batch_size, flip=False, mean=cfg.input_mean,
                         std=cfg.input_std, desc=desc)


def _holdout_faces(cfg: Config, device: torch.device) -> np.ndarray:
    faces = GeneratedFaces(cfg.generator_weights, cfg.demo_holdout_count, seed=cfg.demo_holdout_seed,
                           size=cfg.image_size, device=device)
    return faces.generate(np.arange(cfg.demo_holdout_count)).permute(0, 2, 3, 1).cpu().numpy()


def _ptq_baseline(teacher: torch.nn.Module, cfg: Config, device: torch.device) -> torch.nn.Module:
    """The student's quantizer on the teacher, calibrated on the faces the run observed first; no training."""
    batches = build_train_batches(cfg, device).epoch(0)
    return quant.post_training_quantize(teacher, quant.QuantConfig.from_config(cfg), batches,
                                        max_batches=cfg.observer_steps).to(device)


def _bits_label(cfg: Config) -> str:
    label = f"W{cfg.weight_bits}A{cfg.act_bits}"
    return label + " mixed" if cfg.layer_bits else label


def evaluate_config(cfg: Config, device: torch.device, real: tuple[np.ndarray, list[str]],
                    cache: dict[str, Any]) -> dict[str, Any]:
    """Teacher, calibration-only baseline and distilled student of one demo run, on real and held-out faces."""
    student_path = Path(cfg.output) / "student_final.pt"
    if not student_path.is_file():
        raise FileNotFoundError(f"{student_path} not found: run `python train_quantization.py {cfg.config_file}` "
                                "first")
    images, identities = real
    if cfg.teacher not in cache:
        teacher = load_float_model(cfg.teacher).to(device).eval()
        holdout = _holdout_faces(cfg, device)
        cache[cfg.teacher] = (teacher, holdout, _embed(teacher, images, cfg, device, "teacher real"),
                              _embed(teacher, holdout, cfg, device, "teacher held-out"))
    teacher, holdout, teacher_real, teacher_holdout = cache[cfg.teacher]
    result: dict[str, Any] = {"config": cfg.config_file, "bits": _bits_label(cfg),
                              "teacher_mb": quant.size_report(teacher)["fp32_mb"]}
    for kind, model in (("ptq", _ptq_baseline(teacher, cfg, device)),
                        ("distilled", quant.load_quantized(student_path, map_location=device))):
        result[kind] = {
            "size_mb": quant.size_report(model)["total_mb"],
            "real": compare_models(teacher_real, _embed(model, images, cfg, device, f"{kind} real"), identities),
            "holdout": compare_models(teacher_holdout, _embed(model, holdout, cfg, device, f"{kind} held-out")),
        }
    result["teacher_real_identity"] = result["distilled"]["real"]["teacher_identity"]
    return result


def _row(model: str, bits: str, size: float, real: dict[str, Any] | None, holdout: dict[str, Any] | None,
         identity: dict[str, Any]) -> str:
    def f(d: dict[str, Any] | None, key: str) -> str:
        return "1.0000" if d is None else f"{d[key]:.4f}"
    return (f"| {model} | {bits} | {size:.2f} | {f(real, 'cosine_mean')} | {f(real, 'cosine_min')} | "
            f"{f(real, 'pair_score_correlation')} | {identity['genuine_mean']:.3f} | {identity['impostor_mean']:.3f} | "
            f"{f(holdout, 'cosine_mean')} | {f(holdout, 'cosine_min')} |")


def markdown_table(results: list[dict[str, Any]]) -> str:
    """One row for the teacher, then calibration-only and distilled rows per bit width."""
    lines = ["| model | bits | size MB | real cos mean | real cos min | pair-score r | genuine | impostor | "
             "held-out cos mean | held-out cos min |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    first = results[0]
    lines.append(_row("teacher (float)", "FP32", first["teacher_mb"], None, None, first["teacher_real_identity"]))
    for r in results:
        for kind, label in (("ptq", "calibration only"), ("distilled", "distilled (QuantFace)")):
            lines.append(_row(label, r["bits"], r[kind]["size_mb"], r[kind]["real"], r[kind]["holdout"],
                              r[kind]["real"]["student_identity"]))
    return "\n".join(lines) + "\n"


def bar_chart(results: list[dict[str, Any]], path: Path) -> Path:
    """Real-photo student<->teacher cosine (mean bar, min marker) per bit width: baseline vs distilled."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(len(results))
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(results), 3.6))
    for offset, kind, label in ((-0.2, "ptq", "calibration only"), (0.2, "distilled", "distilled (QuantFace)")):
        means = [r[kind]["real"]["cosine_mean"] for r in results]
        mins = [r[kind]["real"]["cosine_min"] for r in results]
        ax.bar(x + offset, means, width=0.38, label=f"{label}: mean")
        ax.scatter(x + offset, mins, marker="_", s=300, color="black", zorder=3)
    ax.scatter([], [], marker="_", color="black", label="min over faces")
    ax.set_xticks(x, [r["bits"] for r in results])
    ax.set_ylabel("cosine to float teacher (real photos)")
    lowest = min(r[kind]["real"]["cosine_min"] for r in results for kind in ("ptq", "distilled"))
    ax.set_ylim(max(-1.0, lowest - 0.02), 1.0)  # zoomed: at 8 bits the differences are in the third decimal
    ax.axhline(1.0, color="grey", linewidth=0.5)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="+", help="demo config files whose runs have finished")
    parser.add_argument("--out", default="", help="report folder (default: the first config's output)")
    args = parser.parse_args(argv)
    try:
        configs = [load_config(path) for path in args.configs]
        device = resolve_device(configs[0].device)
        ensure_asset("realfaces", configs[0].assets_dir)
        images, identities, _ = aligned_real_faces(configs[0].assets_dir)
        cache: dict[str, Any] = {}
        results = [evaluate_config(cfg, device, (images, identities), cache) for cfg in configs]
    except (ConfigError, CheckpointError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    out = Path(args.out or configs[0].output)
    out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(results)
    header = (f"Student vs float teacher on {len(images)} real photos ({len(set(identities))} identities) and "
              f"{configs[0].demo_holdout_count} held-out generated faces\n\n")
    (out / "report.md").write_text(header + table)
    (out / "report.json").write_text(json.dumps(results, indent=2))
    bar_chart(results, out / "report.png")
    print(header + table)
    print(f"wrote {out / 'report.md'}, {out / 'report.json'}, {out / 'report.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
