"""Write DCGAN faces to a folder (for data_source="folder") plus an 8x8 contact sheet of the first 64.

    python -m tools.generate_faces --out data/faces --count 528000 [--seed 0] [--weights PATH]
        [--batch-size 256] [--size 112] [--format png|jpg] [--device auto]

Face ``i`` is file ``{i:07d}.png`` and equals ``GeneratedFaces(seed=S)`` face ``i`` pixel for pixel
(PNG), so a folder written here and the on-the-fly generator give the same training data.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from backbones import input_spec
from data.generated import GeneratedFaces
from utils.config import load_config
from utils.distributed import resolve_device
from utils.errors import QuantFaceError, report
from utils.fileio import check_writable_dir


def contact_sheet(images: np.ndarray, columns: int = 8) -> np.ndarray:
    """[N, H, W, 3] images -> one grid image (rows of ``columns``; empty cells black)."""
    count, height, width, channels = images.shape
    rows = -(-count // columns)
    padded = np.zeros((rows * columns, height, width, channels), dtype=images.dtype)
    padded[:count] = images
    return padded.reshape(rows, columns, height, width, channels).transpose(0, 2, 1, 3, 4).reshape(
        rows * height, columns * width, channels)


def main(argv: list[str] | None = None) -> Path:
    cfg = load_config()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="output folder (created)")
    parser.add_argument("--count", required=True, type=int, help="number of faces")
    parser.add_argument("--seed", type=int, default=cfg.seed, help="generator seed (faces 0..count-1 of it)")
    parser.add_argument("--weights", default=cfg.generator_weights, help="DCGAN weights.tar")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--size", type=int, default=input_spec(cfg.network).size,
                        help="side of the saved images (default: the input side of the config's network)")
    parser.add_argument("--format", choices=("png", "jpg"), default="png", help="png is lossless")
    parser.add_argument("--sheet", type=Path, default=None,
                        help="contact sheet path (default: <out>_contact_sheet.png, outside the folder)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("--count must be >= 1")
    check_writable_dir(args.out, "--out")

    faces = GeneratedFaces(args.weights, args.count, seed=args.seed, size=args.size,
                           device=resolve_device(args.device), batch_size=args.batch_size)
    args.out.mkdir(parents=True, exist_ok=True)
    sheet_path = args.sheet or args.out.with_name(args.out.name + "_contact_sheet.png")
    first: list[np.ndarray] = []
    with tqdm(total=args.count, unit="face", desc="generating") as progress:
        for start in range(0, args.count, args.batch_size):
            indices = np.arange(start, min(start + args.batch_size, args.count))
            batch = faces.generate(indices).permute(0, 2, 3, 1).cpu().numpy()
            for index, image in zip(indices, batch):
                path = args.out / f"{index:07d}.{args.format}"
                if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
                    raise OSError(f"cannot write {path}")
            if len(first) < 64:
                first.extend(batch[: 64 - len(first)])
            progress.update(len(indices))
    sheet_path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(sheet_path), cv2.cvtColor(contact_sheet(np.stack(first)), cv2.COLOR_RGB2BGR))
    print(f"wrote {args.count} faces to {args.out} and a contact sheet to {sheet_path}")
    return args.out


if __name__ == "__main__":
    try:
        main()
    except QuantFaceError as exc:
        sys.exit(report(exc))
