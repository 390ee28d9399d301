"""Library-wide settings: the im2col workspace limit and column caching.

``set_workspace_limit(bytes)`` bounds the column (im2col) buffer of one
convolution call: when ``N*oh*ow*C*kh*kw`` values would exceed it, the batch is
processed in chunks that fit, so a large batch of large images never
materialises one huge column matrix.  ``set_cache_columns(True)`` keeps the
column matrix of the forward pass for the backward pass (when it fits in one
chunk) instead of recomputing it: faster backward, much more memory.
"""
from __future__ import annotations

import os

from .errors import InputValueError

DEFAULT_WORKSPACE_LIMIT = 16 * 2 ** 20  # bytes, CPU (vgg-small step: peak 257 -> 174 MiB vs 64 MiB, no slower)
# GPU: every chunk is one more round of kernel launches (vgg-small's 32 -> 32 conv at batch 128: 10 chunks of
# 14 samples at 16 MiB, one at 512 MiB); a conservative share of a small GPU's memory. Not measured yet: no
# GPU has been lent to the project.
DEFAULT_GPU_WORKSPACE_LIMIT = 512 * 2 ** 20

_workspace_limit: int | None = None  # None: the device's default
_cache_columns = False


def set_workspace_limit(nbytes: int | None) -> None:
    """Largest im2col buffer in bytes, for all worker threads together, on every device (``None`` restores the
    defaults: 16 MiB on a CPU, 512 MiB on a GPU). At least one sample per chunk."""
    global _workspace_limit
    if nbytes is not None and (isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 1):
        raise InputValueError(f"workspace limit must be a positive int (bytes), got {nbytes!r}")
    _workspace_limit = nbytes


def get_workspace_limit(gpu: bool = False) -> int:
    """The limit in force: the one set, else the default for a GPU (``gpu``) or a CPU."""
    if _workspace_limit is not None:
        return _workspace_limit
    return DEFAULT_GPU_WORKSPACE_LIMIT if gpu else DEFAULT_WORKSPACE_LIMIT


def set_cache_columns(flag: bool) -> None:
    """Keep the forward column matrix for backward (time) instead of recomputing it (memory)."""
    global _cache_columns
    _cache_columns = bool(flag)


def get_cache_columns() -> bool:
    return _cache_columns


def _choice(value: str | None, choices: tuple, what: str) -> str:
    """``value`` if it is one of ``choices`` (``None``: the first, the default), else a ValueError naming them."""
    value = choices[0] if value is None else value
    if value not in choices:
        raise InputValueError(f"{what} must be one of {choices}, got {value!r}")
    return value


_fast_paths = True


def set_fast_paths(flag: bool) -> None:
    """Use registered backend-specific kernels (``xpcnn.kernels``) where available; False = portable code only."""
    global _fast_paths
    _fast_paths = bool(flag)


def get_fast_paths() -> bool:
    return _fast_paths


_conv_algorithm = "auto"
_CONV_ALGORITHMS = ("auto", "im2col", "im2col_nhwc", "im2col_blocked", "transposed", "polyphase", "banded")


def set_conv_algorithm(name: str | None) -> None:
    """How convolutions run: ``"auto"`` (default: the layouts and backward that measured fastest per shape, see
    ``functional.conv``), ``"im2col"`` (ow-innermost columns, forward and backward), ``"im2col_nhwc"``
    (channels-innermost columns for every ungrouped convolution, input gradient by col2im), ``"im2col_blocked"``
    (width-blocked columns for every ungrouped convolution whose output width has a divisor from 2 to 8, input
    gradient by col2im), ``"transposed"`` (the input gradient as a transposed convolution wherever it
    applies: stride 1, groups 1), ``"polyphase"`` (the input gradient as one stride-1 convolution per phase
    of the stride, for every ungrouped convolution) or ``"banded"`` (the input gradient by banded rows wherever
    it applies: stride 1, groups 1). Tests use them to
    cover each path on small shapes; ``None`` restores "auto"."""
    global _conv_algorithm
    _conv_algorithm = _choice(name, _CONV_ALGORITHMS, "conv algorithm")


def get_conv_algorithm() -> str:
    return _conv_algorithm


_num_threads: int | None = None


def set_num_threads(n: int | None) -> None:
    """Worker threads for the NumPy backend's ops inside a model step (``xpcnn.threads``); ``None`` (default)
    follows the BLAS thread count (threadpoolctl), 1 runs every op on the calling thread."""
    global _num_threads
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise InputValueError(f"number of threads must be a positive int or None, got {n!r}")
    _num_threads = n


def get_num_threads() -> int | None:
    return _num_threads


_keep_freed_memory = True


def set_keep_freed_memory(flag: bool) -> None:
    """Let the first NumPy model step raise glibc's malloc thresholds so that freed buffers are reused by the next
    step instead of being returned to the kernel and page-faulted in again (``xpcnn.malloc``; default True).
    Takes effect only before that first step."""
    global _keep_freed_memory
    _keep_freed_memory = bool(flag)


def get_keep_freed_memory() -> bool:
    return _keep_freed_memory


_PLANS = ("auto", "cpu", "gpu")
PLAN_ENV = "XPCNN_PLAN"  # the environment variable that sets the plan at import


def _plan_from_env() -> str:
    value = os.environ.get(PLAN_ENV, "").strip().lower() or None
    try:
        return _choice(value, _PLANS, f"environment variable {PLAN_ENV}")
    except InputValueError as e:  # a typo must not be silently ignored, nor stop the import
        import warnings
        warnings.warn(f"{e}; using 'auto'", stacklevel=2)
        return "auto"


_plan = _plan_from_env()


def set_plan(name: str | None) -> None:
    """Which device's plan the ops follow: ``"auto"`` (default: by the arrays' device), ``"gpu"`` (the GPU's on
    any backend: whole-batch chunks under the GPU workspace limit, the plain im2col convolution, no NumPy
    kernels, no worker threads, no host checks in the step) or ``"cpu"``. The environment variable
    ``XPCNN_PLAN`` sets it at import; ``None`` restores "auto". Tests and ``xpcnn count-ops`` use "gpu" to run,
    on NumPy or array_api_strict, the code path CuPy runs."""
    global _plan
    _plan = _choice(name, _PLANS, "plan")


def get_plan() -> str:
    return _plan


def gpu_plan(a=None) -> bool:
    """Whether work on array (or :class:`~xpcnn.backend.Backend`) ``a`` follows the GPU's plan: the one place
    that decides it (:func:`set_plan`; under "auto", ``a`` on a GPU: CuPy, or torch on CUDA; None: False)."""
    if _plan != "auto":
        return _plan == "gpu"
    if a is None:
        return False
    from .backend import Backend, on_gpu
    return a.is_gpu if isinstance(a, Backend) else on_gpu(a)
