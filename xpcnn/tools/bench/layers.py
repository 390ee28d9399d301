"""The per-layer breakdown of ``xpcnn bench``: the time of each layer inside the real training step.

Each top-level layer's ``forward`` and ``backward``, the loss's forward and backward and the optimizer's
``step`` are clocked between device synchronisations (wrappers set as instance attributes for the measurement,
removed after), while :meth:`XpcnnRunner.train_step` runs as it does when the step is timed whole: the same
order (a ReLU in front of a max pool runs after it), worker threads and buffers, and no input gradient for the
model (layers in front of the first one with parameters are not back-propagated: backward 0 ms; the first one
with parameters skips its input gradient where it can). Not clocked: ``zero_grad`` and freeing each layer's
saved state. The synchronisations around every layer make the rows add up to a little more than the step on a
GPU.
"""
from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

from .runners import XpcnnRunner
from .timing import median_ms

LOSS, SGD_STEP = "loss (forward + backward)", "SGD step"


def layer_breakdown(runner: XpcnnRunner, warmup: int, repeats: int) -> list[dict]:
    """Median forward and backward time of every layer in the training step, plus the loss and the SGD step:
    rows of ``{"index", "layer", "forward_ms", "backward_ms", "share"}`` (the share of the rows' sum)."""
    m, b = runner.model, runner.backend
    clocked: list[tuple[Any, str, Any]] = [(layer, way, (way, i)) for i, layer in enumerate(m.layers)
                                           for way in ("forward", "backward")]
    clocked += [(runner.loss_fn, "forward", LOSS), (runner.loss_fn, "backward", LOSS), (runner.opt, "step", SGD_STEP)]
    spent: dict[Any, float] = defaultdict(float)  # seconds per row in the step being run

    def clock(obj: Any, method: str, key: Any) -> None:
        bound = getattr(obj, method)

        def call(*args, **kwargs):
            b.synchronize()
            t0 = time.perf_counter()
            out = bound(*args, **kwargs)
            b.synchronize()
            spent[key] += time.perf_counter() - t0
            return out
        setattr(obj, method, call)

    samples: dict[Any, list[float]] = {key: [] for _, _, key in clocked}
    for obj, method, key in clocked:
        clock(obj, method, key)
    try:
        m.train()
        for r in range(warmup + repeats):
            spent.clear()
            runner.train_step()
            if r >= warmup:
                for key, times in samples.items():
                    times.append(spent.get(key, 0.0))
    finally:
        for obj, method, _ in clocked:
            vars(obj).pop(method, None)
    rows = [{"index": i, "layer": f"{i} {type(layer).__name__}", "forward_ms": median_ms(samples["forward", i]),
             "backward_ms": median_ms(samples["backward", i])} for i, layer in enumerate(m.layers)]
    rows += [{"index": None, "layer": key, "forward_ms": median_ms(samples[key]), "backward_ms": 0.0}
             for key in (LOSS, SGD_STEP)]
    total = sum(r["forward_ms"] + r["backward_ms"] for r in rows) or 1.0
    for r in rows:
        r["share"] = (r["forward_ms"] + r["backward_ms"]) / total
    return rows
