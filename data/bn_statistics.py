"""Data-free faces from the teacher itself: ZeroQ's "distilled data" (Cai et al. 2020, whose quantization
modules QuantFace builds on).

Random images are optimised (Adam) so that, at every BatchNorm of the teacher, the batch mean and standard
deviation of its input match the running statistics the BatchNorm learnt on real faces:
``sum_bn ||mean_b - running_mean|| + ||std_b - sqrt(running_var)||``.  Image ``i`` starts from noise keyed
by ``(seed, i)`` and is optimised with the other images of its chunk (``batch_size`` consecutive indices),
so the set is a pure function of the teacher and the settings.  A teacher without BatchNorm statistics
(BatchNorm folded into its convolutions, like the demo's pretrained MobileFaceNet) cannot guide it and is
refused.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from tqdm import tqdm

from backbones.spec import InputSpec
from data.keyed_random import keyed_normals
from utils.distributed import broadcast, rank
from utils.fileio import atomic_torch_save
from utils.modes import eval_mode


def statistics_layers(teacher: nn.Module) -> list[_BatchNorm]:
    """The teacher's BatchNorms that keep running statistics (the targets); an error when there are none."""
    layers = [m for m in teacher.modules() if isinstance(m, _BatchNorm) and m.running_mean is not None]
    if not layers:
        raise ValueError(f"the teacher ({type(teacher).__name__}) has no BatchNorm statistics (its BatchNorms are "
                         "folded into its convolutions, or it has none), so data_source='bn_stats' has nothing to "
                         "match: use data_source='generator' or 'folder'")
    return layers


class StatisticsGap:
    """Sum over the teacher's BatchNorms of the distance between batch and running statistics, collected by
    forward hooks during one teacher forward."""

    def __init__(self, teacher: nn.Module) -> None:
        self.terms: list[torch.Tensor] = []
        self.hooks = [bn.register_forward_pre_hook(self._hook) for bn in statistics_layers(teacher)]

    def _hook(self, bn: _BatchNorm, inputs: tuple[torch.Tensor, ...]) -> None:
        x = inputs[0].float()
        dims = [0, *range(2, x.dim())]
        mean, std = x.mean(dims), x.var(dims, unbiased=False).add(bn.eps).sqrt()
        target_std = bn.running_var.add(bn.eps).sqrt()
        self.terms.append(torch.linalg.vector_norm(mean - bn.running_mean) +
                          torch.linalg.vector_norm(std - target_std))

    def take(self) -> torch.Tensor:
        total, self.terms = torch.stack(self.terms).sum(), []
        return total

    def close(self) -> None:
        for hook in self.hooks:
            hook.remove()


def bn_statistics_faces(teacher: nn.Module, count: int, spec: InputSpec, seed: int = 0, batch_size: int = 32,
                        steps: int = 500, lr: float = 0.1, device: str | torch.device = "cpu") -> torch.Tensor:
    """uint8 RGB [count, 3, S, S] images whose BatchNorm statistics in ``teacher`` match its running ones."""
    if count < 1 or steps < 1:
        raise ValueError(f"bn_stats needs count >= 1 and steps >= 1, got {count} / {steps}")
    device = torch.device(device)
    teacher = teacher.to(device)
    trainable = [p for p in teacher.parameters() if p.requires_grad]
    for p in trainable:  # only the images are optimised
        p.requires_grad_(False)
    gap = StatisticsGap(teacher)
    mean = torch.tensor(spec.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device=device).view(1, 3, 1, 1)
    chunks = []
    try:
        with eval_mode(teacher), tqdm(total=count, unit="face", desc="bn_stats faces") as progress:
            for start in range(0, count, batch_size):
                indices = list(range(start, min(start + batch_size, count)))
                noise = keyed_normals(seed, "bn_stats", indices, 3 * spec.size * spec.size)
                x = noise.view(len(indices), 3, spec.size, spec.size).to(device).requires_grad_(True)
                optimizer = torch.optim.Adam([x], lr=lr)
                for _ in range(steps):
                    optimizer.zero_grad(set_to_none=True)
                    teacher(x)
                    gap.take().backward()
                    optimizer.step()
                pixels = x.detach() * std + mean  # the network's input space back to 0..255, in its channel order
                if spec.channels == "BGR":
                    pixels = pixels.flip(1)
                chunks.append(pixels.round().clamp(0, 255).to(torch.uint8))
                progress.update(len(indices))
    finally:
        gap.close()
        for p in trainable:
            p.requires_grad_(True)
    return torch.cat(chunks)


def cached_bn_statistics_faces(path: Path, teacher: nn.Module, count: int, spec: InputSpec, seed: int,
                               batch_size: int, steps: int, lr: float, device: torch.device) -> torch.Tensor:
    """``bn_statistics_faces``, made once per run: kept in ``path`` with its settings (a resumed run reads it
    back; other settings make it anew).  Under DDP rank 0 makes or reads it and every rank gets its bytes."""
    settings = {"count": count, "spec": spec.to_dict(), "seed": seed, "batch_size": batch_size, "steps": steps,
                "lr": lr}
    images = torch.empty(count, 3, spec.size, spec.size, dtype=torch.uint8)
    if rank() == 0:
        cached = torch.load(path, weights_only=True) if path.is_file() else None
        if cached is not None and cached.get("settings") == settings:
            images = cached["images"]
        else:
            images = bn_statistics_faces(teacher, count, spec, seed, batch_size, steps, lr, device).cpu()
            atomic_torch_save({"settings": settings, "images": images}, path)
    return broadcast(images.to(device))
