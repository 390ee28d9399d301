"""The CPU-vs-GPU benchmark behind ``xpcnn bench``.

For each backend, model and batch size: the median time of an inference
forward pass (eval mode) and of a training step (forward + cross-entropy +
backward + SGD with momentum), images per second, and the peak memory where
the backend can measure it. Optionally the same architecture in PyTorch (via
:func:`xpcnn.torch_compat.to_torch`), timed interleaved with xpcnn so both see
the same machine state, and a per-layer breakdown of one configuration.

How the clock is read: warm-up runs first; ``synchronize()`` of the device
before every clock read; ``repeats`` timed runs; medians. The batch is put on
the device once before timing (the figures are compute, not host-to-device
copies).

Peak memory, never estimated:

* CuPy: the default memory pool is emptied of cached blocks, one training step
  runs, and ``pool.total_bytes()`` is read: the most the pool held during the
  step, parameters, gradients and optimizer state included.
* NumPy / array_api_strict: ``tracemalloc`` (NumPy reports its buffers to it)
  over one separate, untimed training step: the peak of *new* host allocations
  during the step (activations, im2col buffers, gradients of the step);
  parameters allocated before are not included.
* torch CUDA: ``torch.cuda.max_memory_allocated()`` over one step; torch CPU: n/a.
"""
from __future__ import annotations

import gc
import io
import os
import platform
import statistics
import time
import tracemalloc
from contextlib import ExitStack
from typing import Any, Callable, Sequence

import numpy as np

from . import config, threads
from .backend import Backend, get_backend
from .errors import InputValueError
from .files import atomic_write
from .parity import MODEL_INPUTS

SCHEMA = "xpcnn-bench/1"
LR, MOMENTUM = 0.01, 0.9

#: The keys of each entry of ``results`` in the JSON output (documented in the README).
RESULT_KEYS = ("framework", "backend", "device", "model", "cpu_parallel", "batch_size", "dtype", "forward_ms",
               "train_step_ms", "forward_images_per_s", "train_images_per_s", "peak_memory_bytes", "peak_memory_method",
               "forward_times_ms", "train_times_ms")


# ----------------------------------------------------------------------------------------------
# machine and threads
# ----------------------------------------------------------------------------------------------
def blas_threads() -> int | None:
    """The BLAS thread count NumPy uses now (threadpoolctl), or None if unknown."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    counts = [p.get("num_threads") for p in threadpool_info() if p.get("user_api") == "blas"]
    return max(counts) if counts else None


def machine_info() -> dict[str, Any]:
    """What the figures were measured on: CPUs, threads, versions, GPU name where any."""
    from . import __version__

    info: dict[str, Any] = {
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "python": platform.python_version(), "xpcnn": __version__,
        "numpy": np.__version__, "blas_threads": blas_threads(),
    }
    try:
        info["cpu_affinity"] = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        pass
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        if names:
            info["cpu_model"] = names[0]
    except OSError:  # pragma: no cover
        pass
    try:
        import array_api_compat
        info["array_api_compat"] = array_api_compat.__version__
    except Exception:  # pragma: no cover
        pass
    try:
        from threadpoolctl import threadpool_info
        info["blas"] = [{k: p.get(k) for k in ("internal_api", "version", "num_threads", "threading_layer")}
                        for p in threadpool_info() if p.get("user_api") == "blas"]
    except ImportError:
        info["blas"] = "unknown (threadpoolctl not installed)"
    try:
        import cupy as cp
        info["cupy"] = cp.__version__
        try:
            n = cp.cuda.runtime.getDeviceCount()
            info["cuda_runtime"] = cp.cuda.runtime.runtimeGetVersion()
            info["cuda_driver"] = cp.cuda.runtime.driverGetVersion()
            info["gpus"] = [cp.cuda.runtime.getDeviceProperties(i)["name"].decode() for i in range(n)]
        except Exception as e:  # CuPy without a usable device
            info["gpus"] = f"none usable ({e})"
    except ImportError:
        info["cupy"] = None
    try:
        import torch
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["torch_cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        info["torch"] = None
    return info


def limit_threads(stack: ExitStack, threads: int | None, log: Callable[[str], None]) -> int | None:
    """Set BLAS threads (threadpoolctl, optional) for the duration of ``stack``; return the count in use."""
    if threads is None:
        return blas_threads()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        log(f"note: threadpoolctl is not installed, so --threads {threads} cannot set the BLAS threads "
            f"(pip install threadpoolctl, or set OMP_NUM_THREADS={threads} before starting)")
        return None
    stack.enter_context(threadpool_limits(limits=threads, user_api="blas"))
    return threads


# ----------------------------------------------------------------------------------------------
# timing
# ----------------------------------------------------------------------------------------------
SETTLE_S = 0.05  # untimed calls at the start of each turn, in seconds (measured, see time_interleaved)


def time_interleaved(fns: Sequence[Callable[[], Any]], syncs: Sequence[Callable[[], None]], warmup: int,
                     repeats: int, block: int | None = None, settle: float = SETTLE_S) -> list[list[float]]:
    """Seconds per call of each function, the functions taking turns in blocks of ``block`` timed calls (default:
    half the repeats, so that each gets at least two turns); each turn starts with untimed calls for ``settle``
    seconds (at least one).

    Each function warms up first; the device is synchronised before every clock read. The untimed calls keep
    one framework's leftovers off the other's clock: PyTorch's OpenMP threads spin after its calls (libgomp's
    default), which took a core from the next xpcnn call on a 2-core machine. LeNet at 2 threads, worker
    processes, median of the three calls after a PyTorch turn, settling 0 / 10 / 30 / 100 ms: forward at batch
    32 2.12 / 1.37 / 1.40 / 1.39 ms, at batch 128 4.18 / 3.22 / 2.96 / 2.98 (PyTorch's own 0.88-0.93 and
    2.93-3.00 either way); with a single untimed call, xpcnn's forward at batch 32 ran 2.2-2.5 ms for the
    first five calls after a PyTorch turn and 1.39 from the sixth, so ``xpcnn bench`` at 5 repeats had
    reported 2.53 ms.
    """
    for fn, sync in zip(fns, syncs):
        for _ in range(warmup):
            fn()
        sync()
    block = block or max(1, (repeats + 1) // 2)
    times: list[list[float]] = [[] for _ in fns]
    while len(times[0]) < repeats:
        for k, (fn, sync) in enumerate(zip(fns, syncs)):
            if len(fns) > 1:  # the turn's untimed calls
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


def _ms(ts: Sequence[float]) -> float:
    return statistics.median(ts) * 1e3


class XpcnnRunner:
    """One xpcnn model on one backend with its batch on the device, ready to time."""

    framework = "xpcnn"

    def __init__(self, backend: Backend, model: str, batch_size: int, seed: int = 0):
        from .layers import CrossEntropyLoss
        from .models import build_model
        from .optim import SGD

        c, size, classes = MODEL_INPUTS[model]
        self.backend = backend
        self.model = build_model(model, c, classes, size, backend=backend, seed=seed)
        rng = np.random.default_rng(seed)
        self.host_x = rng.standard_normal((batch_size, c, size, size)).astype(backend.dtype_name)
        self.host_labels = rng.integers(0, classes, batch_size)
        self.x = backend.asarray(self.host_x)            # moved once, before timing
        self.labels = backend.asarray(self.host_labels)
        self.loss_fn = CrossEntropyLoss()
        self.opt = SGD(self.model.parameters(), lr=LR, momentum=MOMENTUM)
        self.name, self.device = backend.spec, backend.spec

    def forward(self):
        self.model.eval()
        y = self.model(self.x)
        self.model.train()
        return y

    def train_step(self):
        self.opt.zero_grad()
        loss = self.loss_fn(self.model(self.x), self.labels)
        self.model.backward(self.loss_fn.backward(), input_grad=False)  # as torch: no input gradient
        self.opt.step()
        return loss

    def sync(self) -> None:
        self.backend.synchronize()

    def peak_memory(self) -> tuple[int | None, str]:
        """Peak memory of one training step, measured (see the module docstring), or (None, why not)."""
        b = self.backend
        if b.name == "cupy":
            import cupy as cp
            with b.activate():
                pool = cp.get_default_memory_pool()
                b.synchronize()
                pool.free_all_blocks()
                self.train_step()
                b.synchronize()
                return int(pool.total_bytes()), "cupy memory pool total_bytes after 1 step (peak held, incl. params)"
        if b.name in ("numpy", "array_api_strict"):
            gc.collect()
            was_tracing = tracemalloc.is_tracing()
            if not was_tracing:
                tracemalloc.start()
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            self.train_step()
            peak = tracemalloc.get_traced_memory()[1] - base
            if not was_tracing:
                tracemalloc.stop()
            return int(peak), "tracemalloc peak of new host allocations in 1 step (excl. params)"
        return None, "n/a"


class TorchRunner:
    """The same architecture and weights in PyTorch (CPU, or CUDA when the xpcnn side is on a GPU)."""

    framework = "torch"

    def __init__(self, ref: XpcnnRunner, device: str):
        import torch

        from .torch_compat import to_torch

        self.torch, self.device = torch, device
        self.name = f"torch:{device}"
        self.net = to_torch(ref.model, device=device)
        self.x = torch.from_numpy(ref.host_x).to(device)
        self.labels = torch.from_numpy(ref.host_labels).to(device)
        self.loss_fn = torch.nn.CrossEntropyLoss()
        self.opt = torch.optim.SGD(self.net.parameters(), lr=LR, momentum=MOMENTUM)

    def forward(self):
        self.net.eval()
        with self.torch.no_grad():
            y = self.net(self.x)
        self.net.train()
        return y

    def train_step(self):
        self.opt.zero_grad()
        loss = self.loss_fn(self.net(self.x), self.labels)
        loss.backward()
        self.opt.step()
        return loss

    def sync(self) -> None:
        if self.device.startswith("cuda"):
            self.torch.cuda.synchronize()

    def peak_memory(self) -> tuple[int | None, str]:
        if self.device.startswith("cuda"):
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()
            self.train_step()
            self.torch.cuda.synchronize()
            return int(self.torch.cuda.max_memory_allocated()), "torch.cuda.max_memory_allocated over 1 step"
        return None, "n/a"


def _cpu_parallel(runner, batch_size: int) -> str | None:
    """How an xpcnn NumPy train step spread over the CPU: "N threads" or "1 thread"."""
    if runner.framework != "xpcnn" or runner.backend.name != "numpy":
        return None
    n = config.get_num_threads() or threads.blas_threads()
    return f"{n} thread" + ("s" if n > 1 else "")


def _result(runner, model: str, batch_size: int, dtype: str, fwd: list[float], train: list[float]) -> dict:
    peak, method = runner.peak_memory()
    f_ms, t_ms = _ms(fwd), _ms(train)
    return {"framework": runner.framework, "backend": runner.name, "device": str(runner.device), "model": model,
            "cpu_parallel": _cpu_parallel(runner, batch_size),
            "batch_size": batch_size, "dtype": dtype, "forward_ms": f_ms, "train_step_ms": t_ms,
            "forward_images_per_s": batch_size / (f_ms / 1e3), "train_images_per_s": batch_size / (t_ms / 1e3),
            "peak_memory_bytes": peak, "peak_memory_method": method,
            "forward_times_ms": [t * 1e3 for t in fwd], "train_times_ms": [t * 1e3 for t in train]}


def layer_breakdown(runner: XpcnnRunner, warmup: int, repeats: int) -> list[dict]:
    """Median forward and backward time of every layer (synchronised around each), plus loss and SGD step."""
    m, b = runner.model, runner.backend
    names = [f"{i} {type(layer).__name__}" for i, layer in enumerate(m.layers)]
    fwd: list[list[float]] = [[] for _ in m.layers]
    bwd: list[list[float]] = [[] for _ in m.layers]
    extra: dict[str, list[float]] = {"loss (forward + backward)": [], "SGD step": []}

    def clocked(fn):
        b.synchronize()
        t0 = time.perf_counter()
        out = fn()
        b.synchronize()
        return out, time.perf_counter() - t0

    m.train()
    for r in range(warmup + repeats):
        keep = r >= warmup
        runner.opt.zero_grad()
        x = runner.x
        with b.activate(), threads.step(b.xp):  # as in a model step: worker threads on NumPy
            for i, layer in enumerate(m.layers):
                x, t = clocked(lambda: layer.forward(x))
                if keep:
                    fwd[i].append(t)
            dy, t = clocked(lambda: (runner.loss_fn(x, runner.labels), runner.loss_fn.backward())[1])
            if keep:
                extra["loss (forward + backward)"].append(t)
            for i in reversed(range(len(m.layers))):
                dy, t = clocked(lambda: m.layers[i].backward(dy))
                if keep:
                    bwd[i].append(t)
        _, t = clocked(runner.opt.step)
        if keep:
            extra["SGD step"].append(t)
    rows = [{"index": i, "layer": names[i], "forward_ms": _ms(fwd[i]), "backward_ms": _ms(bwd[i])}
            for i in range(len(m.layers))]
    rows += [{"index": None, "layer": k, "forward_ms": _ms(v), "backward_ms": 0.0} for k, v in extra.items()]
    total = sum(r["forward_ms"] + r["backward_ms"] for r in rows) or 1.0
    for r in rows:
        r["share"] = (r["forward_ms"] + r["backward_ms"]) / total
    return rows


# ----------------------------------------------------------------------------------------------
# the whole benchmark
# ----------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------
# output
# ----------------------------------------------------------------------------------------------
def _bytes(n: int | None) -> str:
    if n is None:
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)  # pragma: no cover


def format_report(report: dict[str, Any]) -> str:
    """The terminal tables: results (with xpcnn/torch ratios), then the per-layer breakdowns."""
    cmp = {(c["backend"], c["model"], c["batch_size"]): c for c in report["comparisons"]}
    head = (f"{'framework':<9} {'backend':<24} {'model':<10} {'batch':>5} {'fwd ms':>10} {'train ms':>10} "
            f"{'fwd img/s':>10} {'train img/s':>11} {'peak mem':>10} {'xpcnn/torch':>11}")
    lines = [head, "-" * len(head)]
    for r in report["results"]:
        ratio = ""
        c = cmp.get((r["backend"], r["model"], r["batch_size"]))
        if r["framework"] == "xpcnn" and c:
            ratio = f"{c['train_ratio']:.2f}x"
        lines.append(f"{r['framework']:<9} {r['backend']:<24} {r['model']:<10} {r['batch_size']:>5} "
                     f"{r['forward_ms']:>10.2f} {r['train_step_ms']:>10.2f} {r['forward_images_per_s']:>10.1f} "
                     f"{r['train_images_per_s']:>11.1f} {_bytes(r['peak_memory_bytes']):>10} {ratio:>11}")
    if cmp:
        lines.append("xpcnn/torch: xpcnn train-step time over torch's (1.00x = as fast; 3.00x = 3 times slower)")
    spread = sorted({(r["model"], r["batch_size"], r.get("cpu_parallel")) for r in report["results"]
                     if r.get("cpu_parallel") and r["cpu_parallel"] != "1 thread"})
    if spread:
        lines.append("numpy train steps ran on: " + ", ".join(f"{m} {b}: {p}" for m, b, p in spread))
    methods = sorted({r["peak_memory_method"] for r in report["results"] if r["peak_memory_bytes"] is not None})
    for m in methods:
        lines.append(f"peak mem: {m}")
    for lay in report["layers"]:
        lines.append("")
        lines.append(f"per-layer time, {lay['backend']} {lay['model']} batch {lay['batch_size']} "
                     f"({lay['dtype']}, training mode, medians, synchronised):")
        width = max(len(r["layer"]) for r in lay["rows"])
        lines.append(f"  {'layer':<{width}} {'forward ms':>10} {'backward ms':>11} {'share':>6}")
        for r in lay["rows"]:
            lines.append(f"  {r['layer']:<{width}} {r['forward_ms']:>10.3f} {r['backward_ms']:>11.3f} "
                         f"{100 * r['share']:>5.1f}%")
    for s in report["skipped"]:
        lines.append(f"skipped {s['what']}: {s['reason']}")
    return "\n".join(lines)


def plot_report(report: dict[str, Any], path: str) -> None:
    """A PNG of training images/s against batch size, one line per backend (and torch), one panel per model."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("--plot needs matplotlib, which is not installed (pip install matplotlib)") from e
    models = list(dict.fromkeys(r["model"] for r in report["results"]))
    if not models:
        raise InputValueError("nothing to plot: no benchmark results (were all backends skipped?)")
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4.2), squeeze=False)
    for ax, model in zip(axes[0], models):
        series: dict[str, list[tuple[int, float]]] = {}
        for r in report["results"]:
            if r["model"] == model:
                label = r["backend"] if r["framework"] == "xpcnn" else \
                    f"PyTorch {r['backend']} (timed with {r.get('paired_with', '?')})"
                series.setdefault(label, []).append((r["batch_size"], r["train_images_per_s"]))
        for label, pts in series.items():
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "--o" if "PyTorch" in label else "-o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel("training images / s")
        ax.set_title(f"{model} ({report['config']['dtype']})")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    m = report.get("machine", {})
    fig.suptitle(f"xpcnn bench: {m.get('cpu_model', m.get('processor', ''))}, {report['config'].get('threads')} "
                 f"BLAS threads" + (f", GPU {m['gpus'][0]}" if isinstance(m.get("gpus"), list) and m["gpus"] else ""),
                 fontsize=9)
    fig.tight_layout()
    image = io.BytesIO()
    fig.savefig(image, format=os.path.splitext(path)[1][1:].lower() or "png", dpi=110)
    plt.close(fig)
    atomic_write(path, image.getvalue())
