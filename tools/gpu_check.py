"""The path users run, run once on a GPU and summed up in one table.

    python3 -m tools.gpu_check [--assets DIR] [--work DIR]     # CUDA torch: at most 8 minutes on one GPU
    python3 -m tools.gpu_check --tiny                          # the same stages at tiny size (CPU: < 3 min)

Stages: the tests marked ``cuda``; a short W8A8 distillation with AMP whose loss must fall, killed after
its first checkpoint and resumed, against an unbroken run (same weights?); QAT step time over the float
step (deploy/minmax, deploy/lsq, quantface); host syncs per training step (``distill.loop.train_step`` and
its callbacks, counted by ``torch.cuda.set_sync_debug_mode`` and by reads through ``Tensor.item`` & co.);
data-path images/s with DataLoader workers; evaluation images/s on a synthetic ``.bin``; the int8 ONNX
export of the trained student and its agreement with it.  Without CUDA it runs the tiny size.

Everything is made here: a random-init teacher (BatchNorm statistics from one pass), smooth random faces,
the ``.bin``.  ``--assets DIR`` gives a folder of face images to train on instead; nothing is downloaded.
Needs torch, onnx, onnxruntime, opencv, numpy and pytest; no virtual environment.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np
import torch
from torch import nn

import quant
from backbones import get_model, input_spec
from data import DataSettings, build_train_batches
from deploy import export_onnx
from deploy.onnx_model import OnnxModel
from distill.callbacks import StepCallbacks
from distill.loop import FINAL_STUDENT, advance, train_step, wrap_ddp
from distill.precision import keep_tail_fp32
from distill.settings import TrainSettings
from distill.setup import prepare_run
from distill.train_state import list_checkpoints
from eval.agreement import embedding_agreement
from eval.verification import verify, write_bin
from utils.checkpoint import read_checkpoint, save_checkpoint
from utils.config import load_config
from utils.distributed import DistEnv
from utils.logging import read_metrics

ROOT = Path(__file__).resolve().parent.parent
MODES = {"deploy/minmax": {}, "deploy/lsq": {"act_observer": "lsq"}, "quantface": {"quant_mode": "quantface"}}
HOST_READS = ("item", "tolist", "__bool__", "__float__", "__int__")


@dataclass(frozen=True)
class Size:
    network: str
    kwargs: dict
    batch: int
    steps: int           # distillation steps (a checkpoint halfway)
    timed_steps: int     # QAT timing steps per variant
    images: int          # training / data-path images
    pairs: int           # evaluation pairs (2 images each)


GPU = Size("r50", {"num_features": 512}, 128, 40, 10, 2048, 2000)
TINY = Size("mbf", {"num_features": 64, "scale": 1}, 2, 4, 2, 2, 16)  # the same two faces every step


class Table:
    """Rows of (stage, result, goal, ok); printed once at the end."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, bool | None]] = []
        self.began = time.perf_counter()

    def add(self, stage: str, result: str, goal: str = "", ok: bool | None = None) -> None:
        self.rows.append((stage, result, goal, ok))
        print(f"  [{time.perf_counter() - self.began:4.0f} s] {stage}: {result}", flush=True)

    def render(self) -> str:
        widths = [max(len(str(r[i])) for r in self.rows + [("stage", "result", "goal", None)]) for i in range(3)]
        lines = [f"{'stage':<{widths[0]}}  {'result':<{widths[1]}}  {'goal':<{widths[2]}}  ok",
                 "  ".join("-" * w for w in widths) + "  --"]
        for stage, result, goal, ok in self.rows:
            mark = "" if ok is None else "yes" if ok else "NO"
            lines.append(f"{stage:<{widths[0]}}  {result:<{widths[1]}}  {goal:<{widths[2]}}  {mark}")
        return "\n".join(lines)


@contextlib.contextmanager
def count_host_syncs() -> Iterator[dict[str, int]]:
    """Count reads of tensor values on the host (``Tensor.item``, ``tolist``, ``bool()``, ``float()``,
    ``int()``: each a device sync on a GPU) and, on CUDA, every synchronizing call torch reports
    (``torch.cuda.set_sync_debug_mode``, C++ reads included)."""
    counts = {"reads": 0, "cuda_syncs": 0}
    originals = {name: getattr(torch.Tensor, name) for name in HOST_READS}

    def counting(real: Callable) -> Callable:
        def read(self, *args, **kwargs):
            counts["reads"] += 1
            return real(self, *args, **kwargs)
        return read

    for name, real in originals.items():
        setattr(torch.Tensor, name, counting(real))
    cuda = torch.cuda.is_available()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.set_sync_debug_mode("warn")
            try:
                yield counts
            finally:
                if cuda:
                    torch.cuda.set_sync_debug_mode("default")
        counts["cuda_syncs"] = sum("synchroniz" in str(w.message) for w in caught)
    finally:
        for name, real in originals.items():
            setattr(torch.Tensor, name, real)


def smooth_faces(count: int, size: int = 112, seed: int = 0) -> list[np.ndarray]:
    """Upsampled noise: images with face-like spatial frequencies (RGB uint8)."""
    rng = np.random.default_rng(seed)
    return [cv2.resize(rng.integers(0, 256, (14, 14, 3), dtype=np.uint8), (size, size),
                       interpolation=cv2.INTER_CUBIC) for _ in range(count)]


def write_inputs(work: Path, size: Size, device: torch.device, assets: Path | None) -> tuple[Path, Path]:
    """(teacher checkpoint, face folder): a seeded random-init teacher, BN statistics from one pass."""
    torch.manual_seed(0)
    model = get_model(size.network, **size.kwargs)
    for bn in (m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)):
        bn.momentum = None
        bn.reset_running_stats()
    with torch.no_grad():
        model.to(device).train()(torch.randn(16, 3, 112, 112, device=device))
    teacher = save_checkpoint(work / "teacher.pt", {k: v.cpu() for k, v in model.state_dict().items()},
                              {"network": size.network, "network_kwargs": size.kwargs})
    if assets is not None:
        return teacher, assets
    faces = work / "faces"
    faces.mkdir(exist_ok=True)
    for i, image in enumerate(smooth_faces(size.images)):
        cv2.imwrite(str(faces / f"{i:05d}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return teacher, faces


def write_run_config(path: Path, size: Size, teacher: Path, faces: Path, device: torch.device, **fields) -> Path:
    """A training config in the real format (Python assignments)."""
    own = {k: v for k, v in size.kwargs.items() if k != "num_features"}
    values = {"network": size.network, "network_kwargs": own, "embedding_size": size.kwargs["num_features"],
              "student_network": size.network, "student_network_kwargs": own,  # from scratch: the loss must fall
              "teacher": str(teacher), "data_source": "folder",
              "data_path": str(faces), "batch_size": size.batch, "num_steps": size.steps, "lr": 0.05,
              "weight_bits": 8, "act_bits": 8, "amp": True, "device": str(device), "calibration_batches": 1,
              "observer_steps": 0,
              "random_flip": True, "num_workers": min(8, os.cpu_count() or 1), "log_every": 1,
              "save_every": size.steps // 2, "keep_last": 2, "bn_mode": "frozen", **fields}
    path.write_text("".join(f"{k} = {v!r}\n" for k, v in values.items()))
    return path


def _train(config: Path, *overrides: str, cpu: bool = False) -> subprocess.Popen:
    # on the CPU (tiny): eager fake quantization, no seconds spent compiling kernels for a few small steps
    env = {**os.environ, "PYTHONPATH": str(ROOT), **({"QUANTFACE_COMPILE": "0"} if cpu else {})}
    return subprocess.Popen([sys.executable, str(ROOT / "train_quantization.py"), str(config), *overrides], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finished(process: subprocess.Popen, what: str) -> None:
    output, _ = process.communicate(timeout=600)
    if process.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{output[-3000:]}")


def stage_cuda_tests(table: Table) -> None:
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py")
                   if "mark.cuda" in p.read_text())
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", *files],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    summary = (done.stdout.strip().splitlines() or ["no output"])[-1].strip("= ")
    failed = done.returncode not in (0, 5) or "failed" in summary or "error" in summary
    if torch.cuda.is_available():
        table.add("tests marked cuda", summary, "all pass", not failed and "skipped" not in summary)
    else:
        table.add("tests marked cuda", summary, "skip without CUDA", not failed)


def stage_distill(table: Table, work: Path, size: Size, teacher: Path, faces: Path, device: torch.device) -> Path:
    """Unbroken run and killed-then-resumed run; returns the unbroken run's output folder."""
    straight = write_run_config(work / "straight.py", size, teacher, faces, device, output=str(work / "straight"))
    killed = write_run_config(work / "killed.py", size, teacher, faces, device, output=str(work / "killed"))
    begin = time.perf_counter()
    cpu = device.type == "cpu"
    reference, victim = _train(straight, cpu=cpu), _train(killed, cpu=cpu)
    deadline = time.monotonic() + 600
    while not list_checkpoints(work / "killed") and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=60)
    resumed_at = list_checkpoints(work / "killed")[-1][0] if list_checkpoints(work / "killed") else 0
    _finished(_train(killed, "resume=true", cpu=cpu), "the resumed run")
    _finished(reference, "the unbroken run")
    losses = [r["loss"] for r in read_metrics(work / "straight" / "metrics.jsonl") if "loss" in r]
    first, last = statistics.mean(losses[:3]), statistics.mean(losses[-3:])
    amp = ", amp" if device.type == "cuda" else ""
    table.add(f"distill {size.network} W8A8{amp}, {size.steps} steps", f"loss {first:.3g} -> {last:.3g} "
              f"({time.perf_counter() - begin:.0f} s, two runs)", "falls", last < first)
    a, _ = read_checkpoint(work / "straight" / FINAL_STUDENT)
    b, _ = read_checkpoint(work / "killed" / FINAL_STUDENT)
    diff = max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())
    same = all(torch.equal(a[k], b[k]) for k in a)
    table.add(f"killed at step {resumed_at}, resumed", "bit-identical weights" if same else f"max |diff| {diff:.2e}",
              "bit-identical", same)
    return work / "straight"


def _step(model: nn.Module, images: torch.Tensor, target: torch.Tensor) -> Callable[[], None]:
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    scaler = torch.amp.GradScaler(images.device.type, enabled=images.is_cuda)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(images.device.type, dtype=torch.float16, enabled=images.is_cuda):
            loss = nn.functional.mse_loss(model(images).float(), target)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    return step


def _seconds(step: Callable[[], None], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    begin = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - begin


def stage_qat_ratio(table: Table, size: Size, device: torch.device) -> None:
    """Median step time of each W8A8 student (observers frozen) over the float model's, interleaved."""
    torch.manual_seed(0)
    model = get_model(size.network, **size.kwargs).to(device).train()
    images = torch.randn(max(size.batch, 2), 3, 112, 112, device=device)
    with torch.no_grad():
        target = model(images).float()
    variants = {"float": _step(model, images, target)}
    for mode, extra in MODES.items():
        student = quant.quantize_model(model, quant.QuantConfig(weight_bits=8, act_bits=8, **extra)).train()
        variants[mode] = _step(student, images, target)
        with torch.no_grad():
            student(images)  # one observing pass sets the ranges (LSQ then learns them)
        quant.set_observers(student, False)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for i in range(1 + size.timed_steps):  # one warm-up round (kernel choice, allocator)
        for name, step in variants.items():
            seconds = _seconds(step, device)
            if i >= 1:
                times[name].append(seconds)
    base = statistics.median(times.pop("float"))
    for mode, values in times.items():
        ratio = statistics.median(values) / base
        goal = ("<= 1.3" if device.type == "cuda" else "<= 1.3 on CUDA") if mode == "deploy/minmax" else ""
        table.add(f"QAT/float step {mode}", f"{ratio:.2f}x (float {base * 1e3:.0f} ms, batch {images.shape[0]})",
                  goal, ratio <= 1.3 if goal and device.type == "cuda" else None)


def stage_host_syncs(table: Table, work: Path, size: Size, teacher: Path, faces: Path, device: torch.device) -> None:
    """Host syncs of ``train_step`` and its callbacks (a metrics line every third step), LSQ activations."""
    config = write_run_config(work / "syncs.py", size, teacher, faces, device, output=str(work / "syncs"),
                              act_observer="lsq", num_steps=100, save_every=1000, log_every=3)
    run = prepare_run(TrainSettings.from_config(load_config(config)), DistEnv(0, 1, 0, device))
    if run.amp:
        keep_tail_fp32(run.student)
    callbacks = StepCallbacks(run, time.time())
    model, loss_fn = wrap_ddp(run)
    batches, epoch = [], 0
    while len(batches) < 5:  # fetched first: loading data is not part of the step
        batches += list(run.data.labelled_epoch(epoch))[:5 - len(batches)]
        epoch += 1
    totals = {"reads": 0, "cuda_syncs": 0}
    for index, (images, labels) in enumerate(batches):
        with count_host_syncs() as counts:
            loss, feature_loss = train_step(run, model, loss_fn, images, index, labels)
            advance(run, index)
            callbacks.after_step(loss, feature_loss)
        if index:  # the first step also compiles and observes
            totals = {k: totals[k] + counts[k] for k in totals}
    callbacks.close()
    steps = len(batches) - 1
    worst = max(totals.values()) / steps
    detail = f"{totals['cuda_syncs'] / steps:.1f} device, " if device.type == "cuda" else ""
    table.add("host syncs / training step", f"{detail}{totals['reads'] / steps:.1f} host reads (deploy/lsq)",
              "<= 5", worst <= 5)


def stage_data(table: Table, size: Size, teacher: Path, faces: Path, device: torch.device, work: Path) -> None:
    workers = min(8, os.cpu_count() or 1)
    cfg = load_config(write_run_config(work / "data.py", size, teacher, faces, device, output=str(work / "data"),
                                       batch_size=max(size.batch, 2), num_workers=workers))
    batches = build_train_batches(DataSettings.from_config(cfg), input_spec(size.network, size.kwargs), device,
                                  workers=workers)
    count, begin = 0, time.perf_counter()
    for images, _ in batches.labelled_epoch(0):
        count += len(images)
    if device.type == "cuda":
        torch.cuda.synchronize()
    rate = count / (time.perf_counter() - begin)
    table.add("data path (folder, PNG)", f"{rate:,.0f} images/s, {workers} workers", "", None)


def stage_eval(table: Table, work: Path, size: Size, teacher: Path, device: torch.device) -> None:
    images = smooth_faces(2 * size.pairs, seed=1)
    bin_path = write_bin(work / "synthetic.bin", images, [i % 2 == 0 for i in range(size.pairs)])
    model, _ = quant.load_any_model(teacher, size.network, map_location=device)
    verify(model, bin_path, device, 256)  # warm-up: kernels chosen for these shapes
    result = verify(model, bin_path, device, 256)
    rate = result["images"] / result["embed_seconds"]
    goal = ">= 3000" if size.network == "r50" and device.type == "cuda" else ""
    table.add(f"evaluation {size.network} float, flip test", f"{rate:,.0f} images/s (batch 256)", goal,
              rate >= 3000 if goal else None)


def stage_export(table: Table, work: Path, run_dir: Path) -> None:
    student, meta = quant.load_any_model(run_dir / FINAL_STUDENT)
    path = export_onnx(student.eval(), work / "student_int8.onnx", meta=meta)
    faces = np.stack(smooth_faces(32, seed=2))
    x = student.input_spec.normalise(torch.from_numpy(faces).permute(0, 3, 1, 2))
    with torch.no_grad():
        ours = student(x).numpy()
    theirs = OnnxModel(path)(x).numpy()
    agreement = embedding_agreement(ours, theirs)
    table.add("int8 ONNX export of the student", f"cosine to the student mean {agreement['cosine_mean']:.4f}, min "
              f"{agreement['cosine_min']:.4f} ({path.stat().st_size / 1e6:.1f} MB)", "mean >= 0.99",
              agreement["cosine_mean"] >= 0.99)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--assets", type=Path, help="a folder of face images to train on (default: made here)")
    parser.add_argument("--work", type=Path, help="where to write runs and files (default: a temporary folder)")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (what a machine without CUDA runs)")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    device, size = (torch.device("cuda"), GPU) if cuda and not args.tiny else (torch.device("cpu"), TINY)
    began = time.perf_counter()
    name = torch.cuda.get_device_name() if cuda else f"CPU ({os.cpu_count()} cores)"
    print(f"gpu_check: {name}, torch {torch.__version__}, {size.network}, batch {size.batch}", flush=True)
    table = Table()
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as scratch:
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        teacher, faces = write_inputs(work, size, device, args.assets)
        stage_cuda_tests(table)
        run_dir = stage_distill(table, work, size, teacher, faces, device)
        stage_qat_ratio(table, size, device)
        stage_host_syncs(table, work, size, teacher, faces, device)
        stage_data(table, size, teacher, faces, device, work)
        stage_eval(table, work, size, teacher, device)
        stage_export(table, work, run_dir)
    seconds = time.perf_counter() - began  # tiny: a goal for an idle machine, not checked (shared CPUs vary)
    table.add("wall time", f"{seconds:.0f} s", "<= 480" if size is GPU else "<= 180 (idle CPU)",
              seconds <= 480 if size is GPU else None)
    print(f"\n{name}, torch {torch.__version__} (CUDA {torch.version.cuda}), {size.network}\n{table.render()}")
    if args.work:
        (args.work / "gpu_check.json").write_text(json.dumps(table.rows, indent=1) + "\n")
    return 0 if all(ok is not False for *_, ok in table.rows) else 1


if __name__ == "__main__":
    sys.exit(main())
