"""The whole ``xpcnn bench`` run: every backend, model and batch size, optionally beside PyTorch, as a report."""
from __future__ import annotations

from contextlib import ExitStack
from typing import Any, Callable, Sequence

from ...backend import Backend, get_backend
from ...errors import InputValueError
from ...models import MODEL_INPUTS
from ...threads import blas_threads, limit_blas, splits_ops, step_threads
from .layers import layer_breakdown
from .machine import machine_info
from .runners import LR, MOMENTUM, TorchRunner, XpcnnRunner
from .timing import SETTLE_S, median_ms, time_interleaved

SCHEMA = "xpcnn-bench/1"

#: The keys of each entry of ``results`` in the JSON output (documented in the README).
RESULT_KEYS = ("framework", "backend", "device", "model", "cpu_parallel", "batch_size", "dtype", "forward_ms",
               "train_step_ms", "forward_images_per_s", "train_images_per_s", "peak_memory_bytes", "peak_memory_method",
               "forward_times_ms", "train_times_ms")


def limit_threads(stack: ExitStack, n: int | None, log: Callable[[str], None]) -> int | None:
    """BLAS at ``n`` threads for the duration of ``stack`` (``None``: as it is); the count in use, or None when
    unknown (without threadpoolctl, which is optional: then a note, and the benchmark runs as it is)."""
    if n is None:
        return blas_threads(unknown=None)
    try:
        stack.enter_context(limit_blas(n))
    except ImportError as e:
        log(f"note: {e}, so --threads {n} cannot set the BLAS threads (or set OMP_NUM_THREADS={n} before starting)")
        return None
    return n


def _cpu_parallel(runner) -> str | None:
    """How an xpcnn NumPy train step spread over the CPU: "N threads" or "1 thread"."""
    if runner.framework != "xpcnn" or not splits_ops(runner.backend.xp):
        return None
    n = step_threads()
    return f"{n} thread" + ("s" if n > 1 else "")


def _result(runner, model: str, batch_size: int, dtype: str, fwd: list[float], train: list[float]) -> dict:
    peak, method = runner.peak_memory()
    f_ms, t_ms = median_ms(fwd), median_ms(train)
    return {"framework": runner.framework, "backend": runner.name, "device": str(runner.device), "model": model,
            "cpu_parallel": _cpu_parallel(runner),
            "batch_size": batch_size, "dtype": dtype, "forward_ms": f_ms, "train_step_ms": t_ms,
            "forward_images_per_s": batch_size / (f_ms / 1e3), "train_images_per_s": batch_size / (t_ms / 1e3),
            "peak_memory_bytes": peak, "peak_memory_method": method,
            "forward_times_ms": [t * 1e3 for t in fwd], "train_times_ms": [t * 1e3 for t in train]}


def run_benchmark(backends: Sequence[str] = ("numpy", "cupy"), models: Sequence[str] = ("lenet", "vgg-small"),
                  batch_sizes: Sequence[int] = (1, 32, 128, 512), dtype: str = "float32", repeats: int = 5,
                  warmup: int = 1, compare_torch: bool = False, threads: int | None = None,
                  layers: bool = True, layers_model: str | None = None, layers_batch: int | None = None,
                  seed: int = 0, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the benchmark; return the JSON-able report (see :data:`RESULT_KEYS`). Progress goes to ``log``."""
    for name in models:
        if name not in MODEL_INPUTS:
            raise InputValueError(f"unknown model {name!r}; valid models are {', '.join(MODEL_INPUTS)}")
    if not batch_sizes or min(batch_sizes) < 1:
        raise InputValueError(f"batch sizes must be >= 1, got {list(batch_sizes)}")
    if repeats < 1 or warmup < 0:
        raise InputValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats}, {warmup}")
    report: dict[str, Any] = {"schema": SCHEMA, "results": [], "comparisons": [], "layers": [], "skipped": []}

    def skip(what: str, reason: str) -> None:
        log(f"skipping {what}: {reason}")
        report["skipped"].append({"what": what, "reason": reason})

    with ExitStack() as stack:
        used_threads = limit_threads(stack, threads, log)
        torch = None
        if compare_torch:
            try:
                import torch  # noqa: F811 - optional
                if used_threads:
                    torch.set_num_threads(used_threads)
                torch.backends.cudnn.benchmark = True
            except ImportError:
                skip("--compare torch", "PyTorch is not installed (pip install torch; it is never a dependency)")
        report["machine"] = machine_info()
        report["config"] = {
            "backends": list(backends), "models": list(models), "batch_sizes": list(batch_sizes), "dtype": dtype,
            "repeats": repeats, "warmup": warmup, "threads": used_threads, "requested_threads": threads,
            "compare_torch": bool(compare_torch), "seed": seed,
            "train_step": f"forward + CrossEntropyLoss + backward + SGD(lr={LR}, momentum={MOMENTUM})",
            "forward": "eval mode (BatchNorm running stats, no dropout); torch under no_grad",
            "data": "random normal batch placed on the device before timing",
            "timing": "warm-up, synchronize before every clock read, median of repeats; torch interleaved in blocks "
                      f"of half the repeats, each block after {SETTLE_S * 1e3:g} ms of untimed calls (at least one)",
        }
        live: list[Backend] = []
        for spec in backends:
            try:
                live.append(get_backend(spec, dtype))
            except (ImportError, RuntimeError, ValueError) as e:
                skip(f"backend {spec}", str(e).split("\n")[0])
        for b in live:
            torch_device = None
            if torch is not None:
                if b.is_gpu:
                    if torch.cuda.is_available():
                        torch_device = "cuda"
                    else:
                        skip(f"torch comparison for {b.spec}", "torch has no CUDA device")
                else:
                    torch_device = "cpu"
            for model in models:
                for bs in batch_sizes:
                    try:
                        xr = XpcnnRunner(b, model, bs, seed)
                        runners: list[Any] = [xr]
                        if torch_device:
                            runners.append(TorchRunner(xr, torch_device))
                        syncs = [r.sync for r in runners]
                        fwd = time_interleaved([r.forward for r in runners], syncs, warmup, repeats)
                        train = time_interleaved([r.train_step for r in runners], syncs, warmup, repeats)
                        rows = [_result(r, model, bs, dtype, f, t) for r, f, t in zip(runners, fwd, train)]
                        for row in rows[1:]:
                            row["paired_with"] = b.spec
                    except ValueError as e:  # e.g. BatchNorm needs more than one value per channel
                        skip(f"{b.spec} {model} batch {bs}", str(e))
                        continue
                    report["results"] += rows
                    line = (f"{b.spec:<10} {model:<10} batch {bs:>4}: forward {rows[0]['forward_ms']:9.2f} ms, "
                            f"train step {rows[0]['train_step_ms']:9.2f} ms, "
                            f"{rows[0]['train_images_per_s']:9.1f} train img/s")
                    if len(rows) > 1:
                        cmp = {"backend": b.spec, "torch": rows[1]["backend"], "model": model, "batch_size": bs,
                               "forward_ratio": rows[0]["forward_ms"] / rows[1]["forward_ms"],
                               "train_ratio": rows[0]["train_step_ms"] / rows[1]["train_step_ms"]}
                        report["comparisons"].append(cmp)
                        line += f"; torch {rows[1]['train_step_ms']:.2f} ms, xpcnn/torch {cmp['train_ratio']:.2f}x"
                    log(line)
                    del runners, xr
            if layers:
                lm = layers_model or models[-1]
                lb = layers_batch or max([s for s in batch_sizes if s <= 32] or [min(batch_sizes)])
                try:
                    xr = XpcnnRunner(b, lm, lb, seed)
                    report["layers"].append({"backend": b.spec, "model": lm, "batch_size": lb, "dtype": dtype,
                                             "rows": layer_breakdown(xr, warmup, repeats)})
                except ValueError as e:
                    skip(f"layer breakdown {b.spec} {lm} batch {lb}", str(e))
    return report
