"""Read pickles that come from outside (insightface ``.bin`` files) without ever running their code.

A pickle can call any importable function while it loads.  ``RestrictedUnpickler.find_class`` refuses
every global, so a file holding only lists, tuples, bytes, str, numbers and bools loads and anything
that asks for a callable stops with ``UnsafePickleError`` before it is called.

Re-saved ``.bin`` files sometimes hold numpy bools or byte strings written by Python 3 with protocol
2.  Those globals are answered by stand-ins defined here, never by numpy or codecs themselves:
``numpy.dtype`` (bool only), ``numpy.ndarray`` (a token), ``numpy[._]core.multiarray._reconstruct`` /
``scalar``, ``numpy[._]core.numeric._frombuffer`` and ``_codecs.encode`` (latin-1 only).  They build
bool arrays with ``np.frombuffer(raw, uint8) != 0`` and bytes with ``str.encode("latin-1")``; any other
dtype, codec or argument is refused the same way.
"""
from __future__ import annotations

import io
import math
import os
import pickle
from typing import Any

import numpy as np

from utils.errors import InputError


class UnsafePickleError(InputError, pickle.UnpicklingError):
    """A pickle asked for a global outside the allow-list; nothing it named was run."""


class _NdarrayToken:
    """Stands for ``numpy.ndarray`` as the first argument of ``_reconstruct``; not callable."""


class _BoolDtype:
    """Stands for ``numpy.dtype('bool')``; ``__setstate__`` accepts the byte-order state and ignores it."""

    def __setstate__(self, state: Any) -> None:
        pass


class _BoolArray:
    """Stands for a bool ndarray being rebuilt by ``_reconstruct`` + ``__setstate__``."""

    def __init__(self, source: str):
        self.source = source
        self.value: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise UnsafePickleError(f"{self.source}: malformed numpy array state in the pickle")
        shape, dtype, fortran, raw = state[-4:]
        self.value = _bool_array(self.source, raw, dtype, shape, "F" if fortran else "C")


def _bool_array(source: str, raw: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    if not isinstance(dtype, _BoolDtype):
        raise UnsafePickleError(f"{source}: the pickle holds a numpy array that is not bool; refused")
    if not isinstance(raw, (bytes, bytearray)) or not isinstance(shape, tuple) \
            or not all(isinstance(n, int) and n >= 0 for n in shape) or len(raw) != math.prod(shape):
        raise UnsafePickleError(f"{source}: malformed numpy bool array in the pickle")
    order = order.decode() if isinstance(order, bytes) else order
    return (np.frombuffer(bytes(raw), dtype=np.uint8) != 0).reshape(shape, order="F" if order == "F" else "C")


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` allows nothing but the stand-ins listed above.

    Strings written by Python 2 are read as bytes (``encoding="bytes"``), as insightface reads .bin files.
    """

    def __init__(self, file: io.BufferedIOBase, source: str):
        super().__init__(file, encoding="bytes")
        self.source = source
        self._allowed = self._stand_ins()

    def find_class(self, module: str, name: str) -> Any:
        stand_in = self._allowed.get((module, name))
        if stand_in is None:
            raise UnsafePickleError(
                f"{self.source}: refused to load the Python global '{module}.{name}' that the pickle asks for "
                "(a verification .bin holds only JPEG bytes and booleans; nothing in the file was run). "
                "Use the .bin files published with insightface or re-create this one from its images.")
        return stand_in

    def _stand_ins(self) -> dict[tuple[str, str], Any]:
        source = self.source

        def dtype(kind: Any, align: Any = False, copy: Any = False) -> _BoolDtype:
            if kind not in ("b1", "?", b"b1", b"?"):
                raise UnsafePickleError(f"{source}: the pickle holds numpy dtype {kind!r}; only bool is accepted")
            return _BoolDtype()

        def reconstruct(cls: Any, shape: Any, typecode: Any) -> _BoolArray:
            if not isinstance(cls, _NdarrayToken):
                raise UnsafePickleError(f"{source}: numpy _reconstruct called on something other than ndarray")
            return _BoolArray(source)

        def scalar(dtype_: Any, raw: Any = b"\x00") -> np.bool_:
            if not isinstance(dtype_, _BoolDtype) or not isinstance(raw, (bytes, bytearray)) or len(raw) != 1:
                raise UnsafePickleError(f"{source}: the pickle holds a numpy scalar that is not a bool; refused")
            return np.bool_(raw[0] != 0)

        def frombuffer(buf: Any, dtype_: Any, shape: Any, order: Any) -> np.ndarray:
            return _bool_array(source, buf, dtype_, shape, order)

        def encode(text: Any, codec: Any = "utf-8") -> bytes:
            if not isinstance(text, str) or codec not in ("latin1", "latin-1"):
                raise UnsafePickleError(f"{source}: _codecs.encode with codec {codec!r}; only latin1 is accepted")
            return text.encode("latin-1")

        table: dict[tuple[str, str], Any] = {("numpy", "dtype"): dtype, ("numpy", "ndarray"): _NdarrayToken(),
                                             ("_codecs", "encode"): encode}
        for core in ("numpy.core", "numpy._core"):
            table[(f"{core}.multiarray", "_reconstruct")] = reconstruct
            table[(f"{core}.multiarray", "scalar")] = scalar
            table[(f"{core}.numeric", "_frombuffer")] = frombuffer
        return table


def _resolve(obj: Any) -> Any:
    """Replace bool-array stand-ins by their arrays inside the loaded lists and tuples."""
    if isinstance(obj, _BoolArray):
        if obj.value is None:
            raise UnsafePickleError(f"{obj.source}: a numpy array in the pickle has no data")
        return obj.value
    if isinstance(obj, (_BoolDtype, _NdarrayToken)):
        raise UnsafePickleError("a numpy dtype/ndarray object is left over in the pickle; refused")
    if isinstance(obj, list):
        return [_resolve(x) for x in obj]
    if isinstance(obj, tuple):
        return tuple(_resolve(x) for x in obj)
    return obj


def load_restricted(path: str | os.PathLike) -> Any:
    """Unpickle ``path`` with ``RestrictedUnpickler``; raises ``UnsafePickleError`` naming the file."""
    with open(path, "rb") as handle:
        return _resolve(RestrictedUnpickler(handle, str(path)).load())
