"""Training throughput of the real QuantFace loop (``train_quantization.train``) for W8A8 students.

    python -m lab.bench_train --networks mbf r18 --batch-size 32 --steps 12

Per backbone: a seeded random-init teacher checkpoint and a folder of images are written to a temp
folder, then the training script's own ``train()`` runs ``--steps`` steps (teacher forward, student
forward/backward, distillation loss, clipping, SGD, observers frozen after ``--observer-steps``).
Reported: images/s of the whole loop (median of per-step rates after the observation phase and one
more warm-up step), and the step-time ratio of the quantized student vs the same model in float
from ``lab.bench_quant_step`` (interleaved in this run, so machine load affects both alike).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch

from backbones import get_model
from distill import train
from lab.bench_quant_step import bench_network
from utils.checkpoint import save_checkpoint
from utils.config import load_config
from utils.distributed import init_distributed
from utils.logging import read_metrics


def _write_images(folder: Path, count: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        small = rng.integers(0, 256, (14, 14, 3), dtype=np.uint8)
        cv2.imwrite(str(folder / f"{i:05d}.png"), cv2.resize(small, (112, 112), interpolation=cv2.INTER_CUBIC))
    return folder


def loop_throughput(network: str, args: argparse.Namespace, work: Path) -> float:
    """Median images/s of ``train()`` after warm-up, for a W8A8 student of ``network``."""
    torch.manual_seed(0)
    teacher = save_checkpoint(work / f"{network}.pt", get_model(network).state_dict(), {"network": network})
    images = _write_images(work / "images", args.batch_size * 2)
    overrides = [f"network={network}", "embedding_size=512", f"teacher={teacher}", "data_source=folder",
                 f"data_path={images}", f"num_workers={args.num_workers}", f"batch_size={args.batch_size}",
                 f"num_steps={args.steps}", f"observer_steps={args.observer_steps}", "log_every=1",
                 f"save_every={args.steps}", f"quant_mode={args.mode}", "weight_bits=8", "act_bits=8",
                 f"device={args.device}", f"output={work / network}"]
    cfg = load_config(None, overrides)
    train(cfg, init_distributed(cfg.device))
    rates = [r["images_per_s"] for r in read_metrics(work / network / "metrics.jsonl")
             if "images_per_s" in r and r["step"] > args.observer_steps + 1]
    return statistics.median(rates)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--networks", nargs="+", default=["mbf", "r18"], help="backbone names")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=12, help="training steps per network")
    parser.add_argument("--observer-steps", type=int, default=2, help="steps with range observation first")
    parser.add_argument("--ratio-steps", type=int, default=6, help="timed steps of the float/quantized comparison")
    parser.add_argument("--mode", default="deploy", choices=["deploy", "quantface"], help="quantizer placement")
    parser.add_argument("--num-workers", type=int, default=0, help="image decoding workers")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.steps <= args.observer_steps + 2:
        parser.error("--steps must exceed --observer-steps + 2 (warm-up steps are not timed)")
    device = torch.device(args.device)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch_size}, "
          f"W8A8 {args.mode}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        for name in args.networks:
            images_per_s = loop_throughput(name, args, Path(tmp))
            times = bench_network(name, args.batch_size, args.ratio_steps, 1, [args.mode], device)
            clock = "wall" if device.type == "cuda" else "cpu"  # process CPU time: robust to other load
            rows.append((name, images_per_s, times[f"{args.mode} frozen"][f"{clock}_ratio"],
                         times[f"{args.mode} observing"][f"{clock}_ratio"]))
    print(f"\n{'network':<10} {'train img/s':>12} {'step ratio q/float':>20} {'(observing)':>12}")
    for name, images_per_s, frozen, observing in rows:
        print(f"{name:<10} {images_per_s:12.1f} {frozen:20.2f} {observing:12.2f}")


if __name__ == "__main__":
    main()
