"""Library-wide settings, scoped: one frozen :class:`Settings` of defaults, changed for a block with
``with xpcnn.using(...)``.

``using`` keeps its changes in a :class:`contextvars.ContextVar`, so they hold in the thread or asyncio task
that entered the block (and in the worker threads that run its ops' shards, :mod:`xpcnn.threads`) and
nowhere else; the block's end restores what was in force before. The ``set_*`` functions change the settings
in force where they are called: inside a ``using`` block until it ends, else the process defaults; ``get_*``
and :func:`settings` read them. Every value is checked in one place, :class:`Settings`.
"""
from __future__ import annotations

import contextvars
import dataclasses
import functools
import os
import threading
from contextlib import contextmanager
from typing import Iterator

from .errors import InputTypeError, InputValueError

DEFAULT_WORKSPACE_LIMIT = 16 * 2 ** 20  # bytes, CPU (docs/measurements.md, "Settings")
# GPU: every chunk is one more round of kernel launches, so whole batches where they fit; a conservative share
# of a small GPU's memory, not measured yet (docs/measurements.md).
DEFAULT_GPU_WORKSPACE_LIMIT = 512 * 2 ** 20

CONV_LAYOUTS = ("auto", "im2col", "im2col_nhwc", "im2col_blocked")
CONV_INPUT_GRADS = ("auto", "col2im", "transposed", "polyphase", "banded")
PLANS = ("auto", "cpu", "gpu")
PLAN_ENV = "XPCNN_PLAN"  # the environment variable that sets the default plan at import

# set_conv_algorithm's names, each a (conv_layout, conv_input_grad) pair
_CONV_ALGORITHMS = {"auto": ("auto", "auto"), "im2col": ("im2col", "col2im"),
                    "im2col_nhwc": ("im2col_nhwc", "col2im"), "im2col_blocked": ("im2col_blocked", "col2im"),
                    "transposed": ("auto", "transposed"), "polyphase": ("auto", "polyphase"),
                    "banded": ("auto", "banded")}


def _choice(value: str | None, choices: tuple, what: str) -> str:
    """``value`` if it is one of ``choices`` (``None``: the first, the default), else a ValueError naming them."""
    value = choices[0] if value is None else value
    if value not in choices:
        raise InputValueError(f"{what} must be one of {choices}, got {value!r}")
    return value


def _positive_or_none(value, message: str):
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise InputValueError(f"{message}, got {value!r}")
    return None if value is None else int(value)


@dataclasses.dataclass(frozen=True)
class Settings:
    """Every setting and its default.

    * ``workspace_limit``: largest im2col buffer in bytes, all worker threads together (``None``: the device's
      default, :data:`DEFAULT_WORKSPACE_LIMIT` on a CPU, :data:`DEFAULT_GPU_WORKSPACE_LIMIT` on a GPU); a
      convolution whose columns would not fit runs the batch in chunks (at least one sample each).
    * ``cache_columns``: keep the forward's column matrix for backward (time) instead of recomputing it (memory).
    * ``fast_paths``: use the registered NumPy kernels (:mod:`xpcnn.kernels`); False: portable code only.
    * ``conv_layout``: the forward's columns, one of :data:`CONV_LAYOUTS` ("auto": the planner's choice per
      shape, ``xpcnn.functional.conv``).
    * ``conv_input_grad``: the input gradient's algorithm, one of :data:`CONV_INPUT_GRADS` (a forced one runs
      where it applies, elsewhere col2im).
    * ``num_threads``: worker threads for NumPy ops inside a model step (:mod:`xpcnn.threads`); ``None``
      follows the BLAS thread count, 1 runs every op on the calling thread. Read when a step begins; the
      worker pool and the BLAS thread count it sets are the process's, so run one NumPy step at a time.
    * ``keep_freed_memory``: the first NumPy model step raises glibc's malloc thresholds, so freed buffers are
      reused by the next step (:mod:`xpcnn.malloc`); takes effect only before that first step.
    * ``plan``: which device's plan ops follow, one of :data:`PLANS` ("auto": by the arrays' device; "gpu":
      the GPU's on any backend, as tests and ``xpcnn count-ops`` use it; see :func:`gpu_plan`).
    """

    workspace_limit: int | None = None
    cache_columns: bool = False
    fast_paths: bool = True
    conv_layout: str = "auto"
    conv_input_grad: str = "auto"
    num_threads: int | None = None
    keep_freed_memory: bool = True
    plan: str = "auto"

    def __post_init__(self):
        checked = {
            "workspace_limit": _positive_or_none(self.workspace_limit,
                                                 "workspace limit must be a positive int (bytes)"),
            "num_threads": _positive_or_none(self.num_threads, "number of threads must be a positive int or None"),
            "conv_layout": _choice(self.conv_layout, CONV_LAYOUTS, "conv layout"),
            "conv_input_grad": _choice(self.conv_input_grad, CONV_INPUT_GRADS, "conv input gradient"),
            "plan": _choice(self.plan, PLANS, "plan"),
            **{k: bool(getattr(self, k)) for k in ("cache_columns", "fast_paths", "keep_freed_memory")},
        }
        for name, value in checked.items():
            object.__setattr__(self, name, value)


def _plan_from_env() -> str:
    value = os.environ.get(PLAN_ENV, "").strip().lower() or None
    try:
        return _choice(value, PLANS, f"environment variable {PLAN_ENV}")
    except InputValueError as e:  # a typo must not be silently ignored, nor stop the import
        import warnings
        warnings.warn(f"{e}; using 'auto'", stacklevel=2)
        return "auto"


_defaults = Settings(plan=_plan_from_env())
_scoped: contextvars.ContextVar[Settings | None] = contextvars.ContextVar("xpcnn_settings", default=None)


def settings() -> Settings:
    """The settings in force here: the innermost ``using`` block's, else the process defaults."""
    return _scoped.get() or _defaults


def _changed(**changes) -> Settings:
    unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(Settings)})
    if unknown:
        raise InputTypeError(f"unknown setting(s) {', '.join(map(repr, unknown))}; the settings are "
                             f"{', '.join(f.name for f in dataclasses.fields(Settings))}")
    return dataclasses.replace(settings(), **changes)


@contextmanager
def using(**changes) -> Iterator[Settings]:
    """``with xpcnn.using(plan="gpu", workspace_limit=2**20): ...``: these settings (checked, see
    :class:`Settings`) in this thread or task until the block ends; yields them."""
    token = _scoped.set(_changed(**changes))
    try:
        yield _scoped.get()
    finally:
        _scoped.reset(token)


_defaults_lock = threading.Lock()


def _set(**changes) -> None:
    """Change the settings in force here: the ``using`` block's until it ends, else the process defaults."""
    global _defaults
    if _scoped.get() is not None:
        _scoped.set(_changed(**changes))
        return
    with _defaults_lock:  # two threads changing different defaults keep both changes
        _defaults = _changed(**changes)


def set_workspace_limit(nbytes: int | None) -> None:
    """Largest im2col buffer in bytes, for all worker threads together, on every device (``None`` restores the
    defaults: 16 MiB on a CPU, 512 MiB on a GPU). At least one sample per chunk."""
    _set(workspace_limit=nbytes)


def get_workspace_limit(gpu: bool = False) -> int:
    """The limit in force: the one set, else the default for a GPU (``gpu``) or a CPU."""
    limit = settings().workspace_limit
    if limit is not None:
        return limit
    return DEFAULT_GPU_WORKSPACE_LIMIT if gpu else DEFAULT_WORKSPACE_LIMIT


def set_cache_columns(flag: bool) -> None:
    """Keep the forward column matrix for backward (time) instead of recomputing it (memory)."""
    _set(cache_columns=flag)


def get_cache_columns() -> bool:
    return settings().cache_columns


def set_fast_paths(flag: bool) -> None:
    """Use registered backend-specific kernels (``xpcnn.kernels``) where available; False = portable code only."""
    _set(fast_paths=flag)


def get_fast_paths() -> bool:
    return settings().fast_paths


def set_conv_algorithm(name: str | None) -> None:
    """Force the forward layout and the input gradient together, by one name (``None`` restores "auto"):
    "im2col", "im2col_nhwc", "im2col_blocked" (that layout, input gradient by col2im) or "transposed",
    "polyphase", "banded" (that input gradient where it applies, layout "auto"). ``using(conv_layout=...,
    conv_input_grad=...)`` sets the two apart."""
    name = _choice(name, tuple(_CONV_ALGORITHMS), "conv algorithm")
    layout, input_grad = _CONV_ALGORITHMS[name]
    _set(conv_layout=layout, conv_input_grad=input_grad)


def get_conv_algorithm() -> str:
    """The :func:`set_conv_algorithm` name of the settings in force, or "LAYOUT+INPUT_GRAD" where none fits."""
    s = settings()
    pair = (s.conv_layout, s.conv_input_grad)
    return next((k for k, v in _CONV_ALGORITHMS.items() if v == pair), "+".join(pair))


def set_num_threads(n: int | None) -> None:
    """Worker threads for the NumPy backend's ops inside a model step (``xpcnn.threads``); ``None`` (default)
    follows the BLAS thread count (threadpoolctl), 1 runs every op on the calling thread."""
    _set(num_threads=n)


def get_num_threads() -> int | None:
    return settings().num_threads


def set_keep_freed_memory(flag: bool) -> None:
    """Let the first NumPy model step keep freed buffers for the next (``xpcnn.malloc``; default True). Takes
    effect only before that first step."""
    _set(keep_freed_memory=flag)


def get_keep_freed_memory() -> bool:
    return settings().keep_freed_memory


def set_plan(name: str | None) -> None:
    """Which device's plan the ops follow: ``"auto"`` (default: by the arrays' device), ``"gpu"`` (the GPU's on
    any backend: whole-batch chunks under the GPU workspace limit, the plain im2col convolution, no NumPy
    kernels, no worker threads, no host checks in the step) or ``"cpu"``. The environment variable
    ``XPCNN_PLAN`` sets it at import; ``None`` restores "auto"."""
    _set(plan=name)


def get_plan() -> str:
    return settings().plan


def gpu_plan(a=None) -> bool:
    """Whether work on array (or :class:`~xpcnn.backend.Backend`) ``a`` follows the GPU's plan: the one place
    that decides it (:func:`set_plan`; under "auto", ``a`` on a GPU: CuPy, or torch on CUDA; None: False)."""
    plan = settings().plan
    if plan != "auto":
        return plan == "gpu"
    if a is None:
        return False
    backend_class, on_gpu = _gpu_tests()
    return a.is_gpu if isinstance(a, backend_class) else on_gpu(a)


@functools.cache  # imported at the first use: the backends import this module
def _gpu_tests():
    from .backend import Backend, on_gpu
    return Backend, on_gpu
