"""Run under torchrun: train as ``train_quantization.py`` does, and have every rank save its final student
(and its learning loss head) to the folder given after the config, so a test can check the ranks end identical.

    PYTHONPATH=. python -m torch.distributed.run --nproc_per_node=2 tests/ddp_rank_state.py CONFIG OUT_DIR
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from distill import loop
from utils.config import load_config
from utils.distributed import cleanup, init_distributed


def main(config: str, out: str) -> None:
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    finish = loop.finish

    def finish_and_save(run, callbacks):  # the real finish, after this rank's state is kept
        torch.save(run.student.state_dict(), folder / f"student_rank{run.env.rank}.pt")
        if run.kd.learns:  # the projection / margin head, replicated on every rank
            torch.save(run.kd.state_dict(), folder / f"loss_rank{run.env.rank}.pt")
        return finish(run, callbacks)

    loop.finish = finish_and_save
    cfg = load_config(config)
    env = init_distributed(cfg.device)
    try:
        loop.train(cfg, env)
    finally:
        cleanup()


if __name__ == "__main__":
    main(*sys.argv[1:])
