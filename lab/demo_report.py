"""How well do the distilled students still recognise real faces?  The demo's evaluation.

    python -m lab.demo_report config/demo_mbf_w8a8.py [config/demo_mbf_w4a4.py ...] [--out DIR]

For each config (after ``train_quantization.py`` has run it) this compares, against the config's own teacher
and on that teacher's alignment, models on the real photos of ``lab.realfaces`` (evaluation only, never
trained on), on held-out generated faces (``--holdout-seed``, never trained on) and, when ``../shared`` is
beside the checkout, on the 55 johns faces (5 people: agreement, genuine/impostor means, TAR at FAR 1e-2):
the float teacher, the post-training-quantization baseline
(``quant.post_training_quantize`` on the batches the run calibrated on, no distillation: the very
student training started from) and the distilled student (``<output>/student_final.pt``); then the
files a user would ship, run by onnxruntime: the distilled student exported to int8 ONNX
(``<output>/student_int8.onnx``) and, for comparison, onnxruntime's own ``quantize_static`` of the fp32 ONNX
teacher (the naive way), with their file sizes and images/s on onnxruntime and (where installed) OpenVINO,
each against the fastest float runtime on this machine; where no int8 file beats it, the report says so.  Configs of
several teachers are grouped by teacher.  It prints the tables and writes ``report.md``, ``report.json`` and ``report.png`` into ``--out`` (default: the first config's output).
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import quant
from backbones import load_float_model
from backbones.spec import InputSpec
from data import DataSettings, GeneratedFaces, TrainBatches, build_train_batches
from lab.bench_deploy import measure_in_child
from lab.realfaces import JOHNS_DIR, aligned_real_faces, johns_faces
from eval.agreement import compare_models
from eval.embed import embed_batches
from deploy import OnnxModel, export_onnx
from distill.reconstruction import reconstructed_state
from deploy.baseline import quantize_static_baseline
from deploy.cpu import cpu_description, isa_flags
from deploy.openvino_runtime import OPENVINO_MISSING
from deploy.timing import images_per_s
from eval.report import markdown_table
from utils.checkpoint import CheckpointError
from utils.config import Config, ConfigError, load_config
from utils.distributed import resolve_device

BASELINE_FACES = 64      # calibration faces for onnxruntime's quantize_static (the run's first batches)
SPEED_BATCH, SPEED_THREADS, SPEED_REPEATS = 32, 2, 3

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
    batches = _batches(cfg, teacher, device).calibration()
    return quant.post_training_quantize(teacher, quant.QuantConfig.from_config(cfg), batches,
                                        cfg.calibration_batches).student.to(device)


def _batches(cfg: Config, teacher: torch.nn.Module, device: torch.device) -> TrainBatches:
    """The run's own training stream (its first batches are what it calibrated on)."""
    return build_train_batches(DataSettings.from_config(cfg), teacher.input_spec, device, teacher=teacher,
                               cache_dir=cfg.output)


def _reconstructed(cfg: Config, baseline: torch.nn.Module) -> torch.nn.Module | None:
    """The run's student after block reconstruction, before distillation, or None when the run did not
    reconstruct."""
    state = reconstructed_state(cfg.output)
    if state is None:
        return None
    model = copy.deepcopy(baseline)
    model.load_state_dict(state)
    return model


@dataclass
class FaceSet:
    """Faces every model of one teacher is scored on, aligned for it, with the teacher's embeddings."""

    name: str
    images: np.ndarray
    identities: list[str] | None
    teacher: np.ndarray


def teacher_face_sets(cfg: Config, device: torch.device, holdout: tuple[int, int], johns_dir: Path
                      ) -> tuple[torch.nn.Module, list[FaceSet]]:
    """The float teacher and its face sets: real photos, held-out generated faces, the johns (if present)."""
    teacher = load_float_model(cfg.teacher).to(device).eval()
    spec = teacher.input_spec
    real, real_ids, _ = aligned_real_faces(cfg.assets_dir, spec)
    sets = [("real", real, real_ids), ("holdout", _holdout_faces(cfg, spec, device, *holdout), None)]
    johns = johns_faces(johns_dir, spec)
    if johns is not None:
        sets.append(("johns", johns[0], johns[1]))
    return teacher, [FaceSet(name, images, ids, _embed(teacher, images, cfg, device, f"teacher {name}"))
                     for name, images, ids in sets]


def score_model(model: torch.nn.Module, sets: list[FaceSet], cfg: Config, device: torch.device, kind: str
                ) -> dict[str, Any]:
    """``{face set name: eval.agreement.compare_models against the teacher}`` for one model."""
    return {s.name: compare_models(s.teacher, _embed(model, s.images, cfg, device, f"{kind} {s.name}"), s.identities)
            for s in sets}


@dataclass
class Shared:
    """What the configs of one teacher share, made once: its face sets with its embeddings (by teacher file)
    and the naive baselines' scores, sizes and speeds (by the stream they calibrate on)."""

    teachers: dict[str, tuple[torch.nn.Module, list[FaceSet]]] = field(default_factory=dict)
    baselines: dict[tuple[Any, ...], tuple[dict[str, Any], float, float, dict[str, float]]] = field(
        default_factory=dict)

    def real_faces(self) -> FaceSet:
        """The first teacher's real photos (every teacher sees the same photos, aligned its own way)."""
        return next(iter(self.teachers.values()))[1][0]


def evaluate_config(cfg: Config, device: torch.device, shared: Shared, holdout: tuple[int, int],
                    johns_dir: Path) -> dict[str, Any]:
    """Teacher, calibration-only baseline, distilled student and the shipped ONNX files of one demo run,
    on each face set of its teacher; the ONNX files also timed."""
    student_path = Path(cfg.output) / "student_final.pt"
    if not student_path.is_file():
        raise FileNotFoundError(f"{student_path} not found: run `python train_quantization.py {cfg.config_file}` "
                                "first")
    if cfg.teacher not in shared.teachers:
        shared.teachers[cfg.teacher] = teacher_face_sets(cfg, device, holdout, johns_dir)
    teacher, sets = shared.teachers[cfg.teacher]

    def scores(kind: str, model: torch.nn.Module, size_mb: float) -> dict[str, Any]:
        return {"size_mb": size_mb, **score_model(model, sets, cfg, device, kind)}

    result: dict[str, Any] = {"config": cfg.config_file, "teacher": Path(cfg.teacher).stem, "network": cfg.network,
                              "bits": quant.QuantConfig.from_config(cfg).describe(),
                              "teacher_mb": quant.size_report(teacher)["fp32_mb"]}
    baseline = _ptq_baseline(teacher, cfg, device)
    models = [("ptq", baseline), ("reconstructed", _reconstructed(cfg, baseline)),
              ("distilled", quant.load_quantized(student_path, map_location=device))]
    for kind, model in models:
        if model is not None:
            result[kind] = scores(kind, model, quant.size_report(model)["total_mb"])
    onnx = OnnxModel(export_onnx(quant.load_quantized(student_path), Path(cfg.output) / "student_int8.onnx"),
                     threads=SPEED_THREADS)
    result["onnx"] = scores("onnx", onnx, onnx.size_mb)
    key = (cfg.teacher, DataSettings.from_config(cfg))  # the same teacher and calibration faces: the same baseline
    if key not in shared.baselines:
        teacher_onnx, static, ours = teacher_baselines(cfg, teacher, device)
        files = {"teacher_onnx": teacher_onnx, "teacher_onnx_ours": ours, "quantize_static": static}
        shared.baselines[key] = (scores("quantize_static", static, static.size_mb), teacher_onnx.size_mb, ours.size_mb,
                                 speeds({kind: model.path for kind, model in files.items()}, teacher.input_spec.size))
    result["quantize_static"], result["teacher_onnx_mb"], result["teacher_onnx_ours_mb"], base = shared.baselines[key]
    result["speed"] = {**base, **speeds({"onnx": onnx.path}, teacher.input_spec.size)}
    return result


def speeds(files: dict[str, Path], size: int) -> dict[str, dict[str, float]]:
    """``{kind: {runtime: images/s}}`` of ONNX files at batch ``SPEED_BATCH`` on ``SPEED_THREADS`` threads:
    onnxruntime here, OpenVINO (where installed) in a child process each (``lab.bench_deploy``), which keeps
    its native thread pool out of this one."""
    rates = {kind: {"onnxruntime": images_per_s(OnnxModel(path, threads=SPEED_THREADS, spec=InputSpec(size=size)),
                                                SPEED_BATCH, size, repeats=SPEED_REPEATS)}
             for kind, path in files.items()}
    if not OPENVINO_MISSING:
        for kind, path in files.items():
            rates[kind]["openvino"] = measure_in_child(path, "ov", size, [SPEED_BATCH], [SPEED_THREADS],
                                                       SPEED_REPEATS)["rates"][f"b{SPEED_BATCH}t{SPEED_THREADS}"]
    return rates


def teacher_baselines(cfg: Config, teacher: torch.nn.Module, device: torch.device
                      ) -> tuple[OnnxModel, OnnxModel, OnnxModel]:
    """The naive way: the fp32 ONNX teacher as a user exports it (``<output>/teacher_fp32.onnx``, ``PRelu``
    nodes) and onnxruntime's ``quantize_static`` of it calibrated on the run's first faces
    (``<output>/teacher_quantize_static.onnx``); and the teacher through this toolkit's export
    (``<output>/teacher_fp32_ours.onnx``: PReLU as ``a*x + (1-a)*relu(x)``, faster in onnxruntime)."""
    output = Path(cfg.output)
    fp32 = export_onnx(teacher, output / "teacher_fp32.onnx", native_prelu=True)
    ours = export_onnx(teacher, output / "teacher_fp32_ours.onnx")
    batches, faces = [], 0
    for batch in _batches(cfg, teacher, device).calibration():
        batches.append(batch[:BASELINE_FACES - faces])
        faces += len(batches[-1])
        if faces >= BASELINE_FACES:
            break
    static = quantize_static_baseline(fp32, batches, output / "teacher_quantize_static.onnx")
    return (OnnxModel(fp32, threads=SPEED_THREADS), OnnxModel(static, threads=SPEED_THREADS, spec=teacher.input_spec),
            OnnxModel(ours, threads=SPEED_THREADS))


RECONSTRUCTED = ("reconstructed", "calibration + block reconstruction")
ROWS = (("ptq", "calibration only"), ("distilled", "distilled (QuantFace)"),
        ("onnx", "distilled, int8 ONNX (onnxruntime)"), ("quantize_static", "onnxruntime quantize_static int8"))
COLUMNS = ["teacher", "model", "bits", "size MB", "real cos mean", "real cos min", "pair-score r", "genuine",
           "impostor", "held-out cos mean", "held-out cos min"]
JOHNS_COLUMNS = ["teacher", "model", "bits", "cos to teacher mean", "cos min", "genuine", "impostor",
                 "TAR@FAR=1e-2"]


def _f(d: dict[str, Any] | None, key: str, spread: dict[str, Any] | None = None) -> str:
    """A score, with its spread over the seeds in brackets when there were several."""
    if d is None:
        return "1.0000"
    return f"{d[key]:.4f}" + (f" ({spread[key]:.4f})" if spread else "")


def _by_teacher(results: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault(r["teacher"], []).append(r)
    return groups


Row = tuple[str, str, str, Any, Any, dict[str, Any]]


def _rows(results: list[dict[str, Any]]) -> list[Row]:
    """``(teacher, model, bits, scores, their spread over the seeds, result)``, scores None for the teacher
    itself: per teacher, its own row, then calibration-only / reconstructed (where the run reconstructed) /
    distilled / int8 ONNX per bit width, and quantize_static once."""
    rows: list[Row] = []
    for teacher, group in _by_teacher(results).items():
        rows.append((teacher, "teacher (float)", "FP32", None, None, group[0]))
        for r in group:
            kinds = [ROWS[0], *([RECONSTRUCTED] if "reconstructed" in r else []), *ROWS[1:3]]
            rows += [(teacher, label, r["bits"], r[kind], r.get("spread", {}).get(kind), r) for kind, label in kinds]
        first = group[0]
        rows.append((teacher, ROWS[3][1], "W8A8", first["quantize_static"], first.get("spread", {}).get("quantize_static"),
                     first))
    return rows


def report_table(results: list[dict[str, Any]]) -> str:
    """Real photos and held-out generated faces, every model against its own teacher."""
    lines = []
    for teacher, model, bits, s, sp, r in _rows(results):
        size = r["teacher_mb"] if s is None else s["size_mb"]
        identity = (r["distilled"] if s is None else s)["real"]["teacher_identity" if s is None else "student_identity"]
        real, held = (None, None) if s is None else (s["real"], s["holdout"])
        real_sp, held_sp = (None, None) if sp is None else (sp["real"], sp["holdout"])
        lines.append([teacher, model, bits, f"{size:.2f}", _f(real, "cosine_mean", real_sp),
                      _f(real, "cosine_min", real_sp), _f(real, "pair_score_correlation"),
                      f"{identity['genuine_mean']:.3f}", f"{identity['impostor_mean']:.3f}",
                      _f(held, "cosine_mean", held_sp), _f(held, "cosine_min", held_sp)])
    return markdown_table(COLUMNS, lines, text_columns=len(COLUMNS))


def johns_table(results: list[dict[str, Any]]) -> str:
    """The 55 johns faces (5 people, 1,485 pairs): agreement with the teacher and verification."""
    lines = []
    for teacher, model, bits, s, sp, r in _rows(results):
        scored = (r["distilled"] if s is None else s)["johns"]
        identity = scored["teacher_identity" if s is None else "student_identity"]
        agree, agree_sp = (None, None) if s is None else (scored, None if sp is None else sp["johns"])
        lines.append([teacher, model, bits, _f(agree, "cosine_mean", agree_sp), _f(agree, "cosine_min", agree_sp),
                      f"{identity['genuine_mean']:.3f}", f"{identity['impostor_mean']:.3f}",
                      f"{identity['tar_at_far']:.4f}"])
    return markdown_table(JOHNS_COLUMNS, lines, text_columns=len(JOHNS_COLUMNS))


def _fastest(rates: dict[str, float]) -> tuple[str, float]:
    runtime = max(rates, key=rates.get)
    return runtime, rates[runtime]


def speed_table(results: list[dict[str, Any]]) -> str:
    """Images/s of every file on each runtime, and each file's best against the fastest float runtime of its
    teacher on this machine; a line per teacher says plainly where float stays the fastest way to run it."""
    rows, verdicts = [], []
    for teacher, group in _by_teacher(results).items():
        speed = group[0]["speed"]
        fp32 = {(kind, runtime): rate for kind in ("teacher_onnx", "teacher_onnx_ours")
                for runtime, rate in speed[kind].items()}
        (base_kind, base_runtime), base = max(fp32.items(), key=lambda item: item[1])
        files = [("teacher fp32 ONNX", "FP32", group[0]["teacher_onnx_mb"], speed["teacher_onnx"]),
                 ("teacher fp32 ONNX, this toolkit's export", "FP32", group[0]["teacher_onnx_ours_mb"],
                  speed["teacher_onnx_ours"])]
        files += [(ROWS[2][1].replace(" (onnxruntime)", ""), r["bits"], r["onnx"]["size_mb"], r["speed"]["onnx"])
                  for r in group]
        files.append((ROWS[3][1], "W8A8", group[0]["quantize_static"]["size_mb"], speed["quantize_static"]))
        runtimes = list(speed["teacher_onnx"])
        for model, bits, size, rates in files:
            runtime, best = _fastest(rates)
            rows.append([teacher, model, bits, f"{size:.2f}", *(f"{rates[r]:.1f}" for r in runtimes),
                         f"{best / base:.2f} ({runtime})"])
        runtime, best = max((_fastest(r["speed"]["onnx"]) for r in group), key=lambda item: item[1])
        owner = "this toolkit's" if base_kind == "teacher_onnx_ours" else "the user's"
        fastest = f"{owner} fp32 file on {base_runtime}"
        verdicts.append(f"- {teacher}: the fastest float runtime is {fastest} ({base:.1f} images/s); the distilled "
                        f"int8 file's best is {best / base:.2f}x that ({runtime})"
                        + ("." if best > base else f": on this CPU float on {base_runtime} stays the fastest way to "
                           "run this model; the int8 file is smaller, not faster."))
    header = ["teacher", "model", "bits", "file MB", *(f"{r} images/s" for r in runtimes),
              "best / fastest fp32"]
    return (f"Speed: batch {SPEED_BATCH}, {SPEED_THREADS} threads, CPU {cpu_description()}; {isa_flags()}\n\n"
            + markdown_table(header, rows, text_columns=3) + "\n" + "\n".join(verdicts) + "\n")


def seed_output(cfg: Config, seed: int) -> str:
    """Where the run of ``cfg`` with ``seed`` lives: the config's own output for its own seed, else
    ``<output>_seed<seed>`` beside it."""
    return cfg.output if seed == cfg.seed else f"{cfg.output}_seed{seed}"


def seed_configs(path: str, seeds: list[int] | None) -> list[Config]:
    """The config at ``path`` once per seed (its own seed when ``seeds`` is None), each with its own output."""
    cfg = load_config(path)
    return [cfg] if not seeds else [load_config(path, [f"seed={s}", f"output={seed_output(cfg, s)}"]) for s in seeds]


def _numbers(values: list[Any], reduce: Any, keep_others: bool) -> Any:
    """``reduce`` over the seeds of every number in same-shaped results; other leaves are the first seed's
    (``keep_others``) or left out."""
    first = values[0]
    if isinstance(first, dict):
        reduced = {key: _numbers([v[key] for v in values], reduce, keep_others) for key in first}
        return {key: value for key, value in reduced.items() if value is not None}
    if isinstance(first, (int, float)) and not isinstance(first, bool):
        return float(reduce(values))
    return first if keep_others else None


def mean_and_spread(runs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Same-shaped results of several seeds: every number's mean (other leaves: the first seed's) and its
    spread (max - min)."""
    return _numbers(runs, np.mean, True), _numbers(runs, np.ptp, False)


def combine_seeds(runs: list[dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """One config's results over its seeds: every number averaged, ``spread`` = max - min of each score."""
    mean, spread = mean_and_spread(runs)
    combined = {**mean, "seeds": seeds}
    if len(runs) > 1:
        combined["spread"] = {k: spread[k] for k in ("ptq", "reconstructed", "distilled", "onnx", "quantize_static")
                              if k in spread}
    return combined


def beyond_spread(gap: float, spread: float, seeds: int) -> bool:
    """The project's rule for a claim: a gap counts only beyond the (larger) seed spread, never from one seed."""
    return seeds > 1 and abs(gap) > spread


def claims(results: list[dict[str, Any]]) -> list[str]:
    """Per run and face set: distilled against calibration only (mean cosine), said only beyond the seed spread."""
    lines = []
    for r in results:
        for faces in (f for f in ("real", "johns") if f in r["distilled"]):
            gap = r["distilled"][faces]["cosine_mean"] - r["ptq"][faces]["cosine_mean"]
            if len(r["seeds"]) < 2:
                verdict = "one seed, so no spread and no claim"
            else:
                spread = max(r["spread"][k][faces]["cosine_mean"] for k in ("distilled", "ptq"))
                verdict = (("distilled beats calibration only" if gap > 0 else "calibration only beats distilled")
                           if beyond_spread(gap, spread, len(r["seeds"])) else
                           "within the seed spread: neither beats the other") + f" (spread {spread:.4f})"
            lines.append(f"- {r['teacher']} {r['bits']}, {faces}: distilled - calibration only = {gap:+.4f}; {verdict}")
    return lines


def bar_chart(results: list[dict[str, Any]], path: Path) -> Path:
    """Real-photo student<->teacher cosine (mean bar, min marker) per teacher and bit width: baseline vs distilled."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(len(results))
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(results), 3.6))
    for offset, kind, label in ((-0.2, "ptq", "calibration only"), (0.2, "distilled", "distilled (QuantFace)")):
        means = [r[kind]["real"]["cosine_mean"] for r in results]
        mins = [r[kind]["real"]["cosine_min"] for r in results]
        spreads = [r["spread"][kind]["real"]["cosine_mean"] / 2 if "spread" in r else 0.0 for r in results]
        ax.bar(x + offset, means, width=0.38, yerr=spreads, capsize=3, label=f"{label}: mean (bar: seed spread)")
        ax.scatter(x + offset, mins, marker="_", s=300, color="black", zorder=3)
    ax.scatter([], [], marker="_", color="black", label="min over faces")
    several = len({r["teacher"] for r in results}) > 1
    ax.set_xticks(x, [f"{r['teacher']}\n{r['bits']}" if several else r["bits"] for r in results], fontsize=7)
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
    parser.add_argument("--johns", default=str(JOHNS_DIR), help="folder holding johns.json (the 55 johns faces)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="seeds whose runs are combined (mean, and spread = max - min); default: the config's own")
    args = parser.parse_args(argv)
    johns_dir = Path(args.johns)
    try:
        per_config = [seed_configs(path, args.seeds) for path in args.configs]
        configs = [runs[0] for runs in per_config]
        device = resolve_device(configs[0].device)
        shared = Shared()
        holdout = (args.holdout_seed, args.holdout_count)
        results = [combine_seeds([evaluate_config(cfg, device, shared, holdout, johns_dir) for cfg in runs],
                                 [cfg.seed for cfg in runs]) for runs in per_config]
    except (ConfigError, CheckpointError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    out = Path(args.out or configs[0].output)
    out.mkdir(parents=True, exist_ok=True)
    real = shared.real_faces()
    seeds = results[0]["seeds"]
    over = (f"; mean over seeds {', '.join(map(str, seeds))}, spread (max - min) in brackets" if len(seeds) > 1
            else f"; seed {seeds[0]} only")
    text = (f"Every model against its own float teacher, each teacher on its own alignment: {len(real.images)} real "
            f"photos ({len(set(real.identities or []))} identities), {args.holdout_count} held-out generated faces"
            f"{over}\n\n"
            + report_table(results))
    if "johns" in results[0]["distilled"]:
        text += ("\nThe 55 johns faces (5 people, 1,485 pairs; cosine scores; the dlib model may have been trained on "
                 "some of them)\n\n" + johns_table(results))
    else:
        text += f"\nThe johns faces were skipped: {johns_dir / 'johns.json'} not found (they live in ../shared only)\n"
    text += "\n" + speed_table(results)
    text += "\nDistillation against calibration only (mean cosine to the teacher):\n" + "\n".join(claims(results)) + "\n"
    (out / "report.md").write_text(text)
    (out / "report.json").write_text(json.dumps(results, indent=2))
    bar_chart(results, out / "report.png")
    print(text)
    print(f"wrote {out / 'report.md'}, {out / 'report.json'}, {out / 'report.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
