"""Block reconstruction (BRECQ, Li et al. 2021; QDrop, Wei et al. 2022): post-training quantization that fits
each block of the student, in order, to the float model's output of that block.

Per block (``quant.blocks``): the block's input as the already-reconstructed quantized blocks before it
produce it, and the float model's input and output of the block, are computed once for the calibration
images.  Then ``reconstruct_iters`` Adam steps learn each Conv2d/Linear weight's rounding (``quant.adaround``) and the
step size of every activation quantizer in the block, minimising the squared error to the float output.
QDrop: with probability ``reconstruct_drop`` each value of the block's input is the float one instead of the
quantized one, and each activation quantizer in the block passes that share of its values through
unquantized, so the fit does not lean on one pattern of quantization noise.  At the end every rounding is
decided and written into the weights, which then lie exactly on their quantizers' grids: the student is an
ordinary quantized model again, ready for distillation or export.

The float output comes from a copy of the student taken before any block is fitted, with its quantizers
bypassed (BatchNorms folded or frozen alike, channels equalised alike), so student and reference line up node
for node.
"""
from __future__ import annotations

import contextlib
import copy
import logging
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn
from tqdm import tqdm

from quant.adaround import AdaRoundWeight
from quant.blocks import Block, find_blocks
from quant.config import QuantConfigError
from quant.layers import QuantWeighted
from quant.quantizer import FakeQuantizer
from utils.modes import eval_mode
from utils.sections import Section, at_least

log = logging.getLogger(__name__)

_QUANTIZER_SLOTS = ("weight_quant", "input_quant", "input0_quant", "input1_quant", "output_quant")
EVAL_IMAGES = 256   # images on which each block's error is reported before and after its fit


WARMUP = 0.2               # share of the steps before the rounding regulariser starts
BETA = (20.0, 2.0)         # the regulariser's temperature, falling linearly from the first to the second


@dataclass(frozen=True)
class ReconstructionSettings(Section):
    """The config's block-reconstruction section: ``reconstruct_iters`` Adam steps per block on
    ``reconstruct_batch_size`` of the first ``reconstruct_images`` calibration images; the rounding
    regulariser's weight is off for the first ``WARMUP`` share of the steps, then its temperature falls
    linearly over ``BETA`` (BRECQ's schedule)."""

    reconstruct_iters: int = 0
    reconstruct_images: int = 1024
    reconstruct_batch_size: int = 16
    reconstruct_min_layers: int = 2
    reconstruct_drop: float = 0.5
    reconstruct_round_weight: float = 0.01
    reconstruct_round_lr: float = 1e-3
    reconstruct_scale_lr: float = 4e-5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.reconstruct_iters < 0:
            raise QuantConfigError(f"reconstruct_iters={self.reconstruct_iters} must be >= 0 (0 = no block "
                                   "reconstruction)")
        if self.reconstruct_iters:
            at_least(self, 1, "reconstruct_images", "reconstruct_batch_size", "reconstruct_min_layers",
                     error=QuantConfigError)
        if not 0.0 <= self.reconstruct_drop < 1.0:
            raise QuantConfigError(f"reconstruct_drop={self.reconstruct_drop} must be in [0, 1) (0.5 = QDrop, "
                                   "0 = BRECQ)")


@contextlib.contextmanager
def quantizers_bypassed(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` computing its float function: every quantizer detached and biases left off the int32 grid."""
    saved = []
    for module in model.modules():
        slots = {s: module._modules[s] for s in _QUANTIZER_SLOTS if module._modules.get(s) is not None}
        if slots or getattr(module, "quantize_bias", False):
            saved.append((module, slots, module.__dict__.get("quantize_bias")))
            for slot in slots:
                module._modules[slot] = None
            if isinstance(module, QuantWeighted):
                module.quantize_bias = False
    try:
        yield model
    finally:
        for module, slots, quantize_bias in saved:
            module._modules.update(slots)
            if quantize_bias is None:
                module.__dict__.pop("quantize_bias", None)
            else:
                module.quantize_bias = quantize_bias


@torch.no_grad()
def _run(module: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([module(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def _squared_error(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared differences summed over channels, averaged over images and positions (BRECQ's loss, on the
    scale its rounding regulariser's weight was chosen for)."""
    return (out - target).pow(2).sum(1).mean()


@torch.no_grad()
def _block_error(block: Block, inputs: torch.Tensor, target: torch.Tensor, batch_size: int) -> float:
    n = min(len(inputs), EVAL_IMAGES)
    return float(_squared_error(_run(block.module, inputs[:n], batch_size), target[:n]))


def _temperature(settings: ReconstructionSettings, step: int) -> float | None:
    """The regulariser's beta at ``step``, or None during the warm-up (no regulariser)."""
    progress = step / settings.reconstruct_iters
    if progress < WARMUP:
        return None
    start, end = BETA
    return end + (start - end) * max(0.0, 1.0 - (progress - WARMUP) / (1.0 - WARMUP))


class _BlockFit:
    """What one block learns: the rounding of its layers' weights and its activation quantizers' step sizes."""

    def __init__(self, student: nn.Module, block: Block, settings: ReconstructionSettings):
        self.settings = settings
        self.frozen = [p for p in block.module.parameters() if p.requires_grad]
        for p in self.frozen:
            p.requires_grad_(False)
        self.layers = [student.get_submodule(name) for name in block.layers]
        self.roundings = []
        for layer in self.layers:
            rounding = AdaRoundWeight(layer.weight_quant, layer.weight)
            layer.weight_quant = rounding
            self.roundings.append(rounding)
        self.activations = [q for q in block.module.modules() if isinstance(q, FakeQuantizer) and q.has_state]
        for q in self.activations:
            q.scale.requires_grad_(True)
            q.drop_prob = settings.reconstruct_drop
        self.optimizer = torch.optim.Adam([{"params": [r.logit for r in self.roundings], "lr": settings.reconstruct_round_lr},
                                           {"params": [q.scale for q in self.activations], "lr": settings.reconstruct_scale_lr}])

    def regularizer(self, step: int) -> torch.Tensor | float:
        beta = _temperature(self.settings, step)
        if beta is None or not self.roundings:
            return 0.0
        return self.settings.reconstruct_round_weight * sum(r.regularizer(beta) for r in self.roundings)

    @torch.no_grad()
    def finish(self) -> None:
        """Decide every rounding, write it into the weights, and put the student's own quantizers back."""
        for layer, rounding in zip(self.layers, self.roundings):
            layer.weight_quant = rounding.quantizer[0]
            layer.weight.copy_(rounding.hard_weight().to(layer.weight.dtype))
        for q in self.activations:
            q.drop_prob = 0.0
            q.scale.grad = None
            if not q.learnable:
                q.scale.requires_grad_(False)
        for p in self.frozen:
            p.requires_grad_(True)


def _fit(student: nn.Module, block: Block, q_in: torch.Tensor, fp_in: torch.Tensor, target: torch.Tensor,
         settings: ReconstructionSettings, label: str) -> None:
    fit = _BlockFit(student, block, settings)
    try:
        for step in tqdm(range(settings.reconstruct_iters), desc=label, unit="step", leave=False):
            idx = torch.randint(len(q_in), (settings.reconstruct_batch_size,), device=q_in.device)
            x = q_in[idx]
            if settings.reconstruct_drop:
                x = torch.where(torch.rand_like(x) < settings.reconstruct_drop, fp_in[idx], x)
            loss = _squared_error(block.module(x), target[idx]) + fit.regularizer(step)
            fit.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            fit.optimizer.step()
    finally:
        fit.finish()


def reconstruct(student: nn.Module, images: torch.Tensor, settings: ReconstructionSettings, done: int = 0,
                on_block: Callable[[int, int, list[dict]], None] | None = None,
                reference: nn.Module | None = None) -> list[dict]:
    """Reconstruct ``student``'s blocks in place on ``images`` (model inputs, on the student's device).

    Blocks before ``done`` are taken as already reconstructed (a resumed reconstruction); after each fitted
    block ``on_block(k, total, report)`` is called, the student then holding ``k`` of ``total`` fitted blocks.
    Returns the report: per fitted block, its name, layers and squared error to the float output before and
    after its fit (on the first images).  ``reference``: the student before any block was fitted (a resumed
    reconstruction passes it; by default a copy of ``student``, which then has fitted none).
    """
    blocks = find_blocks(student, settings.reconstruct_min_layers)
    reference = copy.deepcopy(student) if reference is None else reference
    references = find_blocks(reference, settings.reconstruct_min_layers)
    devices = [torch.device("cuda", torch.cuda.current_device())] if images.is_cuda else []
    report, q, fp = [], images, images
    with eval_mode(student), eval_mode(reference), quantizers_bypassed(reference), \
            torch.random.fork_rng(devices=devices):
        for k, (block, float_block) in enumerate(zip(blocks, references)):
            torch.manual_seed(settings.seed * 100003 + k)  # per block: a resumed reconstruction draws the same
            target = _run(float_block.module, fp, settings.reconstruct_batch_size)
            if k >= done:
                before = _block_error(block, q, target, settings.reconstruct_batch_size)
                _fit(student, block, q, fp, target, settings, f"reconstruct {k + 1}/{len(blocks)} {block.name}")
                after = _block_error(block, q, target, settings.reconstruct_batch_size)
                report.append({"block": block.name, "layers": block.layers, "error_before": before,
                               "error_after": after})
                log.info("block %d/%d %s (%d layers): squared error %.4g -> %.4g", k + 1, len(blocks), block.name,
                         len(block.layers), before, after)
            q, fp = _run(block.module, q, settings.reconstruct_batch_size), target
            if k >= done and on_block is not None:
                on_block(k + 1, len(blocks), report)
    return report
