"""A folder (flat or nested) of aligned face images, e.g. QuantFace's 528k synthetic faces."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from data.images import ImageDataError, decode_rgb, fit_size, to_input

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def _scan(root: Path) -> list[str]:
    """Relative paths of every image under ``root``, in a fixed (sorted) order."""
    found = []
    for directory, subdirs, names in os.walk(root):
        subdirs.sort()
        rel = os.path.relpath(directory, root)
        found.extend(os.path.normpath(os.path.join(rel, name)) for name in sorted(names)
                     if name.lower().endswith(IMAGE_SUFFIXES))
    return found


class FaceFolderDataset(Dataset):
    """Every .jpg/.jpeg/.png under ``root`` as a face: RGB, ``size`` x ``size``, ``(x - mean) / std``.

    ``__getitem__`` returns a normalised float [3, size, size] tensor (mirrored at random when
    ``random_flip``); ``read(i)`` the uint8 RGB image before flip and normalisation.  Paths are kept
    in one numpy byte array so forked DataLoader workers do not copy them (no per-path objects).
    """

    def __init__(self, root: str | os.PathLike, size: int = 112, mean: float = 127.5, std: float = 127.5,
                 random_flip: bool = False) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise ImageDataError(f"face image folder not found: {self.root} (data_path must be a folder of "
                                 ".jpg/.png faces, e.g. written by `python -m tools.generate_faces`)")
        files = _scan(self.root)
        if not files:
            raise ImageDataError(f"no {'/'.join(IMAGE_SUFFIXES)} images found under {self.root}")
        self._files = np.array([os.fsencode(name) for name in files])
        self.size, self.mean, self.std, self.random_flip = size, mean, std, random_flip

    def __len__(self) -> int:
        return len(self._files)

    def path(self, index: int) -> Path:
        """File of image ``index``."""
        return self.root / os.fsdecode(self._files[index])

    def read(self, index: int) -> np.ndarray:
        """Image ``index`` as size x size x 3 uint8 RGB."""
        path = self.path(index)
        try:
            data = np.fromfile(path, dtype=np.uint8)
        except OSError as exc:
            raise ImageDataError(f"cannot read image {path}: {exc}") from exc
        return fit_size(decode_rgb(data, str(path)), self.size)

    def __getitem__(self, index: int) -> torch.Tensor:
        return to_input(self.read(index), self.mean, self.std, self.random_flip)
