"""Atomic file writes, output folders and file hashes, shared by every package that writes results or caches.

A write goes to a temporary file in the target folder, is flushed to disk, gets the permissions a plain
``open(..., "w")`` would give it (``mkstemp`` makes 0600), and is renamed over the target: a crash
never leaves a half-written file, and readers always see the previous complete one.  Ctrl-C during a
write takes effect once the file is complete; a full disk is one ``DiskFullError`` naming the file.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import signal
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, IO, Iterator

import torch

from utils.errors import InputError, RunError

# errors of a write that found no room, and how the message says it
NO_ROOM = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
           errno.EFBIG: "the file size limit was reached"}


class DiskFullError(RunError):
    """A file could not be written for lack of room; the previous version of the file is left as it was."""


class OutputError(InputError):
    """An output folder cannot be written; raised before any work starts."""


def check_writable_dir(path: str | os.PathLike, what: str) -> Path:
    """``path`` if it is (or can be created as) a folder this process can write into, else ``OutputError``.

    Nothing is created: commands call this before loading anything, so an output that cannot be written
    is reported at once rather than after the work."""
    path = Path(path).expanduser().absolute()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"cannot write to {what} {path}: {existing} is a file, not a folder; choose another {what}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write to {what} {path}: {existing} is not writable; choose another {what}")
    return path


@contextlib.contextmanager
def created_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Create folder ``path`` (and missing parents) for the block; when the block fails, remove again the
    folders it created that are still empty, so a command that fails leaves nothing behind."""
    path = Path(path).expanduser()
    missing, folder = [], path.absolute()
    while not folder.exists():
        missing.append(folder)  # deepest first
        folder = folder.parent
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield path
    except BaseException:
        for folder in missing:
            if any(folder.iterdir()):
                break
            folder.rmdir()
        raise


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) until the block ends, then raise ``KeyboardInterrupt``: a file being written is
    finished rather than abandoned half-way.  Only where Python's own SIGINT handler is installed (the main
    thread of a process nobody re-routed SIGINT in)."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def _no_room(exc: BaseException) -> OSError | None:
    """The out-of-room ``OSError`` behind ``exc`` (torch's writer reports it as a ``RuntimeError`` whose
    context is the ``OSError``), or None."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in NO_ROOM:
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _umask_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(handle)`` on a temp file beside ``path``, fsync, then rename it over ``path``.

    Ctrl-C waits until the file is in place; a write that finds no room removes the temp file and raises
    ``DiskFullError`` naming ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with interrupts_deferred():
            with os.fdopen(fd, "wb") as handle:
                write(handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, _umask_mode())
            os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        no_room = _no_room(exc)
        if no_room is None:
            raise
        kept = f"the previous {path.name} is intact" if path.exists() else f"no {path.name} was written"
        raise DiskFullError(f"{NO_ROOM[no_room.errno]} while writing {path} ({no_room.strerror}); {kept}. "
                            "Free space, then run again") from exc
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically (a crash mid-run leaves the previous complete file)."""
    return atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to ``path`` atomically."""
    return atomic_write(path, lambda handle: torch.save(obj, handle))


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
