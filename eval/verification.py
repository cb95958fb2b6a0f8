"""1:1 verification on insightface ``.bin`` sets (LFW, CFP-FP, AgeDB-30, CALFW, CPLFW) with insightface's protocol.

A ``.bin`` is a pickle of ``(jpeg_bytes_list, issame_list)``; images ``2k`` and ``2k+1`` form pair ``k``.
It is read with ``eval.safe_pickle`` (no code in the file can run).  Each image and its mirror are
embedded, summed and L2-normalised; pairs are compared by squared L2 distance.  The numbers follow
insightface ``recognition/arcface_torch/eval/verification.py``: 10 contiguous folds (sklearn ``KFold``,
no shuffle), accuracy at the threshold in ``arange(0, 4, 0.01)`` that is best on the other nine folds
(mean, std over folds, and the mean chosen threshold), and VAL at FAR = 1e-3 with thresholds
``arange(0, 4, 0.001)`` placed by linear interpolation of the training folds' FAR curve (as SciPy's
``interp1d(kind="slinear")`` did for insightface before SciPy began rejecting the curve's repeated FAR
values; see ``_threshold_at_far``).
"""
from __future__ import annotations

import os
import pickle
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import torch
from sklearn.model_selection import KFold
from torch import nn

from backbones.spec import input_spec_of
from data.images import ImageDataError, decode_rgb, fit_size
from eval.embed import DEFAULT_WORKERS, embed_batches
from eval.safe_pickle import UnsafePickleError, load_restricted
from utils.errors import InputError

IMAGE_SIZE = 112


class BinFormatError(InputError, ValueError):
    """A .bin file does not hold ``(list of image bytes, list of bools)``; the message names the file."""


class BinMissingError(InputError, FileNotFoundError):
    """A verification set asked for is not there; the message names every missing file."""


def find_bins(data_dir: str | os.PathLike, targets: Sequence[str]) -> dict[str, Path]:
    """``{target: <data_dir>/<target>.bin}``, every missing file reported at once, before any model runs."""
    bins = {name: Path(data_dir).expanduser() / f"{name}.bin" for name in targets}
    missing = [str(p) for p in bins.values() if not p.is_file()]
    if missing:
        raise BinMissingError(f"verification set(s) not found: {', '.join(missing)}; choose the available "
                                "targets (eval_targets / --targets) or fix the folder (eval_data_dir / --data-dir)")
    return bins


def load_bin(path: str | os.PathLike, min_pairs: int = 1) -> tuple[list[bytes], np.ndarray]:
    """``(encoded images, issame bool [P])`` of a .bin with at least ``min_pairs`` pairs (checked here, before
    anything is embedded).  Only the first ``2 P`` images are used, as insightface does; extra images are
    named in a warning line rather than dropped without a word."""
    path = Path(path)
    if not path.is_file():
        raise BinMissingError(f"verification set not found: {path}")
    try:
        obj = load_restricted(path)
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, RecursionError) as exc:
        raise BinFormatError(f"{path}: not a readable .bin pickle ({type(exc).__name__}: {exc})") from exc
    if not (isinstance(obj, (tuple, list)) and len(obj) == 2):
        raise BinFormatError(f"{path}: expected a pickled pair (images, issame), got {type(obj).__name__}")
    bins, issame = obj
    if not isinstance(bins, (list, tuple)) or not all(isinstance(b, (bytes, bytearray)) for b in bins):
        raise BinFormatError(f"{path}: the first element must be a list of encoded image bytes")
    flags = np.asarray(issame)
    if flags.ndim != 1 or not (flags.dtype == bool or np.isin(flags, (0, 1)).all()):
        raise BinFormatError(f"{path}: the second element must be a flat list of booleans (issame)")
    if len(flags) == 0 or len(bins) < 2 * len(flags):
        raise BinFormatError(f"{path}: {len(flags)} pairs need {2 * len(flags)} images, the file has {len(bins)}")
    if len(flags) < min_pairs:
        raise BinFormatError(f"{path}: {len(flags)} pairs; the {min_pairs}-fold protocol needs at least {min_pairs}")
    if len(bins) > 2 * len(flags):
        print(f"warning: {path}: {len(bins)} images for {len(flags)} pairs; the last {len(bins) - 2 * len(flags)} "
              "are not in any pair and are ignored (as insightface does)", file=sys.stderr, flush=True)
    return list(bins[: 2 * len(flags)]), flags.astype(bool)


def write_bin(path: str | os.PathLike, images: Sequence[np.ndarray], issame: Sequence[bool],
              quality: int = 95) -> Path:
    """Pack RGB uint8 images (pair ``k`` = images ``2k``, ``2k+1``) as an insightface .bin of JPEG bytes."""
    if len(images) != 2 * len(issame):
        raise ValueError(f"{len(images)} images for {len(issame)} pairs; need two images per pair")
    blobs = []
    for i, image in enumerate(images):
        ok, data = cv2.imencode(".jpg", cv2.cvtColor(np.asarray(image), cv2.COLOR_RGB2BGR),
                                [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise ValueError(f"image {i} cannot be encoded as JPEG")
        blobs.append(data.tobytes())
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        pickle.dump((blobs, [bool(x) for x in issame]), handle, protocol=pickle.HIGHEST_PROTOCOL)
    return path


class JpegImages(Sequence[np.ndarray]):
    """Lazy RGB ``size`` x ``size`` decoding of encoded images (in the loader threads, never all at once)."""

    def __init__(self, blobs: Sequence[bytes], source: str, size: int = IMAGE_SIZE, alignment: str = "arcface_112"):
        self.blobs, self.source, self.size, self.alignment = blobs, source, size, alignment

    def __len__(self) -> int:
        return len(self.blobs)

    def __getitem__(self, index: int) -> np.ndarray:  # type: ignore[override]
        try:
            image = decode_rgb(self.blobs[index], f"{self.source} image {index}")
        except ImageDataError as exc:
            raise BinFormatError(str(exc)) from exc
        return fit_size(image, self.size, self.alignment)


def _folds(num_pairs: int, nrof_folds: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return list(KFold(n_splits=nrof_folds, shuffle=False).split(np.arange(num_pairs)))


def _counts_below(dist: np.ndarray, issame: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per threshold: same pairs and different pairs with ``dist < threshold``."""
    same = np.searchsorted(np.sort(dist[issame]), thresholds, side="left")
    diff = np.searchsorted(np.sort(dist[~issame]), thresholds, side="left")
    return same, diff


def _threshold_at_far(far: np.ndarray, thresholds: np.ndarray, target: float) -> float:
    """Linear interpolation of threshold over the (non-decreasing) FAR curve, as insightface's
    ``interp1d(far, thresholds, kind="slinear")`` computed before SciPy refused repeated x values:
    across a FAR step it joins the last threshold of the lower level to the first of the upper one,
    on an exact hit it takes the last threshold of that level; 0 when ``target`` is never reached."""
    if far.max() < target:
        return 0.0
    low = int(np.searchsorted(far, target, side="right")) - 1
    if far[low] == target:
        return float(thresholds[low])
    high = low + 1
    weight = (target - far[low]) / (far[high] - far[low])
    return float(thresholds[low] + weight * (thresholds[high] - thresholds[low]))


def evaluate(embeddings: np.ndarray, issame: Sequence[bool] | np.ndarray, nrof_folds: int = 10,
             far_target: float = 1e-3) -> dict[str, Any]:
    """Accuracy (mean, std over folds), mean best threshold and VAL@FAR of L2-normalised pair embeddings.

    ``embeddings`` is [2 P, D] with pairs on consecutive rows; ``issame`` is [P].  ``val``, ``val_std``
    and ``far`` are None when some fold holds only same or only different pairs (insightface divides
    by zero there).
    """
    issame = np.asarray(issame, dtype=bool)
    emb = np.asarray(embeddings, dtype=np.float64)
    if emb.shape[0] != 2 * len(issame):
        raise ValueError(f"{emb.shape[0]} embeddings for {len(issame)} pairs; need two rows per pair")
    if len(issame) < nrof_folds:
        raise ValueError(f"{len(issame)} pairs cannot be split into {nrof_folds} folds")
    dist = np.sum(np.square(emb[0::2] - emb[1::2]), axis=1)
    folds = _folds(len(issame), nrof_folds)

    acc_thresholds = np.arange(0, 4, 0.01)
    accuracy, best = np.zeros(nrof_folds), np.zeros(nrof_folds)
    for k, (train, test) in enumerate(folds):
        same, diff = _counts_below(dist[train], issame[train], acc_thresholds)
        correct = same + (np.count_nonzero(~issame[train]) - diff)
        best[k] = acc_thresholds[int(np.argmax(correct))]
        predicted = dist[test] < best[k]
        accuracy[k] = np.mean(predicted == issame[test])

    result = {"accuracy": float(accuracy.mean()), "accuracy_std": float(accuracy.std()),
              "best_threshold": float(best.mean()), "val": None, "val_std": None, "far": None,
              "far_target": far_target, "pairs": int(len(issame)), "fold_accuracy": accuracy.tolist()}
    if any(len(np.unique(issame[test])) < 2 for _, test in folds):
        return result  # VAL and FAR are undefined when a fold lacks same or different pairs (tiny sets)

    val_thresholds = np.arange(0, 4, 0.001)
    val, far = np.zeros(nrof_folds), np.zeros(nrof_folds)
    for k, (train, test) in enumerate(folds):
        n_diff_train = np.count_nonzero(~issame[train])
        n_same_test, n_diff_test = np.count_nonzero(issame[test]), np.count_nonzero(~issame[test])
        _, diff = _counts_below(dist[train], issame[train], val_thresholds)
        threshold = _threshold_at_far(diff / n_diff_train, val_thresholds, far_target)
        predicted = dist[test] < threshold
        val[k] = np.count_nonzero(predicted & issame[test]) / n_same_test
        far[k] = np.count_nonzero(predicted & ~issame[test]) / n_diff_test

    result.update(val=float(val.mean()), val_std=float(val.std()), far=float(far.mean()))
    return result


def verify(model: nn.Module, bin_path: str | os.PathLike, device: str | torch.device, batch_size: int = 64,
           nrof_folds: int = 10, workers: int = DEFAULT_WORKERS) -> dict[str, Any]:
    """Embed a .bin set with the flip test and return ``evaluate``'s numbers plus the embedding time.

    ``model`` must be on ``device`` (normalised as its ``InputSpec`` says); its train/eval mode is
    restored afterwards.
    """
    bins, issame = load_bin(bin_path, min_pairs=nrof_folds)
    begin = time.perf_counter()
    spec = input_spec_of(model)
    images = JpegImages(bins, str(bin_path), spec.size, spec.alignment)
    features = embed_batches(model, images, device, batch_size, flip=True, workers=workers,
                             desc=Path(bin_path).stem)
    seconds = time.perf_counter() - begin
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    result = evaluate(features / np.maximum(norms, 1e-12), issame, nrof_folds)
    result.update(embed_seconds=seconds, images=len(bins))
    return result
