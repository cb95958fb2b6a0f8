"""MXNet indexed RecordIO (``train.rec`` + ``train.idx``, insightface's faces_emore format) without mxnet.

Layout (dmlc-core ``recordio.h``, mxnet ``recordio.py``), all little-endian:

* ``.idx``: one ``key<TAB>byte offset`` line per record.
* record: uint32 magic 0xced7230a, uint32 ``lrec`` (length = lrec & (2**29 - 1), cflag = lrec >> 29),
  the data, zero padding to a multiple of 4.  A payload containing the magic word at a 4-aligned
  position is split there into parts (cflag 1 = first, 2 = middle, 3 = last; 0 = whole record) and
  the magic word itself is dropped: the reader puts it back between the parts.
* payload: IRHeader ``<IfQQ`` (flag, label, id, id2), then ``flag`` float32 labels when flag > 0
  (the class is the first), then the encoded image.
* insightface: record 0 with flag > 0 is a header whose label[0] ends the image keys (1 .. label[0]-1);
  without it every key of the .idx is an image, in key order.

Each process opens its own file handle on first use (DataLoader workers never share one).
"""
from __future__ import annotations

import os
import struct
from array import array
from pathlib import Path
from typing import BinaryIO, Iterable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from data.images import ImageDataError, decode_rgb, fit_size, to_chw

RECORD_MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", RECORD_MAGIC)
_FRAME = struct.Struct("<II")
_IRHEADER = struct.Struct("<IfQQ")
_LENGTH_MASK = (1 << 29) - 1


class RecordIOError(ImageDataError):
    """A .rec/.idx pair is missing, truncated or inconsistent; the message names file and record."""


def _padded(length: int) -> int:
    return (length + 3) & ~3


def pack_payload(image: bytes, label: float | Sequence[float], id1: int = 0, id2: int = 0) -> bytes:
    """IRHeader + optional float32 label array + image bytes (mxnet ``recordio.pack``)."""
    if isinstance(label, (int, float)):
        return _IRHEADER.pack(0, float(label), id1, id2) + image
    labels = np.asarray(label, dtype="<f4")
    return _IRHEADER.pack(labels.size, 0.0, id1, id2) + labels.tobytes() + image


def unpack_payload(payload: bytes, source: str) -> tuple[int, np.ndarray, bytes]:
    """(flag, float32 labels, image bytes) of a payload; with flag 0 the labels are the one scalar label."""
    if len(payload) < _IRHEADER.size:
        raise RecordIOError(f"{source}: payload of {len(payload)} bytes is shorter than the 24-byte IRHeader")
    flag, label, _, _ = _IRHEADER.unpack_from(payload)
    if flag == 0:
        return flag, np.array([label], dtype=np.float32), payload[_IRHEADER.size:]
    end = _IRHEADER.size + 4 * flag
    if len(payload) < end:
        raise RecordIOError(f"{source}: IRHeader announces {flag} labels but the payload has {len(payload)} bytes")
    return flag, np.frombuffer(payload, dtype="<f4", count=flag, offset=_IRHEADER.size).copy(), payload[end:]


def _magic_positions(payload: bytes) -> Iterable[int]:
    pos = payload.find(_MAGIC_BYTES)
    while pos != -1:
        if pos % 4 == 0:
            yield pos
        pos = payload.find(_MAGIC_BYTES, pos + 1)


def frame_record(payload: bytes) -> bytes:
    """Payload -> framed record bytes, split into parts at 4-aligned magic words as dmlc-core does."""
    if len(payload) > _LENGTH_MASK:
        raise RecordIOError(f"record of {len(payload)} bytes exceeds the RecordIO limit of 2**29 - 1")
    parts, start = [], 0
    for pos in _magic_positions(payload):
        parts.append(payload[start:pos])
        start = pos + 4
    parts.append(payload[start:])
    out = bytearray()
    for number, part in enumerate(parts):
        cflag = 0 if len(parts) == 1 else 1 if number == 0 else 3 if number == len(parts) - 1 else 2
        out += _FRAME.pack(RECORD_MAGIC, (cflag << 29) | len(part)) + part + bytes(_padded(len(part)) - len(part))
    return bytes(out)


def write_recordio(rec_path: str | os.PathLike, items: Iterable[tuple[bytes, float | Sequence[float]]],
                   header: bool = True) -> tuple[Path, Path]:
    """Write (image bytes, label) items as ``.rec`` + ``.idx`` (keys 1..N after an insightface header
    record 0 when ``header``, else keys 0..N-1); returns both paths."""
    rec_path = Path(rec_path)
    idx_path = rec_path.with_suffix(".idx")
    items = list(items)
    first = 1 if header else 0
    with open(rec_path, "wb") as rec, open(idx_path, "w") as idx:
        if header:
            end = float(len(items) + 1)
            idx.write(f"0\t{rec.tell()}\n")
            rec.write(frame_record(pack_payload(b"", [end, end])))
        for key, (image, label) in enumerate(items, start=first):
            idx.write(f"{key}\t{rec.tell()}\n")
            rec.write(frame_record(pack_payload(image, label)))
    return rec_path, idx_path


class RecordIndex:
    """key -> byte offset of a ``.rec``'s records, as two int64 numpy arrays sorted by key.

    Why not a dict: 5.8M records (faces_emore) take a lot of memory as Python ints (docs/data.md), and
    every DataLoader worker ends up with its own copy (reading a Python object writes its reference count,
    so forked pages get copied); two arrays take 16 bytes a record and stay shared.
    """

    def __init__(self, keys: np.ndarray, offsets: np.ndarray) -> None:
        order = np.argsort(keys, kind="stable")
        keys, offsets = keys[order], offsets[order]
        last = np.append(keys[1:] != keys[:-1], True)  # a key listed twice: its last line counts, as in mxnet
        self.keys, self.offsets = keys[last], offsets[last]

    def __len__(self) -> int:
        return len(self.keys)

    def _position(self, key: int) -> int:
        at = int(np.searchsorted(self.keys, key))
        return at if at < len(self.keys) and self.keys[at] == key else -1

    def __contains__(self, key: int) -> bool:
        return self._position(key) >= 0

    def __getitem__(self, key: int) -> int:
        at = self._position(key)
        if at < 0:
            raise KeyError(key)
        return int(self.offsets[at])

    def last_record(self) -> int:
        """The key of the record that lies furthest into the file."""
        return int(self.keys[np.argmax(self.offsets)])


def read_index(idx_path: Path, rec_path: Path) -> RecordIndex:
    """key -> offset from a ``.idx`` file, checked against the size of its ``.rec``."""
    if not idx_path.is_file():
        raise RecordIOError(f"index file {idx_path} not found (needed for random access into {rec_path}; "
                            "it is written next to the .rec by im2rec / insightface)")
    size = rec_path.stat().st_size
    keys, offsets = array("q"), array("q")
    with open(idx_path) as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            fields = line.split()
            try:
                key, offset = int(fields[0]), int(fields[1])
            except (ValueError, IndexError):
                raise RecordIOError(f"{idx_path} line {number}: expected 'key<TAB>offset', "
                                    f"got {line.strip()!r}") from None
            if offset < 0 or offset + _FRAME.size > size:
                raise RecordIOError(f"{idx_path} line {number}: record {key} at byte {offset} lies beyond the end "
                                    f"of {rec_path} ({size} bytes); the .rec is truncated or the .idx belongs "
                                    "to another file")
            keys.append(key)
            offsets.append(offset)
    if not keys:
        raise RecordIOError(f"index file {idx_path} lists no records")
    return RecordIndex(np.frombuffer(keys, dtype=np.int64), np.frombuffer(offsets, dtype=np.int64))


class RecordIOFile:
    """Random access to the payloads of a ``.rec`` through its ``.idx``; safe across forked workers."""

    def __init__(self, rec_path: str | os.PathLike, idx_path: str | os.PathLike | None = None) -> None:
        self.rec_path = Path(rec_path).expanduser()
        if not self.rec_path.is_file():
            raise RecordIOError(f"RecordIO file not found: {self.rec_path}")
        self.idx_path = Path(idx_path).expanduser() if idx_path else self.rec_path.with_suffix(".idx")
        self.index = read_index(self.idx_path, self.rec_path)
        self._size = self.rec_path.stat().st_size
        self._handle: BinaryIO | None = None
        self._pid = -1

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_handle": None, "_pid": -1}

    def _file(self) -> BinaryIO:
        if self._handle is None or self._pid != os.getpid():
            self._handle = open(self.rec_path, "rb", buffering=0)
            self._pid = os.getpid()
        return self._handle

    def close(self) -> None:
        """Close this process's handle (reopened on the next read)."""
        if self._handle is not None and self._pid == os.getpid():
            self._handle.close()
        self._handle = None

    def _read_at(self, offset: int, length: int, key: int) -> bytes:
        handle = self._file()
        handle.seek(offset)
        data = handle.read(length)
        if len(data) != length:
            raise RecordIOError(f"{self.rec_path} record {key}: needs bytes {offset}..{offset + length} but the "
                                f"file ends at {self._size}; the file is truncated (copy or download it again)")
        return data

    def read(self, key: int) -> bytes:
        """The payload of record ``key`` (multi-part records joined back together)."""
        if key not in self.index:
            raise RecordIOError(f"record {key} is not listed in {self.idx_path} ({len(self.index)} records)")
        offset, parts, expected = self.index[key], [], (0, 1)
        while True:
            magic, lrec = _FRAME.unpack(self._read_at(offset, _FRAME.size, key))
            if magic != RECORD_MAGIC:
                raise RecordIOError(f"{self.rec_path} record {key}: bad magic number 0x{magic:08x} at byte {offset} "
                                    f"(expected 0x{RECORD_MAGIC:08x}); the file is corrupt or the .idx is stale")
            cflag, length = lrec >> 29, lrec & _LENGTH_MASK
            if cflag not in expected:
                raise RecordIOError(f"{self.rec_path} record {key}: part flag {cflag} at byte {offset} where "
                                    f"{' or '.join(map(str, expected))} was expected; the multi-part record is corrupt")
            parts.append(self._read_at(offset + _FRAME.size, length, key))
            offset += _FRAME.size + _padded(length)
            if cflag in (0, 3):
                return _MAGIC_BYTES.join(parts)
            expected = (2, 3)


class RecordIODataset(Dataset):
    """Face images of an insightface ``train.rec``/``train.idx``: ``(image, class)`` pairs.

    ``path`` is the ``.rec`` file or the folder holding ``train.rec``.  Images are RGB, resized to
    ``size`` when they are not; ``dataset[i]`` is ``(uint8 [3, size, size], class)`` (flips and
    normalisation happen batched, in ``data.train_batches``).
    """

    def __init__(self, path: str | os.PathLike, size: int = 112, alignment: str = "arcface_112") -> None:
        path = Path(path).expanduser()
        self.file = RecordIOFile(path / "train.rec" if path.is_dir() else path)
        self.keys = self._image_keys()
        self.file.close()  # workers open their own handles
        self.size, self.alignment = size, alignment

    def _image_keys(self) -> np.ndarray:
        index = self.file.index
        self.file.read(index.last_record())  # a truncated file fails here, not hours into training
        if 0 not in index:
            return index.keys.copy()
        flag, labels, _ = unpack_payload(self.file.read(0), f"{self.file.rec_path} record 0")
        if flag == 0:  # no insightface header: record 0 is an image too
            return index.keys.copy()
        end = int(labels[0])
        if end != labels[0] or end < 2:
            raise RecordIOError(f"{self.file.rec_path} record 0: header label[0] = {labels[0]} announces no images "
                                "(expected an integer > 1: one past the last image key)")
        wanted = np.arange(1, end, dtype=np.int64)
        absent = wanted[~np.isin(wanted, index.keys)]
        missing = int(absent[0]) if len(absent) else None
        if missing is not None:
            raise RecordIOError(f"{self.file.rec_path}: header record 0 announces images 1..{end - 1} but record "
                                f"{missing} is not in {self.file.idx_path}; the .idx is incomplete")
        return np.arange(1, end, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.keys)

    def record(self, index: int) -> tuple[np.ndarray, int]:
        """Image ``index`` as size x size x 3 uint8 RGB, and its class."""
        key = int(self.keys[index])
        source = f"{self.file.rec_path} record {key}"
        _, labels, image = unpack_payload(self.file.read(key), source)
        return fit_size(decode_rgb(image, source), self.size, self.alignment), int(labels[0])

    def read(self, index: int) -> np.ndarray:
        """Image ``index`` as size x size x 3 uint8 RGB."""
        return self.record(index)[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.record(index)
        return to_chw(image), label
