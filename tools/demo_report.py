"""How well do the distilled students still recognise real faces?  The demo's evaluation.

    python -m tools.demo_report config/demo_mbf_w8a8.py [config/demo_mbf_w4a4.py ...] [--out DIR]

For each config (after ``train_quantization.py`` has run it) this compares three models on the real
photos of ``data.realfaces`` (evaluation only, never trained on) and on held-out generated faces
(``--holdout-seed``, never trained on): the float teacher, the post-training-quantization baseline
(``quant.post_training_quantize`` on the batches the run calibrated on, no distillation: the very
student training started from) and the distilled student (``<output>/student_final.pt``); then the
files a user would ship, run by onnxruntime: the distilled student exported to int8 ONNX
(``<output>/student_int8.onnx``) and, for comparison, onnxruntime's own ``quantize_static`` of the fp32 ONNX
teacher (the naive way), with their file sizes and images/s against the fp32 ONNX teacher.  It prints one table and writes
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
from assets import ensure_asset
from backbones import input_spec, load_float_model
from backbones.spec import InputSpec
from data import GeneratedFaces, build_train_batches
from data.realfaces import aligned_real_faces
from eval.agreement import compare_models
from eval.embed import embed_batches
from deploy import OnnxModel, export_onnx
from deploy.baseline import quantize_static_baseline
from deploy.timing import images_per_s
from eval.report import markdown_table
from utils.checkpoint import CheckpointError
from utils.config import Config, ConfigError, load_config
from utils.distributed import resolve_device

BASELINE_FACES = 64      # calibration faces for onnxruntime's quantize_static (the run's first batches)
SPEED_BATCH, SPEED_THREADS = 32, 2

HOLDOUT_SEED = 1000003   # generator seed of the held-out faces (training uses the config's seed)
HOLDOUT_COUNT = 256


def _embed(model: torch.nn.Module, images: np.ndarray, cfg: Config, device: torch.device, desc: str) -> np.ndarray:
    """Embeddings of uint8 HxWx3 RGB images without the flip test: the network's own output is compared."""
    return embed_batches(model, images, device, cfg.eval_batch_size, flip=False, desc=desc)


def _holdout_faces(cfg: Config, spec: InputSpec, device: torch.device, seed: int, count: int) -> np.ndarray:
    faces = GeneratedFaces(cfg.generator_weights, count, seed=seed, size=spec.size, device=device,
                           alignment=spec.alignment)
    return faces.generate(np.arange(count)).permute(0, 2, 3, 1).cpu().numpy()


def _ptq_baseline(teacher: torch.nn.Module, cfg: Config, device: torch.device) -> torch.nn.Module:
    """The student's quantizer on the teacher, calibrated on the batches the run calibrated on; no training.
    Seeded, because percentile ranges sample the activations they estimate from."""
    torch.manual_seed(cfg.seed)
    batches = build_train_batches(cfg, teacher.input_spec, device).calibration()
    return quant.post_training_quantize(teacher, quant.QuantConfig.from_config(cfg), batches,
                                        cfg.calibration_batches).student.to(device)


def evaluate_config(cfg: Config, device: torch.device, real: tuple[np.ndarray, list[str]],
                    cache: dict[Any, Any], holdout: tuple[int, int]) -> dict[str, Any]:
    """Teacher, calibration-only baseline, distilled student and the shipped ONNX files of one demo run,
    on real and held-out faces; the ONNX files also timed."""
    student_path = Path(cfg.output) / "student_final.pt"
    if not student_path.is_file():
        raise FileNotFoundError(f"{student_path} not found: run `python train_quantization.py {cfg.config_file}` "
                                "first")
    images, identities = real
    if cfg.teacher not in cache:
        teacher = load_float_model(cfg.teacher).to(device).eval()
        faces = _holdout_faces(cfg, teacher.input_spec, device, *holdout)
        cache[cfg.teacher] = (teacher, faces, _embed(teacher, images, cfg, device, "teacher real"),
                              _embed(teacher, faces, cfg, device, "teacher held-out"))
    teacher, faces, teacher_real, teacher_holdout = cache[cfg.teacher]

    def scores(kind: str, model: torch.nn.Module, size_mb: float) -> dict[str, Any]:
        return {"size_mb": size_mb,
                "real": compare_models(teacher_real, _embed(model, images, cfg, device, f"{kind} real"), identities),
                "holdout": compare_models(teacher_holdout, _embed(model, faces, cfg, device, f"{kind} held-out"))}

    result: dict[str, Any] = {"config": cfg.config_file, "bits": quant.QuantConfig.from_config(cfg).describe(),
                              "teacher_mb": quant.size_report(teacher)["fp32_mb"]}
    for kind, model in (("ptq", _ptq_baseline(teacher, cfg, device)),
                        ("distilled", quant.load_quantized(student_path, map_location=device))):
        result[kind] = scores(kind, model, quant.size_report(model)["total_mb"])
    result["teacher_real_identity"] = result["distilled"]["real"]["teacher_identity"]

    onnx = OnnxModel(export_onnx(quant.load_quantized(student_path), Path(cfg.output) / "student_int8.onnx"),
                     threads=SPEED_THREADS)
    result["onnx"] = scores("onnx", onnx, onnx.size_mb)
    key = ("baseline", cfg.teacher, cfg.data_source, cfg.data_path, cfg.generator_weights, cfg.seed, cfg.batch_size)
    if key not in cache:  # the same teacher and calibration faces give the same baseline: made once
        teacher_onnx, static = teacher_baselines(cfg, teacher, device)
        cache[key] = (scores("quantize_static", static, static.size_mb), teacher_onnx.size_mb,
                      _speed(teacher_onnx), _speed(static))
    result["quantize_static"], result["teacher_onnx_mb"], teacher_speed, static_speed = cache[key]
    result["speed"] = {"teacher_onnx": teacher_speed, "onnx": _speed(onnx), "quantize_static": static_speed}
    return result


def _speed(model: OnnxModel) -> float:
    return images_per_s(model, SPEED_BATCH, model.input_spec.size)


def teacher_baselines(cfg: Config, teacher: torch.nn.Module, device: torch.device) -> tuple[OnnxModel, OnnxModel]:
    """The fp32 ONNX teacher (``<output>/teacher_fp32.onnx``) and onnxruntime's ``quantize_static`` of it
    calibrated on the run's first faces (``<output>/teacher_quantize_static.onnx``): the naive way."""
    output = Path(cfg.output)
    fp32 = export_onnx(teacher, output / "teacher_fp32.onnx")
    batches, faces = [], 0
    for batch in build_train_batches(cfg, teacher.input_spec, device).calibration():
        batches.append(batch[:BASELINE_FACES - faces])
        faces += len(batches[-1])
        if faces >= BASELINE_FACES:
            break
    static = quantize_static_baseline(fp32, batches, output / "teacher_quantize_static.onnx")
    return (OnnxModel(fp32, threads=SPEED_THREADS),
            OnnxModel(static, threads=SPEED_THREADS, spec=teacher.input_spec))


COLUMNS = ["model", "bits", "size MB", "real cos mean", "real cos min", "pair-score r", "genuine", "impostor",
           "held-out cos mean", "held-out cos min"]


def _row(model: str, bits: str, size: float, real: dict[str, Any] | None, holdout: dict[str, Any] | None,
         identity: dict[str, Any]) -> list[str]:
    def f(d: dict[str, Any] | None, key: str) -> str:
        return "1.0000" if d is None else f"{d[key]:.4f}"
    return [model, bits, f"{size:.2f}", f(real, "cosine_mean"), f(real, "cosine_min"),
            f(real, "pair_score_correlation"), f"{identity['genuine_mean']:.3f}", f"{identity['impostor_mean']:.3f}",
            f(holdout, "cosine_mean"), f(holdout, "cosine_min")]


def report_table(results: list[dict[str, Any]]) -> str:
    """One row for the teacher, then calibration-only and distilled rows per bit width."""
    first = results[0]
    rows = [_row("teacher (float)", "FP32", first["teacher_mb"], None, None, first["teacher_real_identity"])]
    for r in results:
        for kind, label in ROWS:
            rows.append(_row(label, r["bits"], r[kind]["size_mb"], r[kind]["real"], r[kind]["holdout"],
                             r[kind]["real"]["student_identity"]))
    return markdown_table(COLUMNS, rows, text_columns=len(COLUMNS))


ROWS = (("ptq", "calibration only"), ("distilled", "distilled (QuantFace)"),
        ("onnx", "distilled, int8 ONNX (onnxruntime)"), ("quantize_static", "onnxruntime quantize_static int8"))


def speed_table(results: list[dict[str, Any]]) -> str:
    """Images/s of the shipped files against the fp32 ONNX teacher, all in onnxruntime."""
    first = results[0]
    base = first["speed"]["teacher_onnx"]
    rows = [["teacher fp32 ONNX", "FP32", f"{first['teacher_onnx_mb']:.2f}", f"{base:.1f}", "1.00"]]
    for r in results:
        for kind, label in ROWS[2:]:
            if kind == "quantize_static" and r is not first:
                continue  # the same teacher and calibration faces in every demo config
            bits = r["bits"] if kind == "onnx" else "W8A8"
            rows.append([label, bits, f"{r[kind]['size_mb']:.2f}", f"{r['speed'][kind]:.1f}",
                         f"{r['speed'][kind] / base:.2f}"])
    header = ["model", "bits", "file MB", f"images/s (batch {SPEED_BATCH}, {SPEED_THREADS} threads)",
              "ratio to fp32 ONNX teacher"]
    return markdown_table(header, rows, text_columns=2)


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
    parser.add_argument("--holdout-seed", type=int, default=HOLDOUT_SEED, help="generator seed of the held-out faces")
    parser.add_argument("--holdout-count", type=int, default=HOLDOUT_COUNT, help="number of held-out generated faces")
    args = parser.parse_args(argv)
    try:
        configs = [load_config(path) for path in args.configs]
        device = resolve_device(configs[0].device)
        ensure_asset("realfaces", configs[0].assets_dir)
        cache: dict[Any, Any] = {}
        results = []
        for cfg in configs:
            images, identities, _ = aligned_real_faces(configs[0].assets_dir, input_spec(cfg.network))
            results.append(evaluate_config(cfg, device, (images, identities), cache,
                                           (args.holdout_seed, args.holdout_count)))
    except (ConfigError, CheckpointError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    out = Path(args.out or configs[0].output)
    out.mkdir(parents=True, exist_ok=True)
    table = report_table(results) + "\n" + speed_table(results)
    header = (f"Student vs float teacher on {len(images)} real photos ({len(set(identities))} identities) and "
              f"{args.holdout_count} held-out generated faces\n\n")
    (out / "report.md").write_text(header + table)
    (out / "report.json").write_text(json.dumps(results, indent=2))
    bar_chart(results, out / "report.png")
    print(header + table)
    print(f"wrote {out / 'report.md'}, {out / 'report.json'}, {out / 'report.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
