"""Per-layer sensitivity of a float face model, and the weight widths a size budget gives each layer.

    python -m tools.sensitivity TEACHER [--network r100] [--activations] [--budget 0.20 0.15] [--out DIR]

For each Conv/Linear layer alone quantized at 2, 3, 4, 5, 6 and 8 bits (its weights; with ``--activations``
its input instead), how far the embeddings move from the float model's on held-out generated faces
(``1 - cosine``; weights are measured once per teacher file and cached, as training's ``size_budget``
uses them).  Prints the table, writes ``sensitivity.json`` and ``sensitivity.png`` (one bar per layer
and width) into ``--out``, and for each ``--budget`` (share of the fp32 size) the widths training with
``size_budget=`` would choose.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from assets import ensure_asset
from distill.bit_allocation import cached_sensitivity, held_out_faces, weight_budget_bits
from quant import QuantConfig, load_any_model
from quant.sensitivity import act_sensitivity, allocate_weight_bits, weight_counts
from utils.config import load_config
from utils.errors import InputError, QuantFaceError, report


def plot(table: dict[str, dict[int, float]], path: Path, what: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names, widths = list(table), sorted(next(iter(table.values())))
    fig, ax = plt.subplots(figsize=(max(8, len(names) * 0.25), 4))
    step = 0.8 / len(widths)
    for k, bits in enumerate(widths):
        ax.bar([i + k * step for i in range(len(names))], [max(table[n][bits], 1e-7) for n in names], step,
               label=f"{bits} bit")
    ax.set_yscale("log")
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
    ax.set_ylabel("1 - cosine to the float model")
    ax.set_title(f"{what} of each layer alone")
    ax.legend(ncol=len(widths), fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("teacher", help="float checkpoint or arcface_torch backbone.pth")
    parser.add_argument("--network", default=None, help="backbone name for checkpoints without metadata")
    parser.add_argument("--activations", action="store_true", help="quantize each layer's input, not its weights")
    parser.add_argument("--budget", type=float, nargs="*", default=[], help="shares of the fp32 size to allocate")
    parser.add_argument("--out", default="work_dirs/sensitivity", help="folder for sensitivity.json / .png")
    args = parser.parse_args(argv)
    try:
        model, meta = load_any_model(args.teacher, args.network)
        if meta.get("quant"):
            raise InputError(f"{args.teacher} is a quantized student; give the float teacher")
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        started = time.time()
        ensure_asset("gan_face_generate")
        cfg, cpu = load_config(), torch.device("cpu")
        if args.activations:
            table = act_sensitivity(model, held_out_faces(cfg.generator_weights, model.input_spec, cpu))
        else:  # shared with training's size_budget through the cache
            table = cached_sensitivity(args.teacher, model, cfg.generator_weights, cfg.assets_dir, cpu)
    except QuantFaceError as exc:
        return report(exc)
    widths = sorted(next(iter(table.values())))
    print(f"{'layer':<40}" + "".join(f"{b:>4} bit " for b in widths) + "   (1 - cosine, x1e-4)")
    for name, row in table.items():
        print(f"{name:<40}" + "".join(f"{row[b] * 1e4:>9.2f}" for b in widths))
    what = "input quantization" if args.activations else "weight quantization"
    (out / "sensitivity.json").write_text(json.dumps({"what": what, "teacher": str(args.teacher),
                                                      "sensitivity": table}, indent=1))
    plot(table, out / "sensitivity.png", what)
    print(f"{len(table)} layers in {time.time() - started:.0f} s; wrote {out / 'sensitivity.json'} and .png")
    for share in [] if args.activations else args.budget:
        widths = allocate_weight_bits(table, weight_counts(model), weight_budget_bits(model, QuantConfig(), share))
        mean = sum(weight_counts(model)[n] * b for n, b in widths.items()) / sum(weight_counts(model).values())
        print(f"size_budget={share}: mean weight width {mean:.2f} bits; " +
              ", ".join(f"{n}={b}" for n, b in widths.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
