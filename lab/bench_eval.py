"""Verification throughput vs bare model forward throughput (goal: ratio >= 0.9).

    python -m lab.bench_eval [--network mbf] [--batch-size 64] [--pairs 300] [--device auto] [--repeats 3]

Writes a synthetic .bin (JPEG-encoded 112x112 images, as insightface's), then times, on the same model
and batch size: (a) ``model(x)`` on ready normalised batches already on the device, in NCHW and in
channels_last layout (the ratio uses the faster one, so the layout ``eval.embed`` picks is no hidden
advantage), and (b) the whole ``eval.verification.verify`` call: reading the .bin, JPEG decoding, flip
test and the 10-fold protocol.
Both count forwarded images per second (verify forwards every image twice: itself and its mirror).
Each is timed ``--repeats`` times, alternating, and the fastest run of each is kept.  Both wall time
and this process's CPU time are reported: on a machine shared with other jobs the CPU-time ratio is the
steadier one (on CPU, decoding costs compute time; on a GPU, wall time is what overlap buys).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from backbones import get_model
from eval.embed import DEFAULT_WORKERS
from eval.verification import verify, write_bin
from utils.distributed import resolve_device


def synthetic_images(count: int, seed: int = 0) -> list[np.ndarray]:
    """Smooth random colour images (JPEG sizes like real 112x112 faces at quality 95)."""
    rng = np.random.default_rng(seed)
    return [cv2.GaussianBlur(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8), (0, 0), 1.5)
            for _ in range(count)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device) -> tuple[float, float]:
    """``(wall seconds, CPU seconds of this process)`` of ``fn()``."""
    _sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    _sync(device)
    return time.perf_counter() - wall, time.process_time() - cpu


@torch.no_grad()
def bare_forward(model: torch.nn.Module, batch_size: int, images: int, device: torch.device,
                 layout: torch.memory_format) -> None:
    """``model(x)`` on ``images`` ready normalised images in batches of ``batch_size``."""
    x = torch.randn(batch_size, 3, 112, 112, device=device).contiguous(memory_format=layout)
    full, rest = divmod(images, batch_size)
    for _ in range(full):
        model(x)
    if rest:
        model(x[:rest])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--network", default="mbf", help="backbone from the registry (random init)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--pairs", type=int, default=300)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    model = get_model(args.network).to(device).eval()
    forwarded = 4 * args.pairs  # 2 images per pair, each also mirrored
    with tempfile.TemporaryDirectory() as tmp:
        path = write_bin(Path(tmp) / "bench.bin", synthetic_images(2 * args.pairs),
                         [k % 2 == 0 for k in range(args.pairs)])
        layouts = {"NCHW": torch.contiguous_format, "channels_last": torch.channels_last}
        for layout in layouts.values():  # warm-up
            bare_forward(model, args.batch_size, 2 * args.batch_size, device, layout)
        bare: dict[str, list[tuple[float, float]]] = {name: [] for name in layouts}
        full = []
        for _ in range(args.repeats):
            for name, layout in layouts.items():
                bare[name].append(_timed(lambda: bare_forward(model, args.batch_size, forwarded, device, layout),
                                         device))
            full.append(_timed(lambda: verify(model, path, device, args.batch_size, workers=args.workers), device))
    print(f"{args.network} batch {args.batch_size} on {device} ({torch.get_num_threads()} torch threads, "
          f"{args.workers} decode threads), {args.pairs} pairs = {forwarded} forwarded images, best of {args.repeats}")
    for k, clock in enumerate(("wall", "CPU")):
        rates = {name: forwarded / min(t[k] for t in times) for name, times in bare.items()}
        eval_rate = forwarded / min(t[k] for t in full)
        print(f"{clock:>4} clock: bare forward " + ", ".join(f"{n} {r:.1f}" for n, r in rates.items()) +
              f" images/s; verify (read .bin, decode, flip test, 10 folds) {eval_rate:.1f} images/s; "
              f"ratio to the faster bare forward {eval_rate / max(rates.values()):.3f} (goal >= 0.9)")


if __name__ == "__main__":
    main()
