"""torch.distributed set-up from the torchrun environment, and the few collectives training needs.

A plain ``python train_quantization.py`` run is world size 1 and never touches torch.distributed;
``torchrun --nproc_per_node=N`` sets RANK / WORLD_SIZE / LOCAL_RANK and we join the process group
with NCCL on GPUs or gloo on CPU.  Every helper here is a no-op (or the identity) for one process.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from utils.errors import InputError


class DeviceError(InputError, RuntimeError):
    """The device asked for does not exist on this machine."""


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits: its rank, the number of processes and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


# How long a rank waits in a collective.  Rank 0 works alone at times (the BN-statistics images before the
# first step, verification every ``eval_every`` steps) while the others already wait in their next
# collective; NCCL's default of 10 minutes would end a long run there.
COLLECTIVE_TIMEOUT = timedelta(minutes=60)


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> ``cuda:<local_rank>`` when CUDA is present, else CPU (said once: a run on the CPU that was
    meant for a GPU is far slower, docs/gpu.md); ``cuda`` -> ``cuda:<local_rank>``."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
        if spec == "cpu":
            build = ("a CPU-only build" if torch.version.cuda is None
                     else f"CUDA {torch.version.cuda}, but no GPU visible")
            warnings.warn(f"device=auto: torch {torch.__version__} ({build}): running on the CPU. For a GPU, install "
                          "a CUDA build of torch (docs/gpu.md); device=cpu silences this", RuntimeWarning, stacklevel=2)
    if spec == "cuda":
        spec = f"cuda:{local_rank}"
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device '{spec}' asked for but CUDA is not available; use device=cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"device '{spec}' does not exist ({torch.cuda.device_count()} GPU(s) visible)")
        torch.cuda.set_device(device)
    return device


def init_distributed(device_spec: str = "auto") -> DistEnv:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); pick this rank's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_spec, local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world_size,
                                timeout=COLLECTIVE_TIMEOUT, **kwargs)
    return DistEnv(rank, world_size, local_rank, device)


def cleanup() -> None:
    """Leave the process group (safe to call when none was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 outside a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def broadcast(tensor: torch.Tensor, source: int = 0) -> torch.Tensor:
    """Rank ``source``'s ``tensor`` on every rank, in place (on the backend's device: CUDA under nccl)."""
    if is_distributed():
        dist.broadcast(tensor, src=source)
    return tensor


def barrier() -> None:
    """Wait for every rank (no-op in one process): e.g. until rank 0 has written a file the others read."""
    if is_distributed():
        dist.barrier()


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean of ``value`` over ranks (a new tensor; the input is left alone)."""
    value = value.detach().clone()
    if is_distributed():
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= dist.get_world_size()
    return value


def all_gather_objects(obj: Any) -> list[Any]:
    """``[obj from rank 0, obj from rank 1, ...]`` (picklable objects; ``[obj]`` for one process)."""
    if not is_distributed():
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered

