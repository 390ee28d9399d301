"""Intra-op threads for the NumPy backend: batch shards on worker threads, BLAS one thread per call.

PyTorch splits every op over its threads. NumPy runs element-wise loops and copies on one core, and
OpenBLAS threads only its GEMMs, whose helper threads keep spinning after each call, so a second thread doing
NumPy work meanwhile gains nothing (docs/measurements.md). So while a model step runs (``Sequential.forward`` and
``backward``, inside :func:`step`), xpcnn sets BLAS to one thread and splits the batch of convolutions,
batch norm, ReLU and pooling into one contiguous shard per worker; NumPy releases the GIL in its loops and
in BLAS, so the shards run at once.

The worker count is :func:`xpcnn.config.set_num_threads` if set, else the BLAS thread count when the step
begins (threadpoolctl reads and sets it; `xpcnn train --threads` and `xpcnn bench --threads` set it).
Without threadpoolctl, or on any other backend, ops run on the calling thread as before. Results do not
depend on timing: shard boundaries depend only on the batch size and the worker count, and partial sums are
added in shard order.
"""
from __future__ import annotations

import contextvars
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

from array_api_compat import is_numpy_namespace

from . import config

_workers = 1          # shards per op in the step being run (1 outside a step)
_active = False       # a step is running (a nested step keeps its setting)
_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_lock = threading.Lock()
_blas: Any = None     # threadpoolctl's BLAS controllers, found once; False when threadpoolctl is missing
_local = threading.local()  # .in_shard: this thread runs a shard (ops inside it are not split again)


def _blas_controllers() -> list:
    global _blas
    if _blas is None:
        try:
            from threadpoolctl import ThreadpoolController
            _blas = ThreadpoolController().select(user_api="blas").lib_controllers
        except ImportError:
            _blas = False
    return _blas or []


THREADPOOLCTL_MISSING = "threadpoolctl is not installed (pip install threadpoolctl)"


def blas_threads(unknown: int | None = 1) -> int | None:
    """The BLAS thread count NumPy would use now; ``unknown`` without threadpoolctl or a BLAS it finds."""
    counts = [c for c in (lc.get_num_threads() for lc in _blas_controllers()) if c]
    return max(counts) if counts else unknown


@contextmanager
def limit_blas(n: int | None, required: bool = True) -> Iterator[None]:
    """BLAS at ``n`` threads inside the block, as it was after it (``None``: as it is); the one place xpcnn sets
    the BLAS threads apart from :func:`step`. Without threadpoolctl: ``ImportError(THREADPOOLCTL_MISSING)`` on
    entering, or (``required=False``) BLAS as it is."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        if n is not None and required:
            raise ImportError(THREADPOOLCTL_MISSING) from None
        n = None
    if n is None:
        yield
        return
    with threadpool_limits(limits=n, user_api="blas"):
        yield


def step_threads() -> int:
    """The threads a model step on NumPy would run on now (:func:`step`): ``num_threads`` if set, else the BLAS
    thread count (one worker where threadpoolctl is missing)."""
    return config.get_num_threads() or blas_threads()


def workers() -> int:
    """Shards per op in the current step (1 outside :func:`step`, or off NumPy)."""
    return _workers


def splits_ops(xp) -> bool:
    """Whether a model step on namespace ``xp`` splits its ops over worker threads: NumPy, on the CPU's plan
    (the one place that decides it; :func:`step_threads` says how many)."""
    return is_numpy_namespace(xp) and not config.gpu_plan()


@contextmanager
def step(xp) -> Iterator[int]:
    """Run a model step with worker threads on NumPy (see the module docstring); yields the worker count.
    A step inside a step keeps the outer one's setting."""
    global _workers, _active
    if _active or not splits_ops(xp):
        yield _workers
        return
    n = step_threads()
    libs = _blas_controllers() if n > 1 else []  # one worker: BLAS as it is
    saved = [lc.get_num_threads() for lc in libs]
    for lc in libs:
        lc.set_num_threads(1)
    _workers, _active = (n if libs else 1), True
    try:
        yield _workers
    finally:
        _workers, _active = 1, False
        for lc, k in zip(libs, saved):
            lc.set_num_threads(k)


MIN_SHARD_BYTES = 2 ** 20  # less work is not worth a thread (docs/measurements.md)


def ranges(n: int, item_bytes: int = 0) -> list[tuple[int, int]]:
    """``[0, n)`` split into at most :func:`workers` contiguous shards (sizes differ by at most one) of at least
    :data:`MIN_SHARD_BYTES` where each item holds ``item_bytes``; a single ``(0, n)`` outside a step, or
    inside a shard (no nested splits: the pool's threads are busy with the outer shards)."""
    inner = getattr(_local, "in_shard", False)
    min_size = -(-MIN_SHARD_BYTES // item_bytes) if item_bytes > 0 else 1
    return even_ranges(0, n, 1 if inner else max(1, min(_workers, n // min_size)))


def even_ranges(a: int, b: int, parts: int) -> list[tuple[int, int]]:
    """``[a, b)`` as ``parts`` contiguous ranges whose lengths differ by at most one (the longer ones first)."""
    q, r = divmod(b - a, parts)
    out = []
    for i in range(parts):
        out.append((a, a + q + (i < r)))
        a = out[-1][1]
    return out


def _executor(size: int) -> ThreadPoolExecutor:
    global _pool, _pool_size
    with _lock:
        if _pool is None or _pool_size < size:
            if _pool is not None:
                _pool.shutdown(wait=True)
            _pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix="xpcnn")
            _pool_size = size
        return _pool


def _in_shard(fn: Callable[[int, int], Any], a: int, b: int) -> Any:
    outer = getattr(_local, "in_shard", False)
    _local.in_shard = True
    try:
        return fn(a, b)
    finally:
        _local.in_shard = outer


def _forget_pool() -> None:
    """In a forked child the pool's threads do not exist (only the forking thread survives a fork): start afresh."""
    global _pool, _pool_size, _lock, _workers, _active
    _pool, _pool_size, _lock, _workers, _active = None, 0, threading.Lock(), 1, False


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def run(fn: Callable[[int, int], Any], parts: Sequence[tuple[int, int]]) -> list:
    """``[fn(a, b) for (a, b) in parts]``: the first shard on this thread, the others on the worker pool (in
    this thread's context: :func:`xpcnn.using` holds in them)."""
    if len(parts) <= 1:
        return [fn(*p) for p in parts]
    # each shard runs in a copy of this thread's context, so the caller's ``xpcnn.using`` settings hold there
    pool = _executor(len(parts) - 1)
    futures = [pool.submit(contextvars.copy_context().run, _in_shard, fn, *p) for p in parts[1:]]
    try:
        first = _in_shard(fn, *parts[0])
    finally:
        rest = [f.result() for f in futures]  # wait for every shard, even if this one failed
    return [first] + rest
