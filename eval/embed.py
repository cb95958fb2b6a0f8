"""Flip-test embeddings in batches, with image decoding overlapped with model compute.

Images come from any sequence whose ``images[i]`` is an HxWx3 uint8 RGB array (a numpy array, or a
lazy decoder such as ``eval.verification.JpegImages`` / ``eval.ijb.IjbFaces``).  Worker threads fill
whole batches ahead of the model (OpenCV decoding and warping release the GIL), so the model never
waits for IO; only uint8 pixels cross to the device, normalisation (the model's ``InputSpec``) and
flipping happen there.
"""
from __future__ import annotations

import math
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from backbones.spec import InputSpec, input_spec_of
from utils.modes import eval_mode

DEFAULT_WORKERS = min(4, os.cpu_count() or 1)


def _load_batch(images: Sequence[np.ndarray], start: int, stop: int, pin: bool) -> torch.Tensor:
    first = np.asarray(images[start])
    batch = torch.empty((stop - start, *first.shape), dtype=torch.uint8, pin_memory=pin)
    view = batch.numpy()
    view[0] = first
    for i in range(start + 1, stop):
        image = images[i]
        if image.shape != first.shape:
            raise ValueError(f"image {i} has shape {image.shape}, image {start} has {first.shape}; "
                             "every image of an evaluation set must have the same size")
        view[i - start] = image
    return batch


def iter_image_batches(images: Sequence[np.ndarray], batch_size: int, workers: int = DEFAULT_WORKERS,
                       pin_memory: bool = False) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(start, uint8 tensor [B, H, W, 3])`` in order while ``workers`` threads load the next batches."""
    starts = iter(range(0, len(images), batch_size))
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="eval-load") as pool:
        pending: deque[tuple[int, Future]] = deque()

        def submit() -> None:
            start = next(starts, None)
            if start is not None:
                stop = min(start + batch_size, len(images))
                pending.append((start, pool.submit(_load_batch, images, start, stop, pin_memory)))

        for _ in range(max(1, workers) + 1):
            submit()
        try:
            while pending:
                start, future = pending.popleft()
                batch = future.result()
                submit()
                yield start, batch
        finally:
            for _, future in pending:
                future.cancel()


def input_layout(device: torch.device) -> torch.memory_format:
    """channels_last on CPU, where oneDNN convolutions run faster in it (docs/evaluation.md); NCHW on GPUs."""
    return torch.channels_last if device.type == "cpu" else torch.contiguous_format


def normalise_batch(batch: torch.Tensor, device: torch.device, spec: InputSpec) -> torch.Tensor:
    """uint8 RGB [B, H, W, 3] (any device) -> the network's float input [B, 3, H, W] on ``device``."""
    x = spec.normalise(batch.to(device, non_blocking=True).permute(0, 3, 1, 2))
    return x.contiguous(memory_format=input_layout(device))


@torch.no_grad()
def iter_embeddings(model: nn.Module, images: Sequence[np.ndarray], device: str | torch.device,
                    batch_size: int, flip: bool = True, workers: int = DEFAULT_WORKERS,
                    desc: str = "embed") -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(start, features [B, D] float32 on device)``: embedding (+ embedding of the mirror image).

    ``model`` must already be on ``device``; its ``InputSpec`` says how pixels are normalised.  It runs
    in eval mode and gets its previous mode back after.
    """
    device, spec = torch.device(device), input_spec_of(model)
    batches = iter_image_batches(images, batch_size, workers, pin_memory=device.type == "cuda")
    try:
        with eval_mode(model):
            for start, batch in tqdm(batches, total=math.ceil(len(images) / batch_size), desc=desc,
                                     unit="batch", leave=False):
                x = normalise_batch(batch, device, spec)
                if flip:  # image and mirror image in one forward of 2B: one launch sequence, a fuller GPU
                    both = model(torch.cat([x, x.flip(3)])).float()
                    features = both[:len(x)] + both[len(x):]
                else:
                    features = model(x).float()
                yield start, features
    finally:
        batches.close()


def embed_batches(model: nn.Module, images: Sequence[np.ndarray], device: str | torch.device, batch_size: int,
                  flip: bool = True, workers: int = DEFAULT_WORKERS, desc: str = "embed") -> np.ndarray:
    """All flip-test features of ``images`` as float32 [N, D] (summed, not normalised)."""
    chunks = [f.cpu().numpy() for _, f in iter_embeddings(model, images, device, batch_size, flip, workers, desc)]
    if not chunks:
        raise ValueError("no images to embed")
    return np.concatenate(chunks)
