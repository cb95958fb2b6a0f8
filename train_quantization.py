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

Exit status (docs/errors.md): 0 done; 2 bad input (a config, checkpoint, data file or output folder that
cannot be used; checked before anything loads where it can be); 1 a run that failed on the way (disk full,
Ctrl-C, a loss that became NaN/inf), each one line naming the step or file; ``resume=true`` continues.
"""
from __future__ import annotations

import argparse
import sys

from distill import train_generations
from utils.config import BASE_CONFIG, field_sections, load_config
from utils.distributed import cleanup, init_distributed
from utils.errors import QuantFaceError, report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"config fields (each with its default and meaning in {BASE_CONFIG.relative_to(BASE_CONFIG.parents[1])}; "
               f"recipes in config/, docs/training.md):\n{field_sections()}")
    parser.add_argument("config", help="config file, e.g. config/r100_synthetic.py")
    parser.add_argument("overrides", nargs="*",
                        help="key=value config overrides, e.g. teacher=backbone.pth weight_bits=6 act_bits=6")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config (every field) and exit without training")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        if args.print_config:
            print(cfg.to_python(), end="")
            return 0
        env = init_distributed(cfg.device)
    except QuantFaceError as exc:
        return report(exc)
    try:
        train_generations(cfg, env)
    except QuantFaceError as exc:
        print(file=sys.stderr)  # below the progress bar
        return report(exc, f"error (rank {env.rank})" if env.distributed else "error")
    finally:
        cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
