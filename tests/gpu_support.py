"""The one place that decides whether GPU tests run: CuPy importable and a CUDA device usable.

Tests that need the GPU use ``requires_cupy`` (a list of marks: the ``gpu``
marker registered in pyproject.toml, and a skip with the reason when CuPy or a
CUDA device is missing), e.g. ``pytestmark = requires_cupy`` or
``pytest.param("cupy", marks=requires_cupy)``. Run only them with ``pytest -m gpu``.
"""
from __future__ import annotations

import pytest


def cupy_skip_reason() -> str | None:
    """None when CuPy can run here, else why not (in words a user can act on)."""
    try:
        import cupy
    except ImportError as e:
        return (f"CuPy is not installed ({e}); on a machine with an NVIDIA GPU: "
                f'pip install -e ".[cuda12]" or ".[cuda13]"')
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # driver missing or broken
        return f"CuPy {cupy.__version__} is installed but no CUDA device is usable ({e}); check nvidia-smi"
    if n < 1:
        return f"CuPy {cupy.__version__} is installed but no CUDA device was found; check nvidia-smi"
    return None


CUPY_SKIP_REASON = cupy_skip_reason()
HAVE_CUPY = CUPY_SKIP_REASON is None

requires_cupy = [pytest.mark.gpu, pytest.mark.skipif(not HAVE_CUPY, reason=CUPY_SKIP_REASON or "")]


def gpu_count() -> int:
    if not HAVE_CUPY:
        return 0
    import cupy
    return cupy.cuda.runtime.getDeviceCount()


def needs_cupy(fn):
    """Decorator: the ``gpu`` marker and the skip-with-reason of :data:`requires_cupy`."""
    for mark in requires_cupy:
        fn = mark(fn)
    return fn
