"""Which data distils best without real data?  DCGAN faces vs BatchNorm-statistics images vs Gaussian noise.

    python -m lab.compare_data_sources [--network r18] [--steps 60] [--batch-size 16] [--out DIR]

A teacher with BatchNorm statistics is needed (the pretrained teachers here have theirs folded), so the
teacher is a seeded random-init ``--network`` whose statistics come from one pass over generated faces:
the comparison shows the mechanics, not what a trained teacher would give.  For each data source the same
W8A8 student is distilled for ``--steps`` steps (``distill.train``, the training script's own loop), then
compared with the teacher on the real photos and on held-out generated faces (cosine mean / min).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from assets import ensure_asset
from backbones import get_model
from data import GeneratedFaces
from lab.realfaces import aligned_real_faces
from distill import train
from eval.agreement import embedding_agreement
from eval.embed import embed_batches
from eval.report import markdown_table
from utils.checkpoint import save_checkpoint
from utils.config import load_config
from utils.distributed import DistEnv

SOURCES = {"generator": "DCGAN faces", "bn_stats": "BatchNorm-statistics images", "noise": "Gaussian noise"}


def teacher_with_statistics(network: str, out: Path) -> tuple[Path, torch.nn.Module]:
    """A seeded random-init backbone whose BatchNorm statistics come from 256 generated faces."""
    torch.manual_seed(0)
    model = get_model(network, num_features=128)
    faces = GeneratedFaces(ensure_asset("gan_face_generate"), 256, seed=12345)
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)):
        bn.momentum = None
        bn.reset_running_stats()
    with torch.no_grad():
        for start in range(0, 256, 32):
            model.train()(model.input_spec.normalise(faces.generate(range(start, start + 32))))
    path = save_checkpoint(out / "teacher.pt", model.state_dict(), {"network": network,
                                                                   "network_kwargs": {"num_features": 128}})
    return path, model.eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", default="r18")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--bn-stats-images", type=int, default=64)
    parser.add_argument("--bn-stats-steps", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("work_dirs/compare_data_sources"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    teacher_path, teacher = teacher_with_statistics(args.network, args.out)
    real, _, _ = aligned_real_faces(None, teacher.input_spec)
    held_out = GeneratedFaces(ensure_asset("gan_face_generate"), 64, seed=777).generate(range(64))
    held_out = held_out.permute(0, 2, 3, 1).numpy()
    reference = {name: embed_batches(teacher, faces, "cpu", 32, flip=False)
                 for name, faces in (("real", real), ("held_out", held_out))}
    rows = []
    for source, label in SOURCES.items():
        count = args.bn_stats_images if source == "bn_stats" else args.steps * args.batch_size
        cfg = load_config(None, [
            f"network={args.network}", "embedding_size=128", f"teacher={teacher_path}", f"data_source={source}",
            f"samples_per_epoch={count}", f"bn_stats_steps={args.bn_stats_steps}", f"batch_size={args.batch_size}",
            f"num_steps={args.steps}", "optimizer=adamw", "lr=1e-4", "scheduler=cosine", "bn_mode=frozen",
            "calibration_batches=2", "observer_steps=0", "save_every=100000", "eval_targets=[]", "device=cpu",
            f"output={args.out / source}"])
        student, _ = train(cfg, DistEnv(0, 1, 0, torch.device("cpu")))
        student.eval()
        scores = {name: embedding_agreement(reference[name], embed_batches(student, faces, "cpu", 32, flip=False))
                  for name, faces in (("real", real), ("held_out", held_out))}
        rows.append([label, source, *(f"{scores[n][k]:.4f}" for n in ("real", "held_out")
                                      for k in ("cosine_mean", "cosine_min"))])
    table = markdown_table(["data", "data_source", "real cos mean", "real cos min", "held-out cos mean",
                            "held-out cos min"], rows, text_columns=2)
    text = (f"W8A8 {args.network} students of a random-init {args.network} teacher with BatchNorm statistics, "
            f"{args.steps} steps of {args.batch_size}\n\n{table}")
    (args.out / "report.md").write_text(text)
    print(text)
    return 0 if all(np.isfinite(float(r[2])) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
