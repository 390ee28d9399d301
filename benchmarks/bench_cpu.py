"""Training-step time and peak memory: xpcnn (NumPy backend) vs PyTorch (CPU), same model, same weights.

    python benchmarks/bench_cpu.py                       # lenet + vgg-small, 1 and 2 threads, batch 128
    python benchmarks/bench_cpu.py --models lenet --threads 1 --reps 30 --no-memory

    python benchmarks/bench_cpu.py --apart --rounds 3    # each framework alone, processes alternating

Timing (the one interleaved timer, ``xpcnn.tools.bench.timing``): for each (model, threads)
the xpcnn steps and the PyTorch steps alternate in blocks (``--block`` steps of xpcnn,
then of PyTorch, and again) so that a slow phase of a noisy machine hits both alike; we
report medians and the median of the per-pair ratios (the i-th step of each).  A step is
forward, loss, backward and an SGD(momentum=0.9) update, batch 128, float32.  The first
step after each switch is run but not timed, for both frameworks: PyTorch's OpenMP threads
keep spinning for several milliseconds after its step (libgomp's default spin count) and
take a core from whatever runs next (measured: docs/measurements.md, "Benchmarks and
tools"). Alternating single steps (``--block 1``, the method of the early entries in
benchmarks/history/) charges that to xpcnn.  ``--apart`` times each
framework alone in fresh processes instead, alternating xpcnn and PyTorch processes
for ``--rounds`` rounds (medians of the per-round medians and ratios).  Both kinds of
process keep freed memory as xpcnn's first step does (``xpcnn.malloc``), so PyTorch
gets the same allocator setting as in the interleaved run.

Parallelism (more than one thread): xpcnn's per-op threads (``xpcnn.threads``); PyTorch its intra-op
threads. Several processes (MPI ranks) are timed by ``benchmarks/bench_mpi.py``.

Memory: each (framework, model) runs in a fresh subprocess with 1 thread and
glibc told to mmap every block of 64 KiB or more (MALLOC_MMAP_THRESHOLD_=65536),
so that a freed buffer leaves the resident set at once.  After two warm-up
steps on a first copy of the model (loading libraries, thread pools), the kernel's
peak-RSS counter (VmHWM) is reset through /proc/self/clear_refs; a fresh model
(same weights; nothing saved from a previous step) runs three steps; "peak" = VmHWM - VmRSS at the reset: the extra resident memory a
training step needs on top of the model, its gradients and optimizer state and
the data.  Same method for both frameworks (Linux only).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

import numpy as np

from xpcnn.models import MODEL_INPUTS
from xpcnn.tools.bench.timing import time_interleaved


def make_xpcnn(name: str, batch: int, seed: int = 0, backend: str = "numpy"):
    """Model, training step and host data ``(x, labels)``; on another backend the step's data is placed there
    once, before timing."""
    import xpcnn
    from xpcnn.models import build_model
    c, s, classes = MODEL_INPUTS[name]
    model = build_model(name, c, classes, s, backend=backend, dtype="float32", seed=seed)
    model.train()
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, c, s, s)).astype(np.float32)
    labels = rng.integers(0, classes, batch)
    x_dev, labels_dev = (x, labels) if backend == "numpy" else (model.backend.asarray(x), model.backend.asarray(labels))
    opt = xpcnn.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = xpcnn.CrossEntropyLoss()

    def step():
        opt.zero_grad()
        loss = loss_fn(model.forward(x_dev), labels_dev)
        model.backward(loss_fn.backward(), input_grad=False)  # torch computes no input gradient either
        opt.step()
        return loss
    return model, step, (x, labels)


def make_torch(model, data):
    import torch
    from xpcnn.tools.torch_compat import to_torch
    net = to_torch(model)
    net.train()
    x, labels = torch.from_numpy(data[0]), torch.from_numpy(data[1])
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad()
        loss = loss_fn(net(x), labels)
        loss.backward()
        opt.step()
        return loss
    return step


def make_step(framework: str, name: str, batch: int, threads: int):
    """The training step of ``framework`` ("xpcnn" or "torch") on model ``name`` (same weights either way)."""
    model, step, data = make_xpcnn(name, batch)
    if framework == "torch":
        import torch
        torch.set_num_threads(threads)
        step = make_torch(model, data)
    return step


def have_torch() -> bool:
    try:
        import torch  # noqa: F401
        return True
    except ImportError:
        return False


def time_steps(fns: dict, reps: int, warmup: int = 3, block: int = 1) -> dict[str, list[float]]:
    """``reps`` step times of each function by the one interleaved timer: alternating blocks of ``block`` timed
    steps, each block after one untimed step (see the module docstring; with ``block=1``: plain alternation, and
    with one function plain repetitions)."""
    times = time_interleaved(list(fns.values()), None, warmup, reps, block=block, settle=0 if block > 1 else None)
    return dict(zip(fns, times))


def bench_time(models, threads_list, batch, reps, block):
    from threadpoolctl import threadpool_limits
    torch_ok = have_torch()
    if not torch_ok:
        print("PyTorch not installed: timing xpcnn only")
    rows = []
    for name in models:
        model, xstep, data = make_xpcnn(name, batch)
        fns = {"xpcnn": xstep}
        if torch_ok:
            fns["torch"] = make_torch(model, data)
        for th in threads_list:
            if torch_ok:
                import torch
                torch.set_num_threads(th)
            with threadpool_limits(limits=th):
                t = time_steps(fns, reps, block=block)
            row = {"model": name, "threads": th, "parallel": "threads" if th > 1 else "-",
                   "xpcnn_ms": 1e3 * statistics.median(t["xpcnn"])}
            if torch_ok:
                row["torch_ms"] = 1e3 * statistics.median(t["torch"])
                row["ratio"] = statistics.median(a / b for a, b in zip(t["xpcnn"], t["torch"]))
            rows.append(row)
            print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    return rows


def time_child(framework: str, name: str, threads: int, batch: int, reps: int) -> None:
    """Run in a fresh process: print the step times (s) of one framework alone."""
    from threadpoolctl import threadpool_limits
    from xpcnn import malloc
    malloc.keep_freed_memory()  # the setting xpcnn applies at its first step, for both frameworks
    step = make_step(framework, name, batch, threads)
    with threadpool_limits(limits=threads):
        t = time_steps({framework: step}, reps)[framework]
    print(json.dumps(t))


def bench_apart(models, threads_list, batch, reps, rounds):
    frameworks = ["xpcnn"] + (["torch"] if have_torch() else [])
    if len(frameworks) == 1:
        print("PyTorch not installed: timing xpcnn only")
    rows = []
    for name in models:
        for th in threads_list:
            med: dict[str, list[float]] = {fw: [] for fw in frameworks}
            for _ in range(rounds):
                for fw in frameworks:
                    r = subprocess.run([sys.executable, __file__, "--time-child", fw, name, "--batch", str(batch),
                                        "--threads", str(th), "--reps", str(reps)],
                                       capture_output=True, text=True, check=True)
                    med[fw].append(statistics.median(json.loads(r.stdout.strip().splitlines()[-1])))
            used = "threads" if th > 1 else "-"
            row = {"model": name, "threads": th, "parallel": used, "apart": True,
                   "xpcnn_ms": 1e3 * statistics.median(med["xpcnn"])}
            if "torch" in med:
                row["torch_ms"] = 1e3 * statistics.median(med["torch"])
                row["ratio"] = statistics.median(a / b for a, b in zip(med["xpcnn"], med["torch"]))
            rows.append(row)
            print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    return rows


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def memory_child(framework: str, name: str, batch: int) -> None:
    """Run in a fresh process: print the extra peak RSS (MiB) of a training step."""
    from threadpoolctl import threadpool_limits
    import gc

    with threadpool_limits(limits=1):
        step = make_step(framework, name, batch, 1)
        step(); step()  # warm-up (libraries, thread pools), then a fresh model without saved state
        del step
        gc.collect()
        step = make_step(framework, name, batch, 1)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        base = _status_kb("VmRSS")
        for _ in range(3):
            step()
        peak = _status_kb("VmHWM")
    print(json.dumps({"peak_mib": (peak - base) / 1024}))


def bench_memory(models, batch):
    rows = []
    frameworks = ["xpcnn"] + (["torch"] if have_torch() else [])
    for name in models:
        row = {"model": name}
        for fw in frameworks:
            env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
            r = subprocess.run([sys.executable, __file__, "--memory-child", fw, name, "--batch", str(batch)],
                               capture_output=True, text=True, check=True, env=env)
            row[f"{fw}_peak_mib"] = json.loads(r.stdout.strip().splitlines()[-1])["peak_mib"]
        if "torch_peak_mib" in row:
            row["ratio"] = row["xpcnn_peak_mib"] / max(row["torch_peak_mib"], 1e-9)
        rows.append(row)
        print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["lenet", "vgg-small"], choices=list(MODEL_INPUTS))
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--block", type=int, default=5, help="interleaved: timed steps per framework between switches")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--no-time", action="store_true")
    ap.add_argument("--apart", action="store_true", help="time each framework alone, in alternating processes")
    ap.add_argument("--rounds", type=int, default=3, help="with --apart: xpcnn/PyTorch process pairs")
    ap.add_argument("--memory-child", nargs=2, metavar=("FRAMEWORK", "MODEL"), help=argparse.SUPPRESS)
    ap.add_argument("--time-child", nargs=2, metavar=("FRAMEWORK", "MODEL"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.memory_child:
        return memory_child(a.memory_child[0], a.memory_child[1], a.batch)
    if a.time_child:
        return time_child(a.time_child[0], a.time_child[1], a.threads[0], a.batch, a.reps)
    import xpcnn
    vers = f"numpy {np.__version__}, xpcnn {xpcnn.__version__}"
    if have_torch():
        import torch
        vers += f", torch {torch.__version__}"
    print(f"# {vers}; nproc {os.cpu_count()}; batch {a.batch}; reps {a.reps}; block {a.block}")
    if not a.no_time and a.apart:
        bench_apart(a.models, a.threads, a.batch, a.reps, a.rounds)
    elif not a.no_time:
        bench_time(a.models, a.threads, a.batch, a.reps, a.block)
    if not a.no_memory:
        bench_memory(a.models, a.batch)


if __name__ == "__main__":
    main()
