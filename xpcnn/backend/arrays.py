"""Helpers for an array of any library, without a Backend at hand: each asks the class of the array's
library (:meth:`Backend.library_of <xpcnn.backend.base.Backend.library_of>`)."""
from __future__ import annotations

from typing import Any

import numpy as np
from array_api_compat import array_namespace, device

from .base import Backend


def to_numpy(a: Any) -> np.ndarray:
    """A host NumPy copy of an array of any backend (or of Python numbers and lists)."""
    return Backend.library_of(a).host_copy(a)


def as_numpy(a: Any) -> np.ndarray:
    """``a`` as host NumPy data: a NumPy array itself (no copy), any other a host copy (:func:`to_numpy`)."""
    return a if isinstance(a, np.ndarray) else to_numpy(a)


def on_gpu(a: Any) -> bool:
    """Whether ``a`` lives on a GPU (CuPy, or torch on CUDA)."""
    return Backend.library_of(a).array_on_gpu(a)


def device_context(a: Any):
    """``with device_context(a):`` makes the CUDA device of CuPy array ``a`` current; a no-op otherwise."""
    return Backend.library_of(a).array_device_context(a)


def asarray_like(host: np.ndarray, ref: Any, dtype: Any = None):
    """A copy of host NumPy data on ``ref``'s namespace and device (``dtype=None``: the host dtype).

    CuPy's creation functions ignore ``device=``, so for CuPy the copy is made under ``ref``'s GPU.
    """
    return Backend.library_of(ref).copy_from_host(host, array_namespace(ref), device(ref), dtype)
