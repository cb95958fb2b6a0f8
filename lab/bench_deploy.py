"""Deployment speed, memory and size: fp32 PyTorch, fp32 onnxruntime, onnxruntime's quantize_static and ours.

    python -m lab.bench_deploy [--networks r18 r50 mbf vargfacenet] [--demo] [--batches 1 32] [--threads 1 2]

Per backbone (random weights, BatchNorm statistics from one pass over generated faces: speed does not
depend on the values) the float model is exported to fp32 ONNX as a user would (``PRelu`` nodes, as
``torch.onnx.export`` writes them) and quantized by onnxruntime's ``quantize_static`` (QDQ, per-channel
int8 weights, uint8 activations, 64 generated faces); ours: the same float model through
``deploy.export_onnx`` (PReLU as ``a*x + (1-a)*relu(x)``) and the W8A8 students of
``quant.post_training_quantize`` (deploy placement, BatchNorm folded) in the variants of ``OURS``.
The reference: each network's plain twin (every PReLU a ReLU, every BatchNorm removed: Conv + ReLU and
residual adds, which onnxruntime runs as integer kernels from end to end) in fp32 and through ``quantize_static``;
its ratio, ``plain int8 / plain fp32``, is what this CPU's int8 path gives that architecture at best.
``--demo`` adds the demo's pretrained teacher and its W8A8 student (the trained
``work_dirs/demo_mbf_w8a8/student_final.pt`` when present, else calibration only).  Each variant is timed in
its own process (images/s at every batch size and thread count, best of ``--repeats`` timed runs after a
warm-up; peak resident memory of that process), so one variant's memory never counts against another.
The table ends in the ratios ours / fp32 onnxruntime and ours / quantize_static.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

import quant
from assets import ensure_asset
from backbones import get_model, load_float_model
from backbones.spec import InputSpec
from data import GeneratedFaces
from deploy import OnnxModel, export_onnx
from deploy.baseline import quantize_static_baseline
from deploy.cpu import cpu_description
from deploy.timing import images_per_s
from utils.checkpoint import save_checkpoint

# ours: the W8A8 deploy placement, changed as listed (QuantConfig fields, export_onnx arguments): 7-bit weights
# export in int8 containers (exact on every CPU), ``int8_weights`` puts 8-bit ones there (exact with VNNI only)
OURS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "ours int8": ({}, {}), "ours int8 fci": ({"float_conv_inputs": True}, {}),
    "ours int8 I8w fci": ({"float_conv_inputs": True}, {"int8_weights": True}),
    "ours int8 PReLU-in": ({"prelu_input": True}, {}),
    "ours int8 W7 PReLU-in": ({"weight_bits": 7, "prelu_input": True}, {}),
    "ours int8 I8w PReLU-in": ({"prelu_input": True}, {"int8_weights": True})}
PLAIN = ("plain fp32", "plain quantize_static")  # the reference: ``plain_twin`` in fp32 and through quantize_static
VARIANTS = ("fp32 pytorch", "fp32 onnxruntime", "fp32 ours", "quantize_static int8", *OURS, *PLAIN)
# pretrained teachers: asset, and the demo's trained W8A8 student when present (else calibration only)
PRETRAINED = {"demo": ("mobilefacenet_tflite", Path("work_dirs/demo_mbf_w8a8/student_final.pt")),
              "dlib": ("dlib_resnet", Path("work_dirs/demo_dlib_w8a8/student_final.pt"))}


def _faces(spec, count: int) -> list[torch.Tensor]:
    generator = GeneratedFaces(ensure_asset("gan_face_generate"), count, seed=11, size=spec.size,
                               alignment=spec.alignment)
    return [spec.normalise(generator.generate(range(i, min(i + 16, count)))) for i in range(0, count, 16)]


def _with_statistics(model: torch.nn.Module, faces: list[torch.Tensor]) -> torch.nn.Module:
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)):
        bn.momentum = None
        bn.reset_running_stats()
    with torch.no_grad():
        model.train()(torch.cat(faces))
    return model.eval()


def plain_twin(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every PReLU a ReLU and every BatchNorm removed.  Another function (timed only):
    onnxruntime's best case, every conv fused with its ReLU into one integer kernel and nothing left in float."""
    twin = copy.deepcopy(model)
    for parent in list(twin.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.PReLU):
                setattr(parent, name, nn.ReLU())
            elif isinstance(child, nn.modules.batchnorm._BatchNorm):
                setattr(parent, name, nn.Identity())
    return twin.eval()


def build_variants(name: str, work: Path) -> dict[str, Path]:
    """The model files of one network (the fp32 PyTorch one as a checkpoint).  Ours: one calibration per
    entry of ``OURS``; ``W7``: 7-bit weights, which export in int8 containers (exact on CPUs without VNNI),
    where 8-bit weights need uint8 ones; ``I8w``: 8-bit weights in int8 containers (exact with VNNI);
    ``PReLU-in``: each PReLU's input quantized too (``quantize_prelu_input``), so the conv before it runs as
    an integer kernel; ``fci``: the inputs of the convs a (float) PReLU reads left float too
    (``float_conv_inputs``).  A trained demo student replaces the variant of its own placement.  ``plain``: the
    reference, ``plain_twin`` of the teacher in fp32 and through ``quantize_static``."""
    pretrained = name in PRETRAINED
    if pretrained:
        teacher = load_float_model(ensure_asset(PRETRAINED[name][0])).eval()
    else:
        torch.manual_seed(0)
        teacher = _with_statistics(get_model(name), _faces(get_model(name).input_spec, 64))
    faces = _faces(teacher.input_spec, 64)
    qcfg = quant.QuantConfig(bn_mode="frozen" if pretrained else "fold", equalize=pretrained,
                             bias_correction=pretrained)
    students = {variant: quant.post_training_quantize(teacher, dataclasses.replace(qcfg, **change), faces,
                                                      len(faces)).student.eval()
                for variant, (change, _) in OURS.items()}
    if pretrained and PRETRAINED[name][1].is_file():
        trained, meta = quant.load_any_model(PRETRAINED[name][1])  # one read: the student and its placement
        students[f"ours int8{' fci' if meta['quant'].get('float_conv_inputs') else ''}"] = trained.eval()
    files = {"fp32 pytorch": work / f"{name}.pt", "fp32 onnxruntime": work / f"{name}_fp32.onnx",
             "fp32 ours": work / f"{name}_fp32_ours.onnx", "quantize_static int8": work / f"{name}_qs.onnx"}
    files.update({variant: work / f"{name}_{variant.replace(' ', '_')}.onnx" for variant in (*OURS, *PLAIN)})
    if pretrained:
        files["fp32 pytorch"] = ensure_asset(PRETRAINED[name][0])
    else:
        save_checkpoint(files["fp32 pytorch"], teacher.state_dict(), {"network": name})
    export_onnx(teacher, files["fp32 onnxruntime"], native_prelu=True)
    export_onnx(teacher, files["fp32 ours"])
    quantize_static_baseline(files["fp32 onnxruntime"], faces, files["quantize_static int8"])
    for variant, student in students.items():
        export_onnx(student, files[variant], **OURS[variant][1])
    export_onnx(plain_twin(teacher), files["plain fp32"])
    quantize_static_baseline(files["plain fp32"], faces, files["plain quantize_static"])
    return files


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(path: Path, batches: list[int], threads: list[int], repeats: int, size: int) -> dict[str, Any]:
    """Images/s per (batch, threads) and the peak RSS of this process (run in a fresh process)."""
    rates = {}
    for count in threads:
        torch.set_num_threads(count)
        if path.suffix == ".onnx":  # the input is timed already normalised: the spec only gives the side
            model = OnnxModel(path, threads=count, spec=InputSpec(size=size))
        else:
            model = load_float_model(path).eval()
        for batch in batches:
            rates[f"b{batch}t{count}"] = images_per_s(model, batch, size, repeats=repeats)
    return {"rates": rates, "peak_mb": _peak_rss_mb(), "size_mb": path.stat().st_size / 1e6}


def _child(path: Path, size: int, args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, "-m", "lab.bench_deploy", "--measure", str(path), "--size", str(size),
               "--repeats", str(args.repeats),
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

    def ratios(variants: dict[str, dict[str, Any]], mine: str, base: str) -> str:
        return " ".join(f"{variants[mine]['rates'][k] / variants[base]['rates'][k]:9.2f}" for k in keys)
    for name, variants in results.items():
        for mine in ("fp32 ours", *OURS):
            for base in ("fp32 onnxruntime", "quantize_static int8"):
                row = ratios(variants, mine, base)
                lines.append(f"{name:<12} {mine.removeprefix('ours '):<18} / {base:<22} {row}")
        lines.append(f"{name:<12} {'plain int8':<18} / {'plain fp32':<22} "
                     f"{ratios(variants, 'plain quantize_static', 'plain fp32')}")
        ours = variants["ours int8"]
        lines.append(f"{name:<12} size ours / fp32 onnx      {ours['size_mb'] / variants['fp32 onnxruntime']['size_mb']:9.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--networks", nargs="*", default=["r18", "r50", "mbf", "vargfacenet"])
    parser.add_argument("--demo", action="store_true", help="also the pretrained teachers (the demo's MobileFaceNet "
                        "and dlib's ResNet-29) and their students")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per setting (best is kept)")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # the child process's job
    parser.add_argument("--size", type=int, default=112, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure, args.batches, args.threads, args.repeats, args.size)))
        return 0
    names = list(args.networks) + (list(PRETRAINED) if args.demo else [])
    results: dict[str, dict[str, dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-deploy-") as tmp:
        for name in names:
            files = build_variants(name, Path(tmp))
            size = load_float_model(files["fp32 pytorch"]).input_spec.size
            results[name] = {variant: _child(files[variant], size, args) for variant in VARIANTS}
            print(f"measured {name}\n{report({name: results[name]}, args)}", flush=True)
    print(f"torch {torch.__version__}, onnxruntime {__import__('onnxruntime').__version__}, cpu "
          f"{cpu_description()}\n{report(results, args)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
