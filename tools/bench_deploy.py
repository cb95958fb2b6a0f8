"""Deployment speed, memory and size: fp32 PyTorch, fp32 onnxruntime, onnxruntime's quantize_static and ours.

    python -m tools.bench_deploy [--networks r18 r50 mbf vargfacenet] [--demo] [--batches 1 32] [--threads 1 2]

Per backbone (random weights, BatchNorm statistics from one pass over generated faces: speed does not
depend on the values) the float model is exported to fp32 ONNX, quantized by onnxruntime's
``quantize_static`` (QDQ, per-channel int8 weights, uint8 activations, 64 generated faces) and by this
toolkit (``quant.post_training_quantize`` W8A8 deploy placement, BatchNorm folded, then
``deploy.export_onnx``).  ``--demo`` adds the demo's pretrained teacher and its W8A8 student (the trained
``work_dirs/demo_mbf_w8a8/student_final.pt`` when present, else calibration only).  Each variant is timed in
its own process (images/s at every batch size and thread count, best of ``--repeats`` timed runs after a
warm-up; peak resident memory of that process), so one variant's memory never counts against another.
The table ends in the ratios ours / fp32 onnxruntime and ours / quantize_static.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

import quant
from assets import ensure_asset
from backbones import get_model, load_float_model
from data import GeneratedFaces
from deploy import OnnxModel, export_onnx
from deploy.baseline import quantize_static_baseline
from deploy.timing import images_per_s

VARIANTS = ("fp32 pytorch", "fp32 onnxruntime", "quantize_static int8", "ours int8")
DEMO_STUDENT = Path("work_dirs/demo_mbf_w8a8/student_final.pt")


def _faces(spec, count: int) -> list[torch.Tensor]:
    generator = GeneratedFaces(ensure_asset("gan_face_generate"), count, seed=11)
    return [spec.normalise(generator.generate(range(i, min(i + 16, count)))) for i in range(0, count, 16)]


def _with_statistics(model: torch.nn.Module, faces: list[torch.Tensor]) -> torch.nn.Module:
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)):
        bn.momentum = None
        bn.reset_running_stats()
    with torch.no_grad():
        model.train()(torch.cat(faces))
    return model.eval()


def build_variants(name: str, work: Path) -> dict[str, Path]:
    """The four model files of one network (the fp32 PyTorch one as a state-dict checkpoint)."""
    if name == "demo":
        teacher = load_float_model(ensure_asset("mobilefacenet_tflite")).eval()
    else:
        torch.manual_seed(0)
        teacher = _with_statistics(get_model(name), _faces(get_model(name).input_spec, 64))
    faces = _faces(teacher.input_spec, 64)
    if name == "demo" and DEMO_STUDENT.is_file():
        student = quant.load_quantized(DEMO_STUDENT).eval()
    else:
        qcfg = quant.QuantConfig(bn_mode="frozen" if name == "demo" else "fold", equalize=name == "demo",
                                 bias_correction=name == "demo")
        student = quant.post_training_quantize(teacher, qcfg, faces, len(faces)).student.eval()
    files = {"fp32 pytorch": work / f"{name}.pt", "fp32 onnxruntime": work / f"{name}_fp32.onnx",
             "quantize_static int8": work / f"{name}_qs.onnx", "ours int8": work / f"{name}_int8.onnx"}
    torch.save({"model": teacher.state_dict(), "network": "mfn_tflite" if name == "demo" else name},
               files["fp32 pytorch"])
    export_onnx(teacher, files["fp32 onnxruntime"])
    quantize_static_baseline(files["fp32 onnxruntime"], faces, files["quantize_static int8"])
    export_onnx(student, files["ours int8"])
    return files


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(path: Path, batches: list[int], threads: list[int], repeats: int) -> dict[str, Any]:
    """Images/s per (batch, threads) and the peak RSS of this process (run in a fresh process)."""
    rates = {}
    for count in threads:
        torch.set_num_threads(count)
        if path.suffix == ".onnx":
            model = OnnxModel(path, threads=count, spec=get_model("mbf").input_spec)
        else:
            blob = torch.load(path, weights_only=True)
            model = get_model(blob["network"]).eval()
            model.load_state_dict(blob["model"])
        for batch in batches:
            rates[f"b{batch}t{count}"] = images_per_s(model, batch, repeats=repeats)
    return {"rates": rates, "peak_mb": _peak_rss_mb(), "size_mb": path.stat().st_size / 1e6}


def _child(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, "-m", "tools.bench_deploy", "--measure", str(path), "--repeats", str(args.repeats),
               "--batches", *map(str, args.batches), "--threads", *map(str, args.threads)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    if run.returncode != 0:
        raise RuntimeError(f"measuring {path} failed:\n{run.stderr[-2000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def report(results: dict[str, dict[str, dict[str, Any]]], args: argparse.Namespace) -> str:
    keys = [f"b{b}t{t}" for t in args.threads for b in args.batches]
    lines = [f"{'network':<12} {'variant':<22} " + " ".join(f"{k:>9}" for k in keys) + f" {'peak MB':>8} {'file MB':>8}"]
    for name, variants in results.items():
        for variant, r in variants.items():
            lines.append(f"{name:<12} {variant:<22} " + " ".join(f"{r['rates'][k]:9.1f}" for k in keys) +
                         f" {r['peak_mb']:8.0f} {r['size_mb']:8.2f}")
    lines.append("")
    lines.append("images/s ratios (" + ", ".join(keys) + "); file size ratio ours / fp32 onnx")
    for name, variants in results.items():
        ours = variants["ours int8"]
        for base in ("fp32 onnxruntime", "quantize_static int8"):
            ratios = " ".join(f"{ours['rates'][k] / variants[base]['rates'][k]:9.2f}" for k in keys)
            lines.append(f"{name:<12} ours / {base:<22} {ratios}")
        lines.append(f"{name:<12} size ours / fp32 onnx      {ours['size_mb'] / variants['fp32 onnxruntime']['size_mb']:9.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--networks", nargs="*", default=["r18", "r50", "mbf", "vargfacenet"])
    parser.add_argument("--demo", action="store_true", help="also the demo's pretrained teacher and its student")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per setting (best is kept)")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # the child process's job
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure, args.batches, args.threads, args.repeats)))
        return 0
    names = list(args.networks) + (["demo"] if args.demo else [])
    results: dict[str, dict[str, dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-deploy-") as tmp:
        for name in names:
            files = build_variants(name, Path(tmp))
            results[name] = {variant: _child(files[variant], args) for variant in VARIANTS}
            print(f"measured {name}", flush=True)
    print(f"torch {torch.__version__}, onnxruntime {__import__('onnxruntime').__version__}, cpu "
          f"{_cpu_name()}\n{report(results, args)}")
    return 0


def _cpu_name() -> str:
    """The CPU model and its best integer-kernel ISA (VNNI decides whether int8 weights are exact)."""
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    name = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown")
    flags = next((line for line in lines if line.startswith("flags")), "")
    isa = [f for f in ("avx512_vnni", "avx512f", "avx2") if f" {f}" in flags]
    return f"{name} ({isa[0] if isa else 'no AVX2'})"


if __name__ == "__main__":
    sys.exit(main())
