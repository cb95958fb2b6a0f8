"""The training script's one data entry: ``build_train_batches(settings, spec, device, rank, world_size)``.

Epoch ``e`` visits a permutation keyed by ``(seed, e)`` (the same on every rank), drops the last
partial global batch, and gives rank ``r`` every ``world_size``-th sample from ``r`` (as
``DistributedSampler`` does).  Flips are keyed by ``(seed, e, sample index)``.  Nothing depends on
what was drawn before, so ``epoch(e, start_batch=k)`` resumes exactly at batch ``k`` without
decoding or generating the skipped samples.  ``calibration()`` is epoch 0 as a single process sees it,
the same batches on every rank, for the passes that must leave every rank identical (equalisation,
range calibration, bias correction).  Pixels are normalised as the model's ``InputSpec`` says.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from data.augment import Augmentation
from data.bn_statistics import cached_bn_statistics_faces
from data.folder import FaceFolderDataset
from data.generated import GeneratedFaces
from backbones.spec import InputSpec
from data.images import ImageDataError, flip_where, to_chw
from data.keyed_random import keyed_coins, keyed_normals, keyed_permutation, to_device
from data.recordio import RecordIODataset
from data.settings import DataSettings

BN_STATS_FILE = "bn_stats_faces.pt"
NO_LABEL = -1  # the class of a sample from an unlabelled source
# plan [N, B] of sample indices -> N (uint8 [B, 3, S, S] images, int64 [B] classes) batches on the device, in order
BatchSource = Callable[[torch.Tensor], Iterator[tuple[torch.Tensor, torch.Tensor]]]


class _RawImages(Dataset):
    """(uint8 [3, S, S] image, class, problem) of a folder/RecordIO dataset (flip and normalisation happen
    batched).  An unreadable image comes back black with the reason as ``problem`` (else ""): the main
    process then stops with that one line or skips the image, where a worker's exception would reach the
    user as two tracebacks."""

    def __init__(self, dataset: FaceFolderDataset | RecordIODataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, str]:
        try:
            if isinstance(self.dataset, RecordIODataset):
                image, label = self.dataset.record(index)
            else:
                image, label = self.dataset.read(index), NO_LABEL
        except ImageDataError as exc:
            size = self.dataset.size
            return torch.zeros(3, size, size, dtype=torch.uint8), NO_LABEL, str(exc)
        return to_chw(image), label, ""


class _PlanSampler(Sampler):
    """Batch sampler replaying the plan set before each epoch (the DataLoader and its workers persist)."""

    def __init__(self) -> None:
        self.plan = torch.empty(0, 0, dtype=torch.int64)

    def __iter__(self) -> Iterator[list[int]]:
        return (row.tolist() for row in self.plan)

    def __len__(self) -> int:
        return len(self.plan)


class _LoaderSource:
    """Decode images in ``num_workers`` DataLoader worker processes; pinned, asynchronous copies on CUDA.

    An unreadable image stops training with one line naming it, or with ``skip_unreadable`` is left out
    of its batch and its reason kept in ``skipped`` (once per image).  Workers must not call
    ``cv2.setNumThreads``: after a fork it deadlocks when the parent's OpenCV thread pool was asleep
    (plain OpenCV calls are fork-safe).
    """

    def __init__(self, dataset: FaceFolderDataset | RecordIODataset, num_workers: int, device: torch.device,
                 skip_unreadable: bool = False) -> None:
        self.device, self.skip_unreadable = device, skip_unreadable
        self.skipped: dict[str, None] = {}  # reasons, in the order met
        self.sampler = _PlanSampler()
        num_workers = min(num_workers, os.cpu_count() or 1)  # more processes than cores only contend
        self.loader = DataLoader(_RawImages(dataset), batch_sampler=self.sampler, num_workers=num_workers,
                                 pin_memory=device.type == "cuda", persistent_workers=num_workers > 0)

    def __call__(self, plan: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.sampler.plan = plan
        for images, labels, problems in self.loader:
            readable = torch.tensor([not problem for problem in problems])
            if not readable.all():
                first = next(problem for problem in problems if problem)
                if not self.skip_unreadable:
                    raise ImageDataError(f"{first}; or set skip_unreadable_images=True to train without it")
                if not readable.any():
                    raise ImageDataError(f"every image of a batch is unreadable, e.g. {first}")
                self.skipped.update(dict.fromkeys(problem for problem in problems if problem))
                images, labels = images[readable], labels[readable]
            yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)


def _unlabelled(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return images, torch.full((len(images),), NO_LABEL, dtype=torch.int64, device=images.device)


def _generator_source(faces: GeneratedFaces) -> BatchSource:
    return lambda plan: (_unlabelled(faces.generate(indices.numpy())) for indices in plan)


class TrainBatches:
    """Normalised float [B, 3, S, S] training batches on the device for one rank, epoch by epoch."""

    def __init__(self, source: BatchSource, length: int, batch_size: int, seed: int, spec: InputSpec,
                 random_flip: bool, rank: int = 0, world_size: int = 1,
                 augmentation: Augmentation = Augmentation()) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.batches_per_epoch = length // (batch_size * world_size)
        if self.batches_per_epoch == 0:
            raise ValueError(f"{length} training samples do not fill one batch of {batch_size} on each of "
                             f"{world_size} processes; lower batch_size or add data")
        self.source, self.length, self.batch_size, self.seed = source, length, batch_size, seed
        self.spec, self.random_flip, self.augmentation = spec, random_flip, augmentation
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        return self.batches_per_epoch

    def plan(self, epoch: int, start_batch: int = 0, shard: bool = True) -> torch.Tensor:
        """int64 [batches - start_batch, batch_size]: this rank's sample indices, batch by batch (with
        ``shard=False``: those of a single process, the same on every rank)."""
        rank, world = (self.rank, self.world_size) if shard else (0, 1)
        batches = self.length // (self.batch_size * world)
        if not 0 <= start_batch <= batches:
            raise ValueError(f"start_batch {start_batch} outside 0..{batches} (batches per epoch)")
        order = keyed_permutation(self.seed, "order", epoch, self.length)
        used = order[: batches * self.batch_size * world]
        return used[rank::world].view(batches, self.batch_size)[start_batch:]

    def epoch(self, epoch: int, start_batch: int = 0, shard: bool = True) -> Iterator[torch.Tensor]:
        """Batches ``start_batch`` .. end of ``epoch`` for this rank (``shard=False``: for one process)."""
        return (images for images, _ in self.labelled_epoch(epoch, start_batch, shard))

    def labelled_epoch(self, epoch: int, start_batch: int = 0, shard: bool = True
                       ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``epoch`` with each batch's int64 classes (``NO_LABEL`` where the source has none)."""
        plan = self.plan(epoch, start_batch, shard)
        for indices, (images, labels) in zip(plan, self.source(plan)):
            if self.random_flip:
                images = flip_where(images, to_device(keyed_coins(self.seed, "flip", epoch, indices.numpy()),
                                                      images.device))
            images = self.augmentation(images, self.seed, epoch, indices.numpy())
            yield self.spec.normalise(images), labels

    def calibration(self) -> Iterator[torch.Tensor]:
        """Epoch 0 as one process sees it: identical batches on every rank."""
        return self.epoch(0, shard=False)

    def unreadable(self) -> list[str]:
        """Why each image skipped so far (``skip_unreadable_images``) could not be read, one line per image."""
        return list(getattr(self.source, "skipped", ()))


def build_train_batches(settings: DataSettings, spec: InputSpec, device: str | torch.device, rank: int = 0,
                        world_size: int = 1, teacher: nn.Module | None = None, workers: int = 0,
                        cache_dir: str | os.PathLike | None = None) -> TrainBatches:
    """TrainBatches for ``settings.data_source`` (generator of ``samples_per_epoch`` faces | folder | recordio,
    read by ``workers`` loader processes | bn_stats: ``samples_per_epoch`` images made from ``teacher``'s
    BatchNorm statistics before training, kept in ``<cache_dir>/bn_stats_faces.pt`` | noise: Gaussian pixels,
    the no-data baseline), sized and normalised for a model with input ``spec``."""
    device, s, kind = torch.device(device), settings, settings.data_source
    if kind == "bn_stats":
        if teacher is None or cache_dir is None:
            raise ValueError("data_source='bn_stats' makes its images from the teacher, kept in a cache folder; "
                             "give both")
        images = cached_bn_statistics_faces(Path(cache_dir) / BN_STATS_FILE, teacher, s.samples_per_epoch, spec,
                                            s.seed, s.batch_size, s.bn_stats_steps, s.bn_stats_lr, device)
        source, length = (lambda plan: (_unlabelled(images[indices.to(images.device)]) for indices in plan)), len(images)
    elif kind == "noise":  # the no-data baseline: Gaussian pixels around mid-grey, keyed per sample
        def noise(plan: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            for indices in plan:
                pixels = keyed_normals(s.seed, "noise", indices.numpy(), 3 * spec.size * spec.size)
                images = (127.5 + 64.0 * pixels).round().clamp(0, 255).to(torch.uint8)
                yield _unlabelled(images.view(-1, 3, spec.size, spec.size).to(device))
        source, length = noise, s.samples_per_epoch
    elif kind == "generator":
        faces = GeneratedFaces(s.generator_weights, s.samples_per_epoch, seed=s.seed, size=spec.size,
                               device=device, batch_size=s.batch_size, alignment=spec.alignment,
                               interpolation=s.latent_interpolation, upsample=s.generator_upsample)
        source, length = _generator_source(faces), len(faces)
    else:  # folder or recordio (DataSettings admits no other source)
        dataset_type = FaceFolderDataset if kind == "folder" else RecordIODataset
        dataset = dataset_type(s.data_path, size=spec.size, alignment=spec.alignment)
        source, length = _LoaderSource(dataset, workers, device, s.skip_unreadable_images), len(dataset)
    return TrainBatches(source, length, s.batch_size, s.seed, spec, s.random_flip, rank, world_size, s.augmentation)
