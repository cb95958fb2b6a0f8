"""Deployment speed, memory and size on onnxruntime and OpenVINO: fp32, quantize_static, NNCF and ours.

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
Every ONNX file runs on both runtimes (``@ort``: onnxruntime, ``@ov``: OpenVINO's CPU plugin); NNCF's
``nncf.quantize`` of the user's fp32 file (OpenVINO's own post-training int8, 64 generated faces, an IR
file) runs on OpenVINO only, and is skipped with a note where ``nncf`` is not installed (a lab baseline,
never a dependency).  For the pretrained teachers the agreement is measured too: each int8 file on each
runtime against its student's own forward, and NNCF's model against the teacher (cosine mean / min on the
real photos).  The ratios are taken against the fastest fp32 runtime of each network at each setting
(any fp32 file on either runtime), named in the table.
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
from deploy.cpu import cpu_description, isa_flags
from deploy.openvino_runtime import OPENVINO_MISSING, OpenVinoModel
from lab.realfaces import aligned_real_faces
from deploy.timing import images_per_s
from utils.checkpoint import save_checkpoint

# ours: the W8A8 deploy placement, changed as listed (QuantConfig fields, export_onnx arguments): 7-bit weights
# export in int8 containers (exact on every CPU), ``int8_weights`` puts 8-bit ones there (exact with VNNI only)
OURS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "ours int8": ({}, {}), "ours int8 fci": ({"float_conv_inputs": True}, {}),
    "ours int8 I8w fci": ({"float_conv_inputs": True}, {"int8_weights": True}),
    "ours int8 PReLU-in": ({"quantize_prelu_input": True}, {}),
    "ours int8 W7 PReLU-in": ({"weight_bits": 7, "quantize_prelu_input": True}, {}),
    "ours int8 I8w PReLU-in": ({"quantize_prelu_input": True}, {"int8_weights": True})}
PLAIN = ("plain fp32", "plain quantize_static")  # the reference: ``plain_twin`` in fp32 and through quantize_static
VARIANTS = ("fp32 pytorch", "fp32 onnxruntime", "fp32 ours", "quantize_static int8", *OURS, *PLAIN)
FP32 = ("fp32 onnxruntime", "fp32 ours")  # the float files: the fastest of them on either runtime is the baseline
NNCF = "nncf int8"
RUNTIMES = {"ort": "onnxruntime", "ov": "openvino"}
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


def build_variants(name: str, work: Path) -> tuple[dict[str, Path], dict[str, nn.Module]]:
    """The model files of one network (the fp32 PyTorch one as a checkpoint).  Ours: one calibration per
    entry of ``OURS``; ``W7``: 7-bit weights, which export in int8 containers (exact on CPUs without VNNI),
    where 8-bit weights need uint8 ones; ``I8w``: 8-bit weights in int8 containers (exact with VNNI);
    ``PReLU-in``: each PReLU's input quantized too (``quantize_prelu_input``), so the conv before it runs as
    an integer kernel; ``fci``: the inputs of the convs a (float) PReLU reads left float too
    (``float_conv_inputs``).  A trained demo student replaces the variant of its own placement.  ``plain``: the
    reference, ``plain_twin`` of the teacher in fp32 and through ``quantize_static``.  NNCF: ``nncf_int8`` of the
    user's fp32 file.  Also returns the teacher and the students (for the agreement)."""
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
    nncf_file = nncf_int8(files["fp32 onnxruntime"], faces, work / f"{name}_nncf.xml")
    if nncf_file is not None:
        files[NNCF] = nncf_file
    return files, {"teacher": teacher, **students}


def nncf_int8(fp32_onnx: Path, faces: list[torch.Tensor], output: Path) -> Path | None:
    """OpenVINO's own post-training int8 of the user's fp32 file: ``nncf.quantize`` (its defaults: the
    placement and ranges NNCF picks for OpenVINO's CPU plugin) calibrated on ``faces``, written as an
    OpenVINO IR; None (and a note) where nncf or openvino is not installed."""
    try:
        import nncf
        import openvino as ov
    except ImportError as exc:
        print(f"NNCF baseline skipped: {exc} (pip install nncf openvino)", flush=True)
        return None
    model = ov.Core().read_model(str(fp32_onnx))
    dataset = nncf.Dataset([batch.numpy() for batch in faces])
    ov.save_model(nncf.quantize(model, dataset, subset_size=len(faces)), str(output))
    return output


def agreement(files: dict[str, Path], models: dict[str, nn.Module]) -> dict[str, tuple[float, float]]:
    """Cosine mean / min on the real photos: each int8 file of ours on each runtime against its student's own
    forward (is the file exact there?), NNCF's model against the teacher."""
    teacher = models["teacher"]
    images, _, _ = aligned_real_faces(spec=teacher.input_spec)
    x = teacher.input_spec.normalise(torch.from_numpy(images).permute(0, 3, 1, 2))
    out: dict[str, tuple[float, float]] = {}

    def cos(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
        c = torch.nn.functional.cosine_similarity(a, b)
        return float(c.mean()), float(c.min())
    with torch.no_grad():
        for variant in OURS:
            runners = {"ort": OnnxModel(files[variant])}
            if not OPENVINO_MISSING:
                runners["ov"] = OpenVinoModel(files[variant])
            for runtime, model in runners.items():
                out[f"{variant} @{runtime}"] = cos(model(x), models[variant](x))
        if NNCF in files:
            out[f"{NNCF} @ov (to the teacher)"] = cos(OpenVinoModel(files[NNCF], spec=teacher.input_spec)(x), teacher(x))
    return out


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(path: Path, runtime: str, batches: list[int], threads: list[int], repeats: int,
            size: int) -> dict[str, Any]:
    """Images/s per (batch, threads) and the peak RSS of this process (run in a fresh process)."""
    rates = {}
    for count in threads:
        torch.set_num_threads(count)
        if runtime == "ov":  # the input is timed already normalised: the spec only gives the side
            model = OpenVinoModel(path, threads=count, spec=InputSpec(size=size))
        elif path.suffix == ".onnx":
            model = OnnxModel(path, threads=count, spec=InputSpec(size=size))
        else:
            model = load_float_model(path).eval()
        for batch in batches:
            rates[f"b{batch}t{count}"] = images_per_s(model, batch, size, repeats=repeats)
    files = [path, path.with_suffix(".bin")] if path.suffix == ".xml" else [path]  # an IR's weights
    return {"rates": rates, "peak_mb": _peak_rss_mb(), "size_mb": sum(f.stat().st_size for f in files) / 1e6}


def measure_in_child(path: Path, runtime: str, size: int, batches: list[int], threads: list[int], repeats: int
                     ) -> dict[str, Any]:
    """``measure`` in a fresh process: each file's peak memory is its own, and OpenVINO's native thread pool
    stays out of the caller's process."""
    command = [sys.executable, "-m", "lab.bench_deploy", "--measure", str(path), "--runtime", runtime,
               "--size", str(size), "--repeats", str(repeats),
               "--batches", *map(str, batches), "--threads", *map(str, threads)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    if run.returncode != 0:
        raise RuntimeError(f"measuring {path} on {runtime} failed:\n{run.stderr[-2000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def runs(files: dict[str, Path], variants: list[str]) -> list[tuple[str, str]]:
    """(variant, runtime) pairs to time, of ``variants`` and the float files (the baseline): every ONNX file on
    onnxruntime and, when installed, OpenVINO; the PyTorch checkpoint on torch, NNCF's IR on OpenVINO."""
    pairs = [("fp32 pytorch", "torch")]
    for variant in (v for v in VARIANTS[1:] if v in variants or v in FP32):
        pairs += [(variant, "ort")] + ([] if OPENVINO_MISSING else [(variant, "ov")])
    return pairs + ([(NNCF, "ov")] if NNCF in files else [])


def _fastest_fp32(variants: dict[str, dict[str, Any]], key: str) -> str:
    return max((label for label in variants if label.split(" @")[0] in FP32), key=lambda l: variants[l]["rates"][key])


def report(results: dict[str, dict[str, dict[str, Any]]], agree: dict[str, dict[str, tuple[float, float]]],
           args: argparse.Namespace) -> str:
    """The images/s table, then per network and setting the fastest fp32 runtime and each int8 file's ratio to
    it (and to NNCF's model), then the agreement of the pretrained teachers' files."""
    keys = [f"b{b}t{t}" for t in args.threads for b in args.batches]
    lines = [f"{'network':<12} {'variant @runtime':<30} " + " ".join(f"{k:>9}" for k in keys) +
             f" {'peak MB':>8} {'file MB':>8}"]
    for name, variants in results.items():
        for label, r in variants.items():
            lines.append(f"{name:<12} {label:<30} " + " ".join(f"{r['rates'][k]:9.1f}" for k in keys) +
                         f" {r['peak_mb']:8.0f} {r['size_mb']:8.2f}")
    lines += ["", "fastest fp32 (" + ", ".join(keys) + ")"]
    for name, variants in results.items():
        lines.append(f"{name:<12} " + " ".join(f"{_fastest_fp32(variants, k):>22}" for k in keys))
    lines += ["", "images/s ratios to the fastest fp32 runtime (" + ", ".join(keys) + ")" + ("; to nncf int8 @ov" if any(f"{NNCF} @ov" in v for v in results.values()) else "")]
    for name, variants in results.items():
        for label, r in variants.items():
            if label.split(" @")[0] in (*FP32, "fp32 pytorch"):
                continue
            row = " ".join(f"{r['rates'][k] / variants[_fastest_fp32(variants, k)]['rates'][k]:9.2f}" for k in keys)
            nncf = variants.get(f"{NNCF} @ov")
            versus = ("   / nncf " + " ".join(f"{r['rates'][k] / nncf['rates'][k]:6.2f}" for k in keys)) if nncf else ""
            lines.append(f"{name:<12} {label:<30} / fastest fp32 {row}{versus}")
        ours = variants["ours int8 @ort"]
        lines.append(f"{name:<12} size ours / fp32 onnx      "
                     f"{ours['size_mb'] / variants['fp32 onnxruntime @ort']['size_mb']:9.3f}")
    if agree:
        lines += ["", "agreement on the real photos, cosine mean / min (ours: file vs its student; nncf: vs the teacher)"]
        for name, rows in agree.items():
            lines += [f"{name:<12} {label:<40} {mean:.5f} / {low:.5f}" for label, (mean, low) in rows.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--networks", nargs="*", default=["r18", "r50", "mbf", "vargfacenet"])
    parser.add_argument("--demo", action="store_true", help="also the pretrained teachers (the demo's MobileFaceNet "
                        "and dlib's ResNet-29) and their students")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per setting (best is kept)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS, metavar="VARIANT",
                        help="the files to time (the fp32 files always are: they are the baseline); default: all of "
                             + ", ".join(VARIANTS))
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # the child process's job
    parser.add_argument("--runtime", default="ort", choices=["torch", "ort", "ov"], help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=112, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure, args.runtime, args.batches, args.threads, args.repeats, args.size)))
        return 0
    if OPENVINO_MISSING:
        print(f"OpenVINO columns skipped: {OPENVINO_MISSING}", flush=True)
    names = list(args.networks) + (list(PRETRAINED) if args.demo else [])
    results: dict[str, dict[str, dict[str, Any]]] = {}
    agree: dict[str, dict[str, tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-deploy-") as tmp:
        for name in names:
            files, models = build_variants(name, Path(tmp))
            size = models["teacher"].input_spec.size
            if name in PRETRAINED:
                agree[name] = agreement(files, models)
            results[name] = {f"{variant} @{runtime}": measure_in_child(files[variant], runtime, size, args.batches,
                                                                     args.threads, args.repeats)
                             for variant, runtime in runs(files, args.variants)}
            print(f"measured {name}\n{report({name: results[name]}, {name: agree.get(name, {})}, args)}", flush=True)
    versions = f"torch {torch.__version__}, onnxruntime {__import__('onnxruntime').__version__}"
    if not OPENVINO_MISSING:
        versions += f", openvino {__import__('openvino').__version__}"
    print(f"{versions}, cpu {cpu_description()} ({isa_flags()})\n{report(results, agree, args)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
