"""QuantFace: quantization-aware training of a face network by distillation from its float teacher.

    python train_quantization.py config/<file>.py [key=value ...]
    torchrun --nproc_per_node=N train_quantization.py config/<file>.py [key=value ...]

The teacher is the float backbone loaded strictly from ``teacher``; the student is a quantized copy of
it (or of ``student_network``) trained to reproduce the teacher's L2-normalised embeddings (no labels,
so synthetic faces suffice) and, with ``feature_layers``, the outputs of the named intermediate modules.
Activation ranges are observed on ``calibration_batches`` batches before training (where
``bias_correction`` then corrects the biases: ``quant.post_training_quantize``) and/or during the first
``observer_steps`` training steps (kept identical across ranks), then frozen.  Rank 0 logs to
``<output>/metrics.jsonl``, verifies on .bin targets, writes resumable checkpoints (``resume=true``
continues exactly, and refuses an output whose run had other settings) and, at the end,
``student_final.pt`` (``quant.load_quantized``) and ``summary.json``.  ``generations=N`` distils N times in
a row, each generation from the previous one's student (``<output>/gen<g>``).  The work is done by ``distill``.

Exit status: 0 done; 1 a configuration / checkpoint / data error, or the loss became NaN/inf (the
message names the step; the last good checkpoint is kept).
"""
from __future__ import annotations

import argparse
import sys

import quant
from distill import TrainingError, train_generations
from utils.checkpoint import CheckpointError
from utils.config import ConfigError, load_config
from utils.distributed import cleanup, init_distributed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config", help="experiment config file, e.g. config/r100_w8a8_synthetic.py")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. batch_size=64 resume=true")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        env = init_distributed(cfg.device)
    except (ConfigError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        train_generations(cfg, env)
    except (TrainingError, CheckpointError, ConfigError, quant.QuantConfigError, quant.QuantizeError) as exc:
        print(f"\nerror (rank {env.rank}): {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
