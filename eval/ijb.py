"""IJB-B / IJB-C 1:1 template verification, following insightface ``recognition/arcface_torch/eval_ijbc.py``.

Released layout (``<t>`` = ``ijbb`` or ``ijbc``)::

    <dir>/meta/<t>_face_tid_mid.txt         image_name template_id media_id       (one line per face)
    <dir>/meta/<t>_name_5pts_score.txt      image_name x1 y1 ... x5 y5 det_score  (same order)
    <dir>/meta/<t>_template_pair_label.txt  template_id_1 template_id_2 label     (1 = same person)
    <dir>/loose_crop/<image_name>

Each face is aligned from its 5 landmarks, embedded with the flip test (embedding + embedding of the
mirror, not normalised) and weighted by its detector score.  Faces of one media (video) in a template
are averaged, a template is the sum of its media, L2-normalised; a pair's score is the dot product.
TAR at FAR 1e-6 ... 1e-1 is read from sklearn's ``roc_curve`` as insightface does (the point whose FPR
is closest, the highest TPR among ties).  Images are streamed: only per-(template, media) sums are
kept, never all images or all image features.
"""
from __future__ import annotations

import array
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from sklearn.metrics import auc, roc_curve
from torch import nn

from backbones.spec import input_spec_of
from data.align import align_face
from data.images import ImageDataError, read_rgb
from eval.embed import DEFAULT_WORKERS, iter_embeddings
from eval.scores import pair_scores
from utils.errors import InputError

TARGETS = ("IJBB", "IJBC")
FAR_LEVELS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


class IjbFormatError(InputError, ValueError):
    """An IJB meta file or image is missing or malformed; the message names the file and line."""


def far_key(far: float) -> str:
    """JSON key of a FAR level, e.g. ``1e-04``."""
    return f"{far:.0e}"


def resolve_ijb_dir(ijb_dir: str | os.PathLike, target: str) -> Path:
    """The folder holding ``meta/`` and ``loose_crop/``: ``ijb_dir`` itself or ``ijb_dir/<TARGET>``."""
    target = target.upper()
    if target not in TARGETS:
        raise IjbFormatError(f"unknown IJB target '{target}'; use one of {', '.join(TARGETS)}")
    name = f"meta/{target.lower()}_face_tid_mid.txt"
    for root in (Path(ijb_dir), Path(ijb_dir) / target):
        if (root / name).is_file():
            return root
    raise IjbFormatError(f"{target}: neither {Path(ijb_dir) / name} nor {Path(ijb_dir) / target / name} exists; "
                         "--ijb-dir must point at the released folder holding meta/ and loose_crop/")


def _read_named_rows(path: Path, numbers: int, kind: type) -> tuple[list[str], np.ndarray]:
    """Lines ``name v1 .. vN`` -> ``(names, values [rows, N])``, kept compact (hundreds of thousands of lines)."""
    if not path.is_file():
        raise IjbFormatError(f"IJB meta file not found: {path}")
    names, values = [], array.array("d" if kind is float else "q")
    with open(path) as handle:
        for number, line in enumerate(handle, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != numbers + 1:
                raise IjbFormatError(f"{path} line {number}: expected {numbers + 1} fields, got {len(fields)}")
            try:
                values.extend(kind(x) for x in fields[1:])
            except ValueError as exc:
                raise IjbFormatError(f"{path} line {number}: {exc}") from exc
            names.append(fields[0])
    return names, np.frombuffer(values, dtype=np.float64 if kind is float else np.int64).reshape(-1, numbers)


def _read_int_table(path: Path, columns: int) -> np.ndarray:
    """A large whitespace-separated integer table (the pair list has millions of lines), parsed in C."""
    if not path.is_file():
        raise IjbFormatError(f"IJB meta file not found: {path}")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            values = np.fromfile(path, dtype=np.int64, sep=" ")
        except (ValueError, DeprecationWarning) as exc:
            raise IjbFormatError(f"{path}: not a table of integers ({exc})") from exc
    lines = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 24):
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    if lines and last != b"\n":
        lines += 1
    if values.size != lines * columns:
        raise IjbFormatError(f"{path}: expected {columns} integers on each of its {lines} lines, "
                             f"read {values.size} numbers")
    return values.reshape(-1, columns)


@dataclass
class IjbSet:
    """Meta data of one IJB benchmark (no images)."""

    target: str
    root: Path
    names: list[str]
    landmarks: np.ndarray   # [N, 5, 2] float32, pixels of loose_crop/<name>
    scores: np.ndarray      # [N] detector scores
    templates: np.ndarray   # [N] template id of each face
    medias: np.ndarray      # [N] media id of each face
    pairs: np.ndarray       # [P, 2] template ids
    labels: np.ndarray      # [P] 1 = same identity


def load_ijb(ijb_dir: str | os.PathLike, target: str) -> IjbSet:
    """Read and cross-check the three meta files of ``target`` (IJBB or IJBC)."""
    target = target.upper()
    root = resolve_ijb_dir(ijb_dir, target)
    prefix = root / "meta" / target.lower()
    tid_path, lmk_path = Path(f"{prefix}_face_tid_mid.txt"), Path(f"{prefix}_name_5pts_score.txt")
    names, ids = _read_named_rows(tid_path, 2, int)
    lmk_names, numbers = _read_named_rows(lmk_path, 11, float)
    if len(names) != len(lmk_names):
        raise IjbFormatError(f"{tid_path} has {len(names)} faces but {lmk_path} has {len(lmk_names)}")
    for number, (a, b) in enumerate(zip(names, lmk_names), 1):
        if a != b:
            raise IjbFormatError(f"face {number}: {tid_path} names '{a}' but {lmk_path} names '{b}'; "
                                 "the two files must list the faces in the same order")
    pair_path = Path(f"{prefix}_template_pair_label.txt")
    table = _read_int_table(pair_path, 3)
    if len(table) == 0 or len(names) == 0:
        raise IjbFormatError(f"{pair_path} or {tid_path} lists nothing")
    unknown = np.setdiff1d(table[:, :2], ids[:, 0])
    if unknown.size:
        raise IjbFormatError(f"{pair_path}: template ids {unknown[:5].tolist()} have no faces in {tid_path}")
    if not np.isin(table[:, 2], (0, 1)).all():
        raise IjbFormatError(f"{pair_path}: the third column (label) must be 0 or 1")
    return IjbSet(target=target, root=root, names=names,
                  landmarks=numbers[:, :10].reshape(-1, 5, 2).astype(np.float32),
                  scores=numbers[:, 10].astype(np.float32), templates=ids[:, 0], medias=ids[:, 1],
                  pairs=table[:, :2], labels=table[:, 2].astype(np.int8))


class IjbFaces(Sequence[np.ndarray]):
    """Lazy ``loose_crop`` reading + 5-point alignment to ``size`` x ``size`` RGB, one face per index."""

    def __init__(self, ijb: IjbSet, size: int = 112, alignment: str = "arcface_112"):
        self.ijb, self.size, self.alignment = ijb, size, alignment

    def __len__(self) -> int:
        return len(self.ijb.names)

    def __getitem__(self, index: int) -> np.ndarray:  # type: ignore[override]
        path = self.ijb.root / "loose_crop" / self.ijb.names[index]
        try:
            image = read_rgb(path)
        except ImageDataError as exc:
            raise IjbFormatError(f"{exc} (face {index + 1} of the {self.ijb.target} meta files)") from exc
        return align_face(image, self.ijb.landmarks[index], self.size, self.alignment)


class TemplateAccumulator:
    """Streams face features into per-(template, media) sums; ``templates()`` gives normalised templates."""

    def __init__(self, templates: np.ndarray, medias: np.ndarray, scores: np.ndarray, device: str | torch.device):
        self.device = torch.device(device)
        groups, group_of_face = np.unique(np.stack([templates, medias], 1), axis=0, return_inverse=True)
        group_of_face = group_of_face.reshape(-1)
        self.template_ids, template_of_group = np.unique(groups[:, 0], return_inverse=True)
        self.group_of_face = torch.as_tensor(group_of_face, device=self.device)
        self.template_of_group = torch.as_tensor(template_of_group.reshape(-1), device=self.device)
        counts = np.bincount(group_of_face, minlength=len(groups))
        self.group_counts = torch.as_tensor(counts, dtype=torch.float32, device=self.device)
        self.scores = torch.as_tensor(scores, dtype=torch.float32, device=self.device)
        self.sums: torch.Tensor | None = None

    def add(self, start: int, features: torch.Tensor) -> None:
        """Add the features of faces ``start .. start + len(features) - 1`` (weighted by detector score)."""
        if self.sums is None:
            self.sums = torch.zeros(len(self.group_counts), features.shape[1], device=self.device)
        stop = start + len(features)
        weighted = features.to(self.device, torch.float32) * self.scores[start:stop, None]
        self.sums.index_add_(0, self.group_of_face[start:stop], weighted)

    def templates(self) -> tuple[np.ndarray, torch.Tensor]:
        """``(template ids [T], L2-normalised template features [T, D] on device)``."""
        if self.sums is None:
            raise ValueError("no face features were added")
        media = self.sums / self.group_counts[:, None]
        feats = torch.zeros(len(self.template_ids), media.shape[1], device=self.device)
        feats.index_add_(0, self.template_of_group, media)
        return self.template_ids, torch.nn.functional.normalize(feats, dim=1)


def tar_at_far(labels: np.ndarray, scores: np.ndarray, fars: Sequence[float] = FAR_LEVELS
               ) -> tuple[dict[str, float], np.ndarray, np.ndarray, float]:
    """``({far_key: TAR}, fpr, tpr, auc)`` from ``sklearn.metrics.roc_curve``."""
    fpr, tpr, _ = roc_curve(labels, scores)
    table = {}
    for far in fars:
        gap = np.abs(fpr - far)
        table[far_key(far)] = float(tpr[np.flatnonzero(gap == gap.min())[-1]])
    return table, fpr, tpr, float(auc(fpr, tpr))


@dataclass
class IjbResult:
    """Numbers for the JSON (``metrics``) and the arrays behind the ROC plot."""

    metrics: dict[str, Any]
    scores: np.ndarray
    fpr: np.ndarray
    tpr: np.ndarray


def evaluate_ijb(model: nn.Module, ijb: IjbSet, device: str | torch.device, batch_size: int = 64,
                 workers: int = DEFAULT_WORKERS) -> IjbResult:
    """Stream every face through ``model`` (on ``device``, aligned and normalised as its ``InputSpec``
    says) and score all template pairs."""
    begin = time.perf_counter()
    accumulator = TemplateAccumulator(ijb.templates, ijb.medias, ijb.scores, device)
    spec = input_spec_of(model)
    faces = IjbFaces(ijb, spec.size, spec.alignment)
    for start, features in iter_embeddings(model, faces, device, batch_size, flip=True, workers=workers,
                                           desc=f"{ijb.target} faces"):
        accumulator.add(start, features)
    template_ids, template_feats = accumulator.templates()
    embed_seconds = time.perf_counter() - begin
    scores = pair_scores(template_feats, np.searchsorted(template_ids, ijb.pairs))
    table, fpr, tpr, area = tar_at_far(ijb.labels, scores)
    metrics = {"tar_at_far": table, "auc": area, "faces": len(ijb.names), "templates": len(template_ids),
               "pairs": len(ijb.pairs), "embed_seconds": embed_seconds}
    return IjbResult(metrics=metrics, scores=scores, fpr=fpr, tpr=tpr)
