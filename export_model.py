"""Export a checkpoint to ONNX: a float model to fp32, a quantized (deploy-mode) student to int8 QDQ.

    python export_model.py CHECKPOINT -o OUT.onnx [--network r100] [--int8-weights] [--native-prelu]
    python export_model.py CHECKPOINT --packed OUT.qfpack      # also/instead: the packed low-bit file

CHECKPOINT is this project's checkpoint (``student_final.pt`` or a float one) or an arcface_torch
``backbone.pth`` (give ``--network``).  The int8 graph takes the normalised image batch (dynamic batch
size); the input spec is in its metadata.  ``--int8-weights`` stores 8-bit dense weights as int8 (the
fastest form on CPUs with VNNI or ARM dot products; on other x86 CPUs onnxruntime's u8 x s8 kernels
saturate with 8-bit weights, so by default they are stored as uint8 with zero point 128, exact
everywhere).  PReLUs are written as ``a*x + (1-a)*relu(x)``, which onnxruntime runs far faster than its
``PRelu`` kernel; ``--native-prelu`` keeps ``PRelu`` (for runtimes that fuse it).  ``--packed`` writes each
quantized weight in its own bit width (``deploy.packed``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import onnx

import quant
from deploy import ExportError, export_onnx
from deploy.cpu import has_vnni
from deploy.onnx_export import uint8_weight_layers
from deploy.loading import PACKED_SUFFIX
from deploy.packed import save_packed
from eval.report import bits_label
from utils.errors import QuantFaceError, RunError, report
from utils.fileio import check_writable_dir

EXPORTED_SUFFIXES = (".onnx", PACKED_SUFFIX)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="float checkpoint, quantized student, or arcface_torch backbone.pth")
    parser.add_argument("-o", "--output", help="ONNX file to write")
    parser.add_argument("--packed", help="packed low-bit file to write (quantized students only)")
    parser.add_argument("--network", default=None, help="backbone name for checkpoints without metadata")
    parser.add_argument("--int8-weights", action="store_true",
                        help="8-bit dense weights as int8 (exact on VNNI / ARM dot-product CPUs only)")
    parser.add_argument("--native-prelu", action="store_true", help="write PReLU as ONNX PRelu (default: "
                        "a*x + (1-a)*relu(x), faster in onnxruntime)")
    args = parser.parse_args(argv)
    if not args.output and not args.packed:
        parser.error("nothing to write: give -o OUT.onnx and/or --packed OUT.qfpack")
    try:
        check_inputs(args)
        model, meta = quant.load_any_model(args.checkpoint, args.network)
        fp32_mb = sum(p.numel() for p in model.parameters()) * 4 / 1e6
        label = bits_label(meta)
        if args.output:
            path = export_onnx(model, args.output, meta={**meta, "bits": label, "source": str(args.checkpoint)},
                               int8_weights=args.int8_weights, native_prelu=args.native_prelu)
            print(f"wrote {path}: {label}, {path.stat().st_size / 1e6:.2f} MB "
                  f"({path.stat().st_size / 1e6 / fp32_mb:.3f}x the {fp32_mb:.2f} MB of fp32 parameters)")
            if not args.int8_weights and has_vnni() and uint8_weight_layers(onnx.load(str(path))):
                print("note: this CPU has VNNI; for VNNI targets export with --int8-weights: the uint8 weight "
                      "containers 8-bit weights get by default (exact on AVX2) run onnxruntime's slower uint8 x "
                      "uint8 kernels there (README, Deployment)")
        if args.packed:
            if not meta.get("quant"):
                raise ExportError(f"{args.checkpoint} is a float model; --packed stores quantized students")
            path = save_packed(Path(args.packed), model, meta)
            print(f"wrote {path}: {label}, {path.stat().st_size / 1e6:.2f} MB "
                  f"({path.stat().st_size / 1e6 / fp32_mb:.3f}x the {fp32_mb:.2f} MB of fp32 parameters)")
    except QuantFaceError as exc:
        return report(exc)
    except KeyboardInterrupt:  # files are written whole or not at all (utils.fileio), so none is half written
        return report(RunError("interrupted: the export stopped before it finished; run the command again"))
    return 0


def check_inputs(args: argparse.Namespace) -> None:
    """Before anything loads: the input is a training checkpoint, not an exported file, and every output's
    folder can be written."""
    if Path(args.checkpoint).suffix.lower() in EXPORTED_SUFFIXES:
        raise ExportError(f"{args.checkpoint}: export takes a training checkpoint (.pt); this is already an "
                          "exported file")
    for flag, path in (("-o", args.output), ("--packed", args.packed)):
        if path:
            check_writable_dir(Path(path).parent, f"{flag} folder")


if __name__ == "__main__":
    sys.exit(main())
