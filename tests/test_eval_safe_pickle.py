"""insightface .bin files load only as data: Python-2 files work, anything that would run code is refused."""
from __future__ import annotations

import os
import pickle
import re
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest

from eval.safe_pickle import UnsafePickleError, load_restricted
from eval.verification import BinFormatError, JpegImages, load_bin


def _jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    image = cv2.GaussianBlur(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8), (9, 9), 3)
    return cv2.imencode(".jpg", image)[1].tobytes()


def _flat_png(value: int) -> bytes:
    """A 112x112 grey PNG compresses to < 256 bytes, so Python 2 writes it with SHORT_BINSTRING."""
    data = cv2.imencode(".png", np.full((112, 112), value, np.uint8), [cv2.IMWRITE_PNG_COMPRESSION, 9])[1].tobytes()
    assert len(data) < 256
    return data


class _Py2Writer:
    """Protocol-2 pickle bytes as Python 2's cPickle writes ``(list of str, list of bool)``."""

    def __init__(self) -> None:
        self.out = bytearray(b"\x80\x02")  # PROTO 2
        self.memo = 0

    def put(self) -> None:
        self.out += b"q" + bytes([self.memo]) if self.memo < 256 else b"r" + struct.pack("<I", self.memo)
        self.memo += 1

    def string(self, data: bytes) -> None:  # a Python 2 str: SHORT_BINSTRING / BINSTRING, then memoized
        self.out += b"U" + bytes([len(data)]) + data if len(data) < 256 else b"T" + struct.pack("<i", len(data)) + data
        self.put()

    def list_of(self, items: list, write) -> None:
        self.out += b"]"  # EMPTY_LIST
        self.put()
        for begin in range(0, len(items), 1000):  # cPickle appends in batches of 1000
            self.out += b"("  # MARK
            for item in items[begin:begin + 1000]:
                write(item)
            self.out += b"e"  # APPENDS

    def pickle(self, blobs: list[bytes], issame: list[bool]) -> bytes:
        self.list_of(blobs, self.string)
        self.list_of(issame, lambda flag: self.out.extend(b"\x88" if flag else b"\x89"))  # NEWTRUE / NEWFALSE
        self.out += b"\x86"  # TUPLE2
        self.put()
        return bytes(self.out + b".")


def test_python2_bin_loads_and_decodes(tmp_path: Path) -> None:
    blobs = [_jpeg(i) for i in range(6)] + [_flat_png(40), _flat_png(200)]
    issame = [True, False, True, False]
    raw = _Py2Writer().pickle(blobs, issame)
    assert b"T" in raw and b"U" in raw
    with pytest.raises(UnicodeDecodeError):  # why encoding="bytes" is needed: plain py3 loading fails
        pickle.loads(raw)
    path = tmp_path / "lfw.bin"
    path.write_bytes(raw)
    images, flags = load_bin(path)
    assert images == blobs and all(type(b) is bytes for b in images)
    assert flags.dtype == bool and flags.tolist() == issame
    decoded = JpegImages(images, str(path))
    assert decoded[0].shape == (112, 112, 3) and decoded[0].dtype == np.uint8
    assert decoded[6].tolist() == np.full((112, 112, 3), 40, np.uint8).tolist()
    expected_rgb = cv2.cvtColor(cv2.imdecode(np.frombuffer(blobs[1], np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert np.array_equal(decoded[1], expected_rgb)


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("form", ["list", "ndarray", "numpy_scalars"])
def test_python3_and_numpy_issame_load(tmp_path: Path, protocol: int, form: str) -> None:
    blobs = [_jpeg(i) for i in range(4)]
    flags = np.array([True, False])
    issame = {"list": flags.tolist(), "ndarray": flags, "numpy_scalars": list(flags)}[form]
    path = tmp_path / "set.bin"
    path.write_bytes(pickle.dumps((blobs, issame), protocol=protocol))  # protocol 2 writes bytes via _codecs
    images, loaded = load_bin(path)
    assert images == blobs and loaded.tolist() == [True, False]


class _Call:
    """Pickles as a call of ``func(*args)``; loading it with plain pickle would run the call."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize("make", [
    lambda marker: ([_jpeg(0), _jpeg(1)], _Call(os.system, f"touch {marker}")),
    lambda marker: _Call(eval, f"open({str(marker)!r}, 'w').close()"),
    lambda marker: ([_jpeg(0), _Call(exec, f"open({str(marker)!r}, 'w').close()")], [True]),
])
def test_malicious_bin_runs_nothing(tmp_path: Path, make) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.bin"
    payload = make(marker)
    for protocol in (2, 5):
        path.write_bytes(pickle.dumps(payload, protocol=protocol))
        with pytest.raises(UnsafePickleError) as info:
            load_bin(path)
        message = str(info.value)
        assert str(path) in message and "refused" in message
        assert re.search(r"'(posix|nt|builtins|__builtin__)\.(system|eval|exec)'", message)
        assert not marker.exists()


def test_numpy_stand_ins_refuse_other_dtypes_and_calls(tmp_path: Path) -> None:
    path = tmp_path / "obj.bin"
    path.write_bytes(pickle.dumps(([_jpeg(0), _jpeg(1)], np.array([True], dtype=object)), protocol=2))
    with pytest.raises(UnsafePickleError, match="only bool"):
        load_restricted(path)
    # _reconstruct(<list>, ...) instead of ndarray: refused, and the list is never called
    raw = (b"\x80\x02cnumpy.core.multiarray\n_reconstruct\n]K\x00\x85U\x01b\x87R.")
    path.write_bytes(raw)
    with pytest.raises(UnsafePickleError, match="other than ndarray"):
        load_restricted(path)
    path.write_bytes(pickle.dumps(("abc".encode("latin-1"),), protocol=2).replace(b"latin1", b"rot13 "))
    with pytest.raises(UnsafePickleError):
        load_restricted(path)


def test_bin_with_wrong_structure_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "short.bin"
    path.write_bytes(pickle.dumps(([_jpeg(0)], [True])))
    with pytest.raises(BinFormatError, match=r"short\.bin: 1 pairs need 2 images"):
        load_bin(path)
    path.write_bytes(pickle.dumps({"images": []}))
    with pytest.raises(BinFormatError, match="expected a pickled pair"):
        load_bin(path)
    path.write_bytes(_Py2Writer().pickle([_jpeg(0), _jpeg(1)], [True])[:-40])  # truncated download
    with pytest.raises(BinFormatError, match=r"short\.bin: not a readable \.bin pickle"):
        load_bin(path)
