"""The one interleaved timer of the benchmarks (``xpcnn bench`` and ``benchmarks/bench_cpu.py``).

Warm-up calls first; the device is synchronised before every clock read; the functions (xpcnn's step and
PyTorch's, say) take turns in blocks of timed calls, so that a slow phase of a noisy machine hits both alike.
With more than one function each turn starts with untimed calls: they keep one framework's leftovers off the
other's clock (PyTorch's OpenMP threads keep spinning after its calls, libgomp's default, and took a core from
the next xpcnn call on a 2-core machine; the measurements behind :data:`SETTLE_S` are in
``docs/measurements.md``, "Benchmarks and tools").
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Sequence

SETTLE_S = 0.05  # untimed calls at the start of each turn, in seconds (measured: docs/measurements.md)


def time_interleaved(fns: Sequence[Callable[[], Any]], syncs: Sequence[Callable[[], None]] | None, warmup: int,
                     repeats: int, block: int | None = None, settle: float | None = SETTLE_S) -> list[list[float]]:
    """Seconds per call of each function, the functions taking turns in blocks of ``block`` timed calls (default:
    half the repeats, so that each gets at least two turns); with more than one function each turn starts with
    untimed calls for ``settle`` seconds (at least one; ``settle=None``: none, plain alternation).

    Each function warms up first (``warmup`` calls); ``syncs[k]()`` (default: nothing) waits for function
    ``k``'s device before every clock read."""
    syncs = syncs if syncs is not None else [_nothing] * len(fns)
    for fn, sync in zip(fns, syncs):
        for _ in range(warmup):
            fn()
        sync()
    block = block or max(1, (repeats + 1) // 2)
    times: list[list[float]] = [[] for _ in fns]
    while len(times[0]) < repeats:
        for k, (fn, sync) in enumerate(zip(fns, syncs)):
            if len(fns) > 1 and settle is not None:  # the turn's untimed calls
                start = time.perf_counter()
                fn()
                sync()
                while time.perf_counter() - start < settle:
                    fn()
                    sync()
            for _ in range(min(block, repeats - len(times[k]))):
                sync()
                t0 = time.perf_counter()
                fn()
                sync()
                times[k].append(time.perf_counter() - t0)
    return times


def _nothing() -> None:
    pass


def median_ms(ts: Sequence[float]) -> float:
    """The median of times in seconds, in milliseconds."""
    return statistics.median(ts) * 1e3
