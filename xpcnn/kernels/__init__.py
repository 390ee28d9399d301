"""Optional backend-specific kernels for single ops, used only where a benchmark shows them faster.

``get(name, xp)`` returns the fast kernel registered for ``name`` on the namespace ``xp``, or None,
in which case the caller runs its portable Array-API code (the reference). Every fast kernel has a
parity test against the portable path (``tests/test_fast_paths.py``); ``xpcnn.config.set_fast_paths(False)``
turns them all off.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

from array_api_compat import is_numpy_namespace

from .. import config


@functools.cache  # imported at the first use (numpy_kernels imports functional, which imports this)
def _numpy_kernels() -> dict[str, Callable[..., Any]]:
    from . import numpy_kernels
    return numpy_kernels.KERNELS


def get(name: str, xp) -> Callable[..., Any] | None:
    """The fast kernel ``name`` for namespace ``xp`` if there is one and fast paths are on."""
    if not config.get_fast_paths() or config.gpu_plan():  # the GPU plan runs the portable code, as on CuPy
        return None
    if is_numpy_namespace(xp):
        return _numpy_kernels().get(name)
    return None
