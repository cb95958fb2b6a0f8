"""A folder (flat or nested) of aligned face images, e.g. QuantFace's 528k synthetic faces."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from data.images import ImageDataError, fit_size, read_rgb, to_chw

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
    """Every .jpg/.jpeg/.png under ``root`` as a face: RGB, ``size`` x ``size``.

    ``read(i)`` gives the uint8 HxWx3 image, ``dataset[i]`` the uint8 [3, size, size] tensor; flips and
    normalisation happen batched (``data.train_batches``).  Paths are kept in one numpy byte array so
    forked DataLoader workers do not copy them (no per-path objects).
    """

    def __init__(self, root: str | os.PathLike, size: int = 112, alignment: str = "arcface_112") -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise ImageDataError(f"face image folder not found: {self.root} (data_path must be a folder of "
                                 ".jpg/.png faces, e.g. written by `python -m tools.generate_faces`)")
        files = _scan(self.root)
        if not files:
            raise ImageDataError(f"no {'/'.join(IMAGE_SUFFIXES)} images found under {self.root}")
        self._files = np.array([os.fsencode(name) for name in files])
        self.size, self.alignment = size, alignment

    def __len__(self) -> int:
        return len(self._files)

    def path(self, index: int) -> Path:
        """File of image ``index``."""
        return self.root / os.fsdecode(self._files[index])

    def read(self, index: int) -> np.ndarray:
        """Image ``index`` as size x size x 3 uint8 RGB."""
        return fit_size(read_rgb(self.path(index)), self.size, self.alignment)

    def __getitem__(self, index: int) -> torch.Tensor:
        return to_chw(self.read(index))
