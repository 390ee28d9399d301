"""vgg-small training step (batch 128, float32) at the default workspace limit and at the CPU's 16 MiB,
alternating blocks of steps, medians. Run by ``run_gpu.sh bench`` on a GPU (``BACKEND=cupy``); the GPU's
512 MiB default was chosen without one (each chunk is a round of kernel launches), this checks it.

    BACKEND=cupy python benchmarks/workspace_gpu.py      # BACKEND=numpy runs it on the CPU; BATCH=N (128)
"""
from __future__ import annotations

import os
import statistics
import sys
import time

import xpcnn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_cpu import make_xpcnn  # noqa: E402  (the same model and training step as the CPU benchmark)


def main() -> None:
    backend = os.environ.get("BACKEND", "cupy")
    batch, rounds, block = int(os.environ.get("BATCH", "128")), 5, 4
    model, step, _ = make_xpcnn("vgg-small", batch, backend=backend)
    sync = model.backend.synchronize

    limits = {"default": None, "16 MiB": 16 * 2 ** 20}
    times: dict[str, list[float]] = {k: [] for k in limits}
    for r in range(rounds):
        for name, limit in limits.items():
            xpcnn.set_workspace_limit(limit)
            step()  # untimed: the first step after a switch allocates the new buffers
            sync()
            for _ in range(block):
                t0 = time.perf_counter()
                step()
                sync()
                times[name].append(time.perf_counter() - t0)
    xpcnn.set_workspace_limit(None)
    print(f"vgg-small train step, batch {batch}, float32, backend {backend} ({rounds} rounds x {block} steps, medians)")
    for name, ts in times.items():
        print(f"  workspace {name:8s} {statistics.median(ts) * 1e3:8.2f} ms")


if __name__ == "__main__":
    main()
