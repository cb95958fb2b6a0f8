"""Evaluate checkpoints on the verification sets and IJB-B/C; write one JSON, a markdown table and ROC plots.

    python eval_benchmarks.py --checkpoint student.pt teacher.pt --data-dir /data/faces_emore \\
        --targets lfw,cfp_fp,agedb_30,calfw,cplfw --ijb IJBC --ijb-dir /data/IJB_release --out work_dirs/eval

Float checkpoints, quantized students, bare arcface_torch state_dicts (give ``--network r100``), packed
students (``.qfpack``) and exported ``.onnx`` models (run by onnxruntime or OpenVINO, ``--runtime``: the file you ship is what is
measured) are accepted alike (``deploy.loading.load_model_file``).  Faces are aligned and normalised as the network's declared
input spec says (``backbones.registry``).  Outputs in ``--out``: ``results.json`` (every number, rewritten
after each checkpoint), ``results.md`` (one row per checkpoint, as in the QuantFace paper's tables),
``roc_<ijbx>.png`` and ``<checkpoint>_<ijbx>_scores.npy`` (pair scores, in pair-file order).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from backbones.spec import spec_with
from eval.embed import DEFAULT_WORKERS
from eval.ijb import TARGETS as IJB_TARGETS
from eval.ijb import IjbSet, evaluate_ijb, far_key, load_ijb
from eval.report import IJB_COLUMNS, TABLE_FAR, benchmark_table, bits_label, checkpoint_labels, plot_roc, thin_curve
from eval.verification import find_bins, verify
from deploy.loading import load_model_file
from deploy.openvino_runtime import RUNTIMES
from utils.checkpoint import CheckpointError
from utils.distributed import resolve_device
from utils.errors import QuantFaceError, RunError, report
from utils.fileio import atomic_write_json, atomic_write_text, check_writable_dir, created_folder

DEFAULT_TARGETS = "lfw,cfp_fp,agedb_30,calfw,cplfw"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", nargs="+", required=True, metavar="PATH", help="checkpoints to evaluate")
    parser.add_argument("--network", default=None,
                        help="backbone name for checkpoints without metadata (bare arcface_torch state_dicts)")
    parser.add_argument("--data-dir", default=None, help="folder holding <target>.bin")
    parser.add_argument("--targets", default=None, help=f"comma-separated .bin names (default {DEFAULT_TARGETS})")
    parser.add_argument("--ijb", default="", help="IJBB, IJBC or IJBB,IJBC")
    parser.add_argument("--ijb-dir", default=None,
                        help="released IJB folder (holding meta/ and loose_crop/, or IJBB/ and IJBC/ folders)")
    parser.add_argument("--batch-size", type=int, default=256,
                        help="images per batch (with the flip test one forward runs the batch and its mirror)")
    parser.add_argument("--device", default="auto", help="auto | cuda | cuda:N | cpu")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help="image decoding threads")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--runtime", default="auto", choices=RUNTIMES,
                        help=".onnx files: onnxruntime, openvino, or auto (default: the faster of the two on this "
                             "machine by a short timed probe on the file, where their outputs agree; said in the output)")
    parser.add_argument("--onnx-input-spec", default=None, metavar="JSON",
                        help="input of .onnx files not exported by this toolkit (which records it), as JSON with "
                             'keys size mean std channels alignment, e.g. \'{"channels": "BGR", "std": [128, 128, 128]}\'; '
                             "missing keys are the ArcFace convention (112, RGB, 127.5/127.5)")
    args = parser.parse_args(argv)
    if args.onnx_input_spec is not None:
        try:
            args.onnx_input_spec = spec_with(json.loads(args.onnx_input_spec))
        except (json.JSONDecodeError, TypeError, ValueError) as exc:
            parser.error(f"--onnx-input-spec {args.onnx_input_spec!r}: {exc}")
    if args.targets is not None and not args.data_dir:
        parser.error("--targets needs --data-dir (the folder holding <target>.bin)")
    targets = DEFAULT_TARGETS if args.targets is None else args.targets
    args.targets = [t.strip() for t in targets.split(",") if t.strip()] if args.data_dir else []
    args.ijb = [t.strip().upper() for t in args.ijb.split(",") if t.strip()]
    bad = [t for t in args.ijb if t not in IJB_TARGETS]
    if bad:
        parser.error(f"--ijb {','.join(bad)}: use IJBB, IJBC or IJBB,IJBC")
    if args.ijb and not args.ijb_dir:
        parser.error("--ijb needs --ijb-dir")
    if not args.targets and not args.ijb:
        parser.error("nothing to evaluate: give --data-dir (with --targets) and/or --ijb with --ijb-dir")
    if args.batch_size < 1:
        parser.error("--batch-size must be >= 1")
    return args


def evaluate_checkpoint(path: str, label: str, args: argparse.Namespace, device: torch.device,
                        bins: dict[str, Path], ijb_sets: dict[str, IjbSet], out: Path,
                        curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]) -> dict[str, Any]:
    """Every requested benchmark for one checkpoint; IJB ROC curves are added to ``curves``."""
    model, meta, size_mb = load_model_file(path, args.network, onnx_spec=args.onnx_input_spec, runtime=args.runtime)
    model.to(device)
    entry: dict[str, Any] = {"label": label, "path": str(path), "network": meta.get("network", args.network),
                             "bits": bits_label(meta), "size_mb": size_mb, "runtime": type(model).__name__,
                             "quant": meta.get("quant"), "input_spec": model.input_spec.to_dict(),
                             "verification": {}, "ijb": {}}
    print(f"== {label}: {entry['network']} {entry['bits']} {entry['size_mb']:.2f} MB ({path})", flush=True)
    if "runtime" in meta:
        entry["runtime_choice"] = meta["runtime"]
        print(f"[{label}] runtime: {meta['runtime']}", flush=True)
    for target, bin_path in bins.items():
        r = verify(model, bin_path, device, args.batch_size, workers=args.workers)
        entry["verification"][target] = r
        val = (f"VAL@FAR=1e-3 {r['val'] * 100:.2f} +- {r['val_std'] * 100:.2f} % (FAR {r['far']:.5f})"
               if r["val"] is not None else "VAL undefined (a fold lacks same or different pairs)")
        print(f"[{label}] {target}: accuracy {r['accuracy'] * 100:.2f} +- {r['accuracy_std'] * 100:.2f} %, "
              f"threshold {r['best_threshold']:.3f}, {val}, {r['images'] / r['embed_seconds']:.0f} images/s",
              flush=True)
    for target, ijb in ijb_sets.items():
        result = evaluate_ijb(model, ijb, device, args.batch_size, workers=args.workers)
        entry["ijb"][target] = result.metrics
        np.save(out / f"{label.replace('/', '_')}_{target.lower()}_scores.npy", result.scores)
        curves[target][label] = thin_curve(result.fpr, result.tpr)
        print(f"[{label}] {target}: " + "  ".join(f"TAR@FAR={k} {v * 100:.2f}"
                                                  for k, v in result.metrics["tar_at_far"].items()), flush=True)
    return entry


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate every checkpoint; returns the JSON document written to ``<out>/results.json``.  ``--out`` is
    checked before any work and created for it; a run that fails leaves no empty folder behind."""
    check_writable_dir(args.out, "--out")
    with created_folder(args.out) as out:
        return evaluate_all(args, out)


def evaluate_all(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """``run``'s work, into the existing folder ``out``."""
    device = resolve_device(args.device)
    missing = [p for p in args.checkpoint if not Path(p).is_file()]
    if missing:
        raise CheckpointError(f"checkpoint(s) not found: {', '.join(missing)}")
    bins = find_bins(args.data_dir, args.targets) if args.targets else {}
    ijb_sets = {t: load_ijb(args.ijb_dir, t) for t in args.ijb}
    curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {t: {} for t in ijb_sets}
    document: dict[str, Any] = {
        "settings": {"targets": args.targets, "data_dir": args.data_dir, "ijb": args.ijb, "ijb_dir": args.ijb_dir,
                     "batch_size": args.batch_size, "device": str(device), "table_far": far_key(TABLE_FAR)},
        "checkpoints": []}
    began = time.time()
    for path, label in zip(args.checkpoint, checkpoint_labels(args.checkpoint)):
        document["checkpoints"].append(evaluate_checkpoint(path, label, args, device, bins, ijb_sets, out, curves))
        atomic_write_json(out / "results.json", document)
    for target, target_curves in curves.items():
        plot_roc(target_curves, f"ROC on {IJB_COLUMNS[target]}", out / f"roc_{target.lower()}.png")
    table = benchmark_table(document["checkpoints"])
    atomic_write_text(out / "results.md", table)
    print(f"\n{table}\nwrote {out / 'results.json'} and {out / 'results.md'} in {time.time() - began:.0f} s")
    return document


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except QuantFaceError as exc:
        return report(exc)
    except KeyboardInterrupt:  # files are written whole or not at all (utils.fileio), so none is half written
        return report(RunError("interrupted: the evaluation stopped before it finished; run the command again"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
