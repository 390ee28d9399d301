"""Keep freed host memory for reuse across training steps (glibc on Linux).

A NumPy training step allocates and frees buffers of megabytes per layer. By default glibc returns freed
memory at the top of its heap to the kernel (trim threshold, at most 64 MiB) and serves blocks above the
mmap threshold (at most 32 MiB) by fresh mappings, so every step page-faults its buffers in again; worker
threads' arenas do the same. Raising both thresholds keeps that memory in the process for the next step,
which makes steps faster (measured: docs/measurements.md). The price: the resident set stays at a step's
peak between steps instead of shrinking (PyTorch's performance guide recommends jemalloc or tcmalloc for
the same reason).

Applied once, at the first model step on the NumPy backend, and never where users tune malloc themselves
(any ``MALLOC_*`` environment variable set) or turned it off with ``xpcnn.config.set_keep_freed_memory(False)``
before the first step. It changes the whole process (a PyTorch model run beside it gains too).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

from . import config

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
TRIM_THRESHOLD = 1 << 30    # keep up to 1 GiB of freed heap
MMAP_THRESHOLD = 32 << 20   # glibc's largest allowed value on 64-bit: blocks up to 32 MiB come from the heap

_applied: bool | None = None  # None: not decided yet


def keep_freed_memory() -> bool:
    """Raise glibc's trim and mmap thresholds, once per process (see the module docstring); True if set."""
    global _applied
    if _applied is None and config.get_keep_freed_memory():
        _applied = _mallopt()
    return bool(_applied)


def _mallopt() -> bool:
    if not sys.platform.startswith("linux") or any(k.startswith("MALLOC_") for k in os.environ):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
