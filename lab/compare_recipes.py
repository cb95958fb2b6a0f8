"""Which recipe keeps a quantized student closest to its teacher on real faces?  One config, named variants,
several seeds, scored as the demo report scores.

    python -m lab.compare_recipes config/demo_dlib_w4a4.py --study augmentation [--seeds 0 1 2] [--out DIR]
    python -m lab.compare_recipes CONFIG --variant "none:" --variant "crops: augment_crop=0.8" ...

Each (variant, seed) runs ``train_quantization.py CONFIG <overrides> seed=S output=OUT/<variant>/seed<S>
resume=true`` (a finished run is not redone, so a stopped study goes on where it stopped), then its distilled
student is compared with the float teacher on the real photos, the johns faces (when ``../shared`` is beside
the checkout) and held-out generated faces; scores are kept in the run's ``scores.json``.  The table gives each
variant's mean over the seeds with its spread (max - min), and its difference to the first variant, starred
only where the gap exceeds both variants' spreads.  It is written to ``OUT/report.md`` and ``OUT/report.json``.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import quant
from lab.realfaces import JOHNS_DIR
from eval.report import markdown_table
from lab.demo import train_command
from lab.demo_report import (HOLDOUT_COUNT, HOLDOUT_SEED, beyond_spread, mean_and_spread, score_model,
                               teacher_face_sets)
from utils.config import Config, ConfigError, load_config
from utils.distributed import resolve_device

REPO = Path(__file__).resolve().parent.parent
# (folder name, label, overrides): the first variant is the reference the others are compared with
STUDIES: dict[str, list[tuple[str, str, list[str]]]] = {
    "augmentation": [
        ("none", "no augmentation (flips only)", []),
        ("crop", "random crops, area >= 0.8", ["augment_crop=0.8"]),
        ("rotate", "rotations up to 10 degrees", ["augment_rotate=10.0"]),
        ("color", "colour jitter 0.3", ["augment_color=0.3"]),
        ("blur", "blur or sharpen half the faces", ["augment_blur=0.5"]),
        ("mixup", "mixup, share <= 0.3", ["augment_mixup=0.3"]),
        ("sharp", "sharpened upsampling", ["generator_upsample=sharp"]),
        ("interpolate", "latent interpolation, half the faces", ["latent_interpolation=0.5"]),
    ],
}
METRICS = (("real", "cosine_mean"), ("real", "cosine_min"), ("johns", "cosine_mean"), ("johns", "cosine_min"),
           ("holdout", "cosine_mean"))


def parse_variant(text: str) -> tuple[str, str, list[str]]:
    """``"name: key=value key=value"`` -> (name, name, overrides)."""
    name, _, overrides = text.partition(":")
    name = name.strip()
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ConfigError(f"--variant {text!r}: start with a name of letters, digits, '-' or '_', then ':'")
    return name, name, overrides.split()


def run_variant(config: str, overrides: list[str], seed: int, output: Path) -> None:
    """Train (or finish) one run; a failed run stops the study with its output above."""
    command = train_command(config, [*overrides, f"seed={seed}", f"output={output}"])
    print(f"\n== {' '.join(command[1:])}", flush=True)
    if subprocess.run(command, cwd=REPO).returncode != 0:
        raise RuntimeError(f"training {config} with {' '.join(overrides) or 'no overrides'} (seed {seed}) failed; "
                           "its output is above")


def scores_of(cfg: Config, sets_cache: dict[str, Any], johns_dir: Path, holdout_count: int) -> dict[str, Any]:
    """The run's distilled student against its teacher (cached in ``<output>/scores.json``)."""
    path = Path(cfg.output) / "scores.json"
    if path.is_file():
        return json.loads(path.read_text())
    device = resolve_device(cfg.device)
    if "sets" not in sets_cache:
        sets_cache["sets"] = teacher_face_sets(cfg, device, (HOLDOUT_SEED, holdout_count), johns_dir)[1]
    student = quant.load_quantized(Path(cfg.output) / "student_final.pt", map_location=device)
    scores = score_model(student, sets_cache["sets"], cfg, device, "distilled")
    path.write_text(json.dumps(scores, indent=2))
    return scores


def summarise(per_seed: list[dict[str, Any]]) -> dict[str, tuple[float, float]]:
    """``{"real cosine_mean": (mean over seeds, max - min)}`` for every metric the runs have."""
    mean, spread = mean_and_spread(per_seed)
    return {f"{group} {key}": (mean[group][key], spread[group][key]) for group, key in METRICS if group in mean}


def difference(value: tuple[float, float], reference: tuple[float, float], seeds: int) -> str:
    """Mean difference to the reference, starred where it exceeds both spreads (never from one seed)."""
    gap = value[0] - reference[0]
    return f"{gap:+.4f}{' *' if beyond_spread(gap, max(value[1], reference[1]), seeds) else ''}"


def report(summaries: list[tuple[str, list[str], dict[str, tuple[float, float]]]], seeds: list[int], config: str
           ) -> str:
    metrics = list(summaries[0][2])
    header = ["variant", "overrides", *(f"{m.replace('cosine_', 'cos ').replace('holdout', 'held-out')}"
                                        for m in metrics), "real cos mean vs first"]
    reference = summaries[0][2]["real cosine_mean"]
    several = len(seeds) > 1
    rows = [[label, " ".join(overrides) or "-",
             *(f"{s[m][0]:.4f}" + (f" ({s[m][1]:.4f})" if several else "") for m in metrics),
             difference(s["real cosine_mean"], reference, len(seeds))] for label, overrides, s in summaries]
    what = ("mean cosine to the float teacher over the seeds (spread = max - min in brackets); * = the gap to the "
            "first row exceeds both spreads" if several else
            "cosine to the float teacher; one seed, so no spread and no claim")
    return f"{config}, seeds {', '.join(map(str, seeds))}: {what}\n\n" + markdown_table(header, rows, text_columns=2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="the config every variant starts from")
    parser.add_argument("--study", choices=sorted(STUDIES), help="a predefined set of variants")
    parser.add_argument("--variant", action="append", default=[], help='"name: key=value ..." (repeatable)')
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=None, help="study folder (default: work_dirs/compare_<study>)")
    parser.add_argument("--johns", default=str(JOHNS_DIR), help="folder holding johns.json (the 55 johns faces)")
    parser.add_argument("--holdout-count", type=int, default=HOLDOUT_COUNT, help="number of held-out generated faces")
    args = parser.parse_args(argv)
    try:
        variants = (STUDIES[args.study] if args.study else []) + [parse_variant(v) for v in args.variant]
        if not variants:
            raise ConfigError("give --study or at least one --variant")
        out = args.out or Path("work_dirs") / f"compare_{args.study or 'recipes'}"
        for seed in args.seeds:  # every variant at the first seed first: a stopped study has a whole comparison
            for name, _, overrides in variants:
                run_variant(args.config, overrides, seed, out / name / f"seed{seed}")
        summaries, results, cache = [], {}, {}
        for name, label, overrides in variants:
            per_seed = [scores_of(load_config(args.config, [*overrides, f"seed={seed}",
                                                            f"output={out / name / f'seed{seed}'}"]),
                                  cache, Path(args.johns), args.holdout_count) for seed in args.seeds]
            results[name] = {"label": label, "overrides": overrides, "seeds": dict(zip(args.seeds, per_seed))}
            summaries.append((label, overrides, summarise(per_seed)))
    except (ConfigError, RuntimeError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    text = report(summaries, args.seeds, args.config)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(text)
    (out / "report.json").write_text(json.dumps(results, indent=2))
    print(text)
    print(f"wrote {out / 'report.md'}, {out / 'report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
