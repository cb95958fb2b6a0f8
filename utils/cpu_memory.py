"""Keep freed CPU memory in the process, so a training step does not pay the kernel for it again.

glibc serves every allocation over its mmap threshold (at most 32 MB) with a fresh ``mmap`` and gives it
back with ``munmap`` when the tensor dies.  A CPU training step allocates and frees the same large
activations, gradients and fake-quantized copies every step, and each new buffer costs the kernel one page
fault per 4 KB, zeroing included: many faults a step and a sizeable share of the step spent in the
kernel, more for a quantized student (it holds more large temporaries); the figures are in
docs/training.md (CPU memory).  With ``mmap`` off and the heap trimmed only when over 2 GB of its top is
free, freed buffers are reused as they are: once the heap has grown to hold a step's peak (a few steps;
fragmentation makes it grow now and then later too) most steps fault no new pages, for a larger resident
set (the peak stays allocated).

``QUANTFACE_REUSE_CPU_MEMORY=0`` leaves glibc's defaults.  Outside glibc (macOS, musl) this does nothing.
"""
from __future__ import annotations

import ctypes
import os

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_TRIM_ONLY_OVER = 2**31 - 1  # mallopt takes an int: trim only a free top over 2 GB


def reuse_freed_cpu_memory() -> bool:
    """Turn glibc's ``mmap`` allocations off and trim the heap only over 2 GB of free top, for this
    process (see the module docstring); True when that took effect."""
    if os.environ.get("QUANTFACE_REUSE_CPU_MEMORY", "1") == "0":
        return False
    libc = ctypes.CDLL(None)  # the symbols this process has loaded: its C library's among them
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return False
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    libc.mallopt.restype = ctypes.c_int
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_ONLY_OVER))
