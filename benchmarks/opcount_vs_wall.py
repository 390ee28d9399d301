"""Operations per training step (counted on array_api_strict, GPU plan) beside the measured step time on a
backend (default cupy): the host cost per operation the launch-budget model assumes (5-10 us), confirmed or
refuted. One JSON line per model and batch size, and a table.

    python benchmarks/opcount_vs_wall.py --backend cupy --models lenet,vgg-small --batch-sizes 32,128,512
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

from xpcnn.backend import get_backend
from xpcnn.tools.bench import XpcnnRunner
from xpcnn.tools.opcount import count_step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="cupy")
    ap.add_argument("--models", default="lenet,vgg-small")
    ap.add_argument("--batch-sizes", default="32,128,512")
    ap.add_argument("--steps", type=int, default=20, help="timed steps (median reported)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    rows = []
    for model in args.models.split(","):
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            counted = count_step(model, batch)
            runner = XpcnnRunner(get_backend(args.backend, "float32"), model, batch)
            for _ in range(3):
                runner.train_step()
            runner.sync()
            times = []
            for _ in range(args.steps):
                runner.sync()
                t0 = time.perf_counter()
                runner.train_step()
                runner.sync()
                times.append(time.perf_counter() - t0)
            ms = statistics.median(times) * 1e3
            row = {"model": model, "batch_size": batch, "backend": args.backend, "ops": counted["ops"],
                   "syncs": counted["syncs"], "bytes": counted["bytes"], "train_step_ms": ms,
                   "us_per_op": ms * 1e3 / counted["ops"], "times_ms": [t * 1e3 for t in times]}
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "times_ms"}), flush=True)
    print(f"{'model':<10} {'batch':>5} {'ops':>5} {'syncs':>5} {'GB':>6} {'step ms':>8} {'us/op':>6}")
    for r in rows:
        print(f"{r['model']:<10} {r['batch_size']:>5} {r['ops']:>5} {r['syncs']:>5} {r['bytes'] / 1e9:>6.2f} "
              f"{r['train_step_ms']:>8.2f} {r['us_per_op']:>6.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
