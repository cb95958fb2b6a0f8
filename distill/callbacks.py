"""What runs after every training step: progress bar, metrics, verification and checkpoints.

Rank 0 writes; every rank takes part in the collectives (the checkpoint gathers every rank's RNG state).
"""
from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import nn

import quant
from distill.run import Run
from distill.train_state import capture_rng_state, save_training_state
from eval.verification import verify
from utils.distributed import all_gather_objects, all_reduce_mean
from utils.logging import MetricsLogger, Throughput, progress_bar


def verify_student(student: nn.Module, run: Run) -> dict[str, Any]:
    """Verification on every .bin target, observers paused meanwhile (``verify`` restores the train mode)."""
    quant.set_observers(student, False)
    try:
        return {name: verify(student, str(path), run.env.device, run.settings.eval.eval_batch_size)
                for name, path in run.bins.items()}
    finally:
        quant.set_observers(student, run.observing)


class StepCallbacks:
    """Progress bar, the metrics log (averaged every ``log_every`` steps), verification every
    ``eval_every`` steps and checkpoints every ``save_every`` steps and at the end."""

    def __init__(self, run: Run, started: float) -> None:
        self.run, self.started = run, started  # time.time() when this session began (before preparing)
        main = run.env.is_main
        self.logger = MetricsLogger(run.settings.run.output, main, run.settings.run.tensorboard,
                                    resume_step=run.step if run.resumed_from else None)
        self.bar = progress_bar(run.steps, run.step, main)
        self.meter, self.losses, self.feature_losses = Throughput(), [], []
        self.images_per_step = run.settings.data.batch_size * run.env.world_size
        self.session_start, self.session_steps = time.perf_counter(), 0
        self.eval_results: dict[str, Any] = {}
        self.last_loss = math.nan  # the last step's loss: the same in a resumed run as in an unbroken one

    def after_step(self, loss: torch.Tensor, feature_loss: torch.Tensor | None) -> None:
        """``loss`` (and the feature term): this rank's detached values, kept on the device until the next
        metrics line, where they are averaged over ranks and read back in one go."""
        run, settings = self.run, self.run.settings
        self.session_steps += 1
        self.losses.append(loss)
        if feature_loss is not None:
            self.feature_losses.append(feature_loss)
        self.meter.add(self.images_per_step)
        self.bar.update(1)
        if run.step % settings.run.log_every == 0 or run.step == run.steps:
            self.log_metrics()
        if run.bins and run.env.is_main and run.step % settings.eval.eval_every == 0 and run.step < run.steps:
            self.verify()
        if run.step % settings.run.save_every == 0 or run.step == run.steps:
            self.checkpoint()

    def log_metrics(self) -> None:
        run = self.run
        # one all-reduce and one read from the device for the steps since the last line
        values = all_reduce_mean(torch.stack(self.losses + self.feature_losses).float()).tolist()
        losses, feature_losses = values[:len(self.losses)], values[len(self.losses):]
        self.last_loss = losses[-1]
        mean, rate = sum(losses) / len(losses), self.meter.rate()
        self.bar.set_postfix(loss=f"{mean:.3e}", img_s=f"{rate:.1f}")
        record = {"step": run.step, "epoch": run.epoch, "loss": mean,
                  "lr": run.optimizer.param_groups[0]["lr"], "images_per_s": round(rate, 2)}
        if feature_losses:  # the feature term alone (unweighted), to see what the total is made of
            record["feature_loss"] = sum(feature_losses) / len(feature_losses)
        self.logger.log(record)
        self.losses, self.feature_losses = [], []

    def verify(self) -> None:
        self.eval_results = verify_student(self.run.student, self.run)
        self.logger.log({"step": self.run.step, "epoch": self.run.epoch, "eval": self.eval_results})

    def checkpoint(self) -> None:
        run = self.run
        rng = all_gather_objects(capture_rng_state())  # every rank's, for an exact resume
        at_end = run.batch >= run.data.batches_per_epoch  # position of the next batch to train
        if run.env.is_main:
            save_training_state(run.settings.run.output, run.step, {
                "student": run.student.state_dict(),
                "projection": run.kd.state_dict() if run.kd.learns else {},  # projection and margin head
                "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
                "scaler": run.scaler.state_dict(), "rng": rng, "observers_enabled": run.observing,
                "epoch": run.epoch + 1 if at_end else run.epoch, "batch": 0 if at_end else run.batch,
                "world_size": run.env.world_size, "total_steps": run.steps, "wall_time_s": self.wall_time_s(),
            }, run.settings.run.keep_last)

    def wall_time_s(self) -> float:
        """Seconds the run has taken so far, the parts before a resume included (kept in the checkpoints)."""
        return self.run.wall_time_before + time.time() - self.started

    def images_per_s(self) -> float:
        """Training throughput of this session (a resumed run counts only its own steps)."""
        seconds = time.perf_counter() - self.session_start
        return round(self.session_steps * self.images_per_step / max(seconds, 1e-9), 2)

    def close(self) -> None:
        self.bar.close()
        self.logger.close()
