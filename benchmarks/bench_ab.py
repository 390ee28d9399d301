"""Training-step time of two checkouts of xpcnn (before and after a change), in alternating fresh processes.

    python benchmarks/bench_ab.py --before /path/to/old/checkout --after . --rounds 5
    python benchmarks/bench_ab.py --before ../old --after . --models lenet --threads 1 2 --batch 64 --json ab.json

A step is forward, CrossEntropyLoss, backward and SGD(momentum=0.9), float32, on the NumPy backend, same weights
and data in both. For every (model, threads) the two checkouts run in turn, each in a fresh process that times
``--reps`` steps after warm-up (BLAS threads set through the environment before NumPy loads); the order alternates
every round so that neither always runs first. We report the median of each checkout's per-process medians and
the median of the per-round ratios after/before. Only public API that both checkouts have is used.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

# The child runs on old checkouts too, so it uses only what every version has: its own small table of inputs
# (not xpcnn.models.MODEL_INPUTS, which older checkouts lack) and its own loop of steps.
CHILD = r"""
import json, sys, time
import numpy as np
import xpcnn
from xpcnn.models import build_model
name, batch, reps, warmup = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
c, s = {"lenet": (1, 28), "vgg-small": (3, 32), "resnet20": (3, 32), "digits-cnn": (1, 8)}[name]
model = build_model(name, c, 10, s, backend="numpy", dtype="float32", seed=0)
model.train()
rng = np.random.default_rng(0)
x = rng.standard_normal((batch, c, s, s)).astype(np.float32)
y = rng.integers(0, 10, batch)
opt = xpcnn.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
loss_fn = xpcnn.CrossEntropyLoss()
times = []
for i in range(warmup + reps):
    t = time.perf_counter()
    opt.zero_grad()
    loss_fn(model(x), y)
    model.backward(loss_fn.backward(), input_grad=False)
    opt.step()
    if i >= warmup:
        times.append(time.perf_counter() - t)
print(json.dumps({"file": xpcnn.__file__, "median_ms": 1e3 * float(np.median(times))}))
"""


def child(tree: str, model: str, threads: int, batch: int, reps: int, warmup: int) -> float:
    env = dict(os.environ, PYTHONPATH=os.path.abspath(tree), OMP_NUM_THREADS=str(threads),
               OPENBLAS_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    # cwd: ``python -c`` puts the working directory first on sys.path, before PYTHONPATH
    out = subprocess.run([sys.executable, "-c", CHILD, model, str(batch), str(reps), str(warmup)], env=env,
                         cwd=tree, capture_output=True, text=True, check=True).stdout
    row = json.loads(out.strip().splitlines()[-1])
    expected = os.path.join(os.path.abspath(tree), "xpcnn")
    if not row["file"].startswith(expected):
        raise SystemExit(f"the child imported {row['file']}, not the checkout {tree} (an installed copy shadows it)")
    return row["median_ms"]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True, help="checkout (repository root) before the change")
    ap.add_argument("--after", default=".", help="checkout after the change (default: here)")
    ap.add_argument("--models", nargs="+", default=["lenet", "vgg-small"])
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    rows = []
    for model in args.models:
        for threads in args.threads:
            ms = {"before": [], "after": []}
            for r in range(args.rounds):
                for which in (("before", "after") if r % 2 == 0 else ("after", "before")):
                    tree = getattr(args, which)
                    ms[which].append(child(tree, model, threads, args.batch, args.reps, args.warmup))
            ratios = [a / b for a, b in zip(ms["after"], ms["before"])]
            row = {"model": model, "threads": threads, "batch_size": args.batch,
                   "before_ms": statistics.median(ms["before"]), "after_ms": statistics.median(ms["after"]),
                   "ratio_after_before": statistics.median(ratios), "ratios": ratios,
                   "before_runs_ms": ms["before"], "after_runs_ms": ms["after"]}
            rows.append(row)
            print(f"{model:10s} {threads} thread(s) batch {args.batch}: before {row['before_ms']:8.2f} ms, "
                  f"after {row['after_ms']:8.2f} ms, after/before {row['ratio_after_before']:.3f} "
                  f"(per-round ratios {min(ratios):.3f}-{max(ratios):.3f})", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": os.uname().nodename,
                       "cpus": os.cpu_count(), "before": os.path.abspath(args.before),
                       "after": os.path.abspath(args.after), "results": rows}, f, indent=1)


if __name__ == "__main__":
    main()
