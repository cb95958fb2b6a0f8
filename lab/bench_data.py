"""Is the data pipeline fast enough?  Images/s of each data source vs forward+backward of a backbone.

    python -m lab.bench_data [--count 640] [--batch-size 32] [--workers 2] [--network mbf] [--device auto]

Writes ``count`` generated faces as a PNG folder (``tools.generate_faces``) and as a JPEG RecordIO
(quality 95, as insightface's faces_emore), then times one epoch of ``build_train_batches`` for the
folder, the RecordIO and the on-the-fly generator (first batch excluded: worker start-up), and the
training step of ``network`` (forward + backward + SGD step on random input).  A ratio >= 1 means the
source keeps up with the network.  On a CPU-only machine workers and network would share the cores
during training, so the CPU ratios are upper bounds; on a GPU the network runs on the device.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import torch

from backbones import get_model, input_spec
from data import DataSettings, build_train_batches
from data.recordio import write_recordio
from tools.generate_faces import main as generate_faces
from utils.config import load_config
from utils.distributed import resolve_device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def source_rate(cfg, device: torch.device) -> float:
    """Images/s over one epoch of ``build_train_batches`` for the config's network (after the first batch)."""
    batches = build_train_batches(DataSettings.from_config(cfg), input_spec(cfg.network), device,
                                  workers=cfg.num_workers)
    iterator = batches.epoch(0)
    first = next(iterator)
    _sync(device)
    start, count = time.perf_counter(), 0
    for batch in iterator:
        count += len(batch)
    _sync(device)
    if count == 0:
        raise SystemExit(f"--count must give at least 2 batches of {len(first)}")
    return count / (time.perf_counter() - start)


def model_rate(network: str, batch_size: int, size: int, device: torch.device, steps: int = 8) -> float:
    """Images/s of forward + backward + SGD step of ``network`` at ``batch_size`` (after 2 warm-up steps)."""
    model = get_model(network).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images = torch.randn(batch_size, 3, size, size, device=device)
    for step in range(steps + 2):
        if step == 2:
            _sync(device)
            start = time.perf_counter()
        loss = model(images).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    _sync(device)
    return steps * batch_size / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> dict[str, float]:
    defaults = load_config()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=640, help="faces written and read per source")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=defaults.num_workers, help="DataLoader workers")
    parser.add_argument("--network", default="mbf", help="backbone whose training step is the yardstick")
    parser.add_argument("--weights", default=defaults.generator_weights, help="DCGAN weights.tar")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)

    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        folder = Path(tmp) / "faces"
        generate_faces(["--out", str(folder), "--count", str(args.count), "--weights", args.weights,
                        "--device", str(device)])
        jpeg = [cv2.imencode(".jpg", cv2.imread(str(p)), [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
                for p in sorted(folder.glob("*.png"))]
        write_recordio(Path(tmp) / "train.rec", [(data, 0.0) for data in jpeg])
        common = [f"network={args.network}", f"batch_size={args.batch_size}", f"num_workers={args.workers}", f"generator_weights={args.weights}",
                  f"samples_per_epoch={args.count}"]
        rates = {
            f"folder (PNG, {args.workers} workers)": source_rate(
                load_config(None, common + ["data_source=folder", f"data_path={folder}"]), device),
            f"recordio (JPEG q95, {args.workers} workers)": source_rate(
                load_config(None, common + ["data_source=recordio", f"data_path={tmp}"]), device),
            f"generator (on {device})": source_rate(load_config(None, common + ["data_source=generator"]), device),
        }
    network = model_rate(args.network, args.batch_size, input_spec(args.network).size, device)
    print(f"\n{args.network} forward+backward+step, batch {args.batch_size} on {device}: {network:8.1f} images/s")
    print(f"{'source':40s} {'images/s':>10s} {'ratio to ' + args.network:>14s}")
    for name, rate in rates.items():
        print(f"{name:40s} {rate:10.1f} {rate / network:14.2f}")
    return {**rates, args.network: network}


if __name__ == "__main__":
    main()
