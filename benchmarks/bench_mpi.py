"""Data-parallel training step: xpcnn on 1 and N MPI ranks beside PyTorch (1 process, and DDP with gloo on N).

    python benchmarks/bench_mpi.py                                   # lenet + vgg-small, global batch 128, 2 ranks
    python benchmarks/bench_mpi.py --models lenet --ranks 2 --rounds 5 --reps 30 --interleave 10

A step is forward, CrossEntropyLoss, backward and SGD(momentum=0.9), float32, one BLAS thread per process, on the
same weights and random data. The global batch is split as ``xpcnn.distributed`` splits it (contiguous shards);
on N ranks each step includes the gradient allreduce (one flat buffer, ``DistributedOptimizer``) and, in vgg-small,
batch norm's synchronised statistics; the allreduce is also timed on its own ("allreduce_ms", rank 0, after a
barrier: the wait for the slower rank's backward is "wait_ms"). Every rank waits at a barrier before each step
and the step time is rank 0's. Each configuration runs in fresh processes; the configurations alternate for
``--rounds`` rounds and we report the median of the per-round medians.

``--interleave ROUNDS`` then splits what xpcnn's speed-up loses, in one job whose configurations alternate every
``--interleave-reps`` steps (:func:`interleaved_child`), so that the speed-ups are per-round ratios of steps
seconds apart, not minutes: the per-step cost that does not shrink with the batch ("shard"), what busy cores cost
each other ("independent"), what waiting for the slower rank costs ("lockstep"), and the communication ("ranks").
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from bench_cpu import have_torch, make_xpcnn  # noqa: E402
from xpcnn.models import MODEL_INPUTS  # noqa: E402

GLOBAL_BATCH = 128
WARMUP = 3


def _data(name: str):
    return make_xpcnn(name, GLOBAL_BATCH)  # model, (unused) step, host data of the global batch


def _gradients(model, loss_fn, opt, x, labels) -> None:
    """The step up to the update: zero the gradients, forward, loss, backward (no input gradient)."""
    opt.zero_grad()
    loss_fn(model(x), labels)
    model.backward(loss_fn.backward(), input_grad=False)


def xpcnn_child(name: str, reps: int) -> None:
    """One rank (or the only process): time ``reps`` steps on this rank's shard; rank 0 prints JSON."""
    import xpcnn
    from xpcnn import distributed, malloc
    comm = distributed.world()
    model, _, (x, labels) = _data(name)
    a, b = distributed.shard_range(GLOBAL_BATCH, comm.rank, comm.size)
    x, labels = x[a:b], labels[a:b]
    opt = distributed.DistributedOptimizer(xpcnn.optim.SGD(model.parameters(), lr=0.01, momentum=0.9), comm)
    loss_fn = xpcnn.CrossEntropyLoss()
    shard = distributed.Shard(a, b, GLOBAL_BATCH, comm)
    malloc.keep_freed_memory()
    steps, reduces, waits = [], [], []
    for i in range(WARMUP + reps):
        comm.barrier()
        t0 = time.perf_counter()
        with distributed.sharded_batch(shard):
            _gradients(model, loss_fn, opt, x, labels)
            t1 = time.perf_counter()
            comm.barrier()  # the wait for the slower rank is not the allreduce's cost (timed apart: "wait_ms")
            t15 = time.perf_counter()
            opt.allreduce_gradients()
            t2 = time.perf_counter()
            opt.optimizer.step()
        t3 = time.perf_counter()
        if i >= WARMUP:
            steps.append(t3 - t0)
            reduces.append(t2 - t15)
            waits.append(t15 - t1)
    if comm.rank == 0:
        print(json.dumps({"step": steps, "allreduce": reduces, "wait": waits}))


INTERLEAVED = ("one", "shard", "independent", "lockstep", "ranks")


def interleaved_child(name: str, reps: int, rounds: int) -> None:
    """xpcnn's configurations in ONE job of N ranks, alternating in blocks of ``reps`` steps for ``rounds``
    rounds (plus one of warm-up), so that each round compares them under the same machine state (this VM's speed
    drifts by tens of percent within seconds): "one" rank 0 trains the global batch alone while the other ranks
    sleep; "shard" rank 0 trains its shard alone; "independent" every rank trains its shard, no communication;
    "lockstep" the same between two barriers (the step ends when the slower rank is done: synchronous training
    without its communication); "ranks" the data-parallel step (barrier before each step, allreduce). The order
    rotates every round, so that no configuration always follows the same one. In lockstep each rank also times its
    own work (before the closing barrier): ``own_ms``, every rank's per-step times, tell the ranks' jitter. Rank 0
    prints per-round medians."""
    import xpcnn
    from xpcnn import distributed, malloc
    comm = distributed.world()
    malloc.keep_freed_memory()
    a, b = distributed.shard_range(GLOBAL_BATCH, comm.rank, comm.size)

    def trainer(rows: slice, over=None, lockstep: bool = False):  # over: the communicator of a data-parallel step
        model, _, (x, labels) = _data(name)
        x, labels = x[rows], labels[rows]
        opt = distributed.DistributedOptimizer(xpcnn.optim.SGD(model.parameters(), lr=0.01, momentum=0.9),
                                               over or distributed.Communicator())
        shard = distributed.Shard(a, b, GLOBAL_BATCH, over) if over else None
        loss_fn = xpcnn.CrossEntropyLoss()

        def step() -> float:
            if over or lockstep:
                comm.barrier()
            t0 = time.perf_counter()
            with distributed.sharded_batch(shard):
                _gradients(model, loss_fn, opt, x, labels)
                opt.step()
            if lockstep:
                own_times.append(time.perf_counter() - t0)
                comm.barrier()
            return time.perf_counter() - t0
        return step

    own_times: list[float] = []  # this rank's work in each lockstep step

    def alone(step) -> list:  # rank 0 steps; the others sleep at a barrier (no busy polling) until it is done
        times = [step() for _ in range(reps)] if comm.rank == 0 else []
        req = comm.comm.Ibarrier()
        while not req.Test():
            time.sleep(1e-3)
        return times

    full = trainer(slice(None)) if comm.rank == 0 else None
    own, together, ranks = trainer(slice(a, b)), trainer(slice(a, b), lockstep=True), trainer(slice(a, b), comm)
    blocks = {"one": lambda: alone(full), "shard": lambda: alone(own),
              "independent": lambda: [own() for _ in range(reps)],
              "lockstep": lambda: [together() for _ in range(reps)], "ranks": lambda: [ranks() for _ in range(reps)]}
    out: dict = {k: [] for k in INTERLEAVED}
    for r in range(rounds + 1):
        if r == 1:
            own_times.clear()  # round 0 is warm-up
        for k in INTERLEAVED[r % len(INTERLEAVED):] + INTERLEAVED[:r % len(INTERLEAVED)]:
            times = blocks[k]()
            comm.barrier()
            if r and comm.rank == 0:
                out[k].append(statistics.median(times))
    every = comm.comm.gather(own_times, root=0)
    if comm.rank == 0:
        out["own_ms"] = [[round(1e3 * t, 3) for t in rank_times] for rank_times in every]
        print(json.dumps(out))


def torch_child(name: str, reps: int, rank: int, size: int) -> None:
    """PyTorch on this process's shard, DistributedDataParallel (gloo) when ``size > 1``; rank 0 prints JSON."""
    import torch
    import torch.distributed as dist
    from xpcnn.tools.torch_compat import to_torch
    torch.set_num_threads(1)
    model, _, (x, labels) = _data(name)
    a, b = (rank * GLOBAL_BATCH // size, (rank + 1) * GLOBAL_BATCH // size)
    net = to_torch(model)
    net.train()
    if size > 1:
        dist.init_process_group("gloo", rank=rank, world_size=size)
        net = torch.nn.parallel.DistributedDataParallel(net)
    xt, yt = torch.from_numpy(x[a:b]), torch.from_numpy(labels[a:b])
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    steps = []
    for i in range(WARMUP + reps):
        if size > 1:
            dist.barrier()
        t0 = time.perf_counter()
        opt.zero_grad()
        loss_fn(net(xt), yt).backward()
        opt.step()
        if i >= WARMUP:
            steps.append(time.perf_counter() - t0)
    if rank == 0:
        print(json.dumps({"step": steps}))
    if size > 1:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child_env() -> dict:
    """One BLAS (and OpenMP) thread in every process."""
    return dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")


def run_config(kind: str, name: str, ranks: int, reps: int) -> dict:
    """Run one configuration in fresh processes; rank 0's step times."""
    env = _child_env()
    me = [sys.executable, __file__]
    if kind == "xpcnn":
        from xpcnn.distributed import find_mpiexec
        cmd = me + ["--xpcnn-child", name, "--reps", str(reps)]
        cmd = cmd if ranks == 1 else [find_mpiexec(), "-n", str(ranks)] + cmd
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
    else:
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
        procs = [subprocess.Popen(me + ["--torch-child", name, "--reps", str(reps), "--rank", str(r),
                                        "--size", str(ranks)], stdout=subprocess.PIPE, text=True, env=env)
                 for r in range(ranks)]
        out = [p.communicate()[0] for p in procs][0]
        if any(p.returncode for p in procs):
            raise RuntimeError(f"torch child failed: {[p.returncode for p in procs]}")
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="lenet,vgg-small")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3, help="rounds of fresh processes (0: none)")
    ap.add_argument("--xpcnn-child", metavar="MODEL", help=argparse.SUPPRESS)
    ap.add_argument("--torch-child", metavar="MODEL", help=argparse.SUPPRESS)
    ap.add_argument("--interleaved-child", metavar="MODEL", help=argparse.SUPPRESS)
    ap.add_argument("--interleave", type=int, default=0, metavar="ROUNDS",
                    help="also run xpcnn's configurations interleaved in one job for ROUNDS rounds (see the docstring)")
    ap.add_argument("--interleave-reps", type=int, default=0, metavar="STEPS",
                    help="steps per configuration and round of --interleave (default: --reps)")
    ap.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--json", metavar="FILE")
    a = ap.parse_args(argv)
    if a.xpcnn_child:
        return xpcnn_child(a.xpcnn_child, a.reps)
    if a.interleaved_child:
        return interleaved_child(a.interleaved_child, a.reps, a.rounds)
    if a.torch_child:
        return torch_child(a.torch_child, a.reps, a.rank, a.size)
    configs = [("xpcnn", 1), ("xpcnn", a.ranks)]
    if have_torch():
        configs += [("torch", 1), ("torch", a.ranks)]
    print(f"# nproc {os.cpu_count()}, global batch {GLOBAL_BATCH}, reps {a.reps}, rounds {a.rounds}, "
          f"1 BLAS thread per process; medians of per-round medians (ms)", flush=True)
    rows = []
    for name in a.models.split(",") if a.rounds else []:  # --rounds 0: only the interleaved job
        assert name in MODEL_INPUTS, name
        per = {c: {"step": [], "allreduce": [], "wait": []} for c in configs}
        for _ in range(a.rounds):
            for c in configs:
                r = run_config(c[0], name, c[1], a.reps)
                per[c]["step"].append(statistics.median(r["step"]))
                for key in ("allreduce", "wait"):
                    if key in r:
                        per[c][key].append(statistics.median(r[key]))
        for (kind, ranks), v in per.items():
            row = {"model": name, "framework": kind, "ranks": ranks,
                   "step_ms": 1e3 * statistics.median(v["step"]),
                   "rounds_ms": [round(1e3 * t, 2) for t in v["step"]]}
            if v["allreduce"] and ranks > 1:
                row["allreduce_ms"] = 1e3 * statistics.median(v["allreduce"])
                row["allreduce_share"] = row["allreduce_ms"] / row["step_ms"]
                row["wait_ms"] = 1e3 * statistics.median(v["wait"])
            rows.append(row)
        base = {(r["framework"], r["ranks"]): r["step_ms"] for r in rows if r["model"] == name}
        for r in rows:
            if r["model"] == name:
                r["speedup_vs_1"] = base[(r["framework"], 1)] / r["step_ms"]
                print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}), flush=True)
        if ("torch", a.ranks) in base:
            print(f"# {name}: xpcnn {a.ranks} ranks / torch DDP {a.ranks}: "
                  f"{base[('xpcnn', a.ranks)] / base[('torch', a.ranks)]:.2f}x the time", flush=True)
    interleaved = [run_interleaved(name, a.ranks, a.interleave_reps or a.reps, a.interleave)
                   for name in a.models.split(",") if a.interleave]
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"rows": rows, "interleaved": interleaved, "nproc": os.cpu_count(), "argv": sys.argv}, f,
                      indent=1)


def jitter(per: dict) -> dict:
    """The ranks' own lockstep times, step by step: each rank's median, and the mean over the steps of the slowest
    rank minus the ranks' mean (what a synchronous step waits) and of the spread between fastest and slowest."""
    steps = list(zip(*per["own_ms"]))
    return {"own_median_ms": [statistics.median(t) for t in per["own_ms"]],
            "wait_ms": statistics.fmean(max(s) - statistics.fmean(s) for s in steps),
            "spread_ms": statistics.fmean(max(s) - min(s) for s in steps)}


def run_interleaved(name: str, ranks: int, reps: int, rounds: int) -> dict:
    """One job of :func:`interleaved_child`; each configuration's median step and the median over the rounds of
    its speed-up on "one" (both measured in the same round)."""
    from xpcnn.distributed import find_mpiexec
    env = _child_env()
    cmd = [find_mpiexec(), "-n", str(ranks), sys.executable, __file__, "--interleaved-child", name, "--reps",
           str(reps), "--rounds", str(rounds)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(f"the interleaved job failed ({done.returncode}):\n{done.stderr}")
    per = json.loads(done.stdout.splitlines()[-1])
    out = {"model": name, "ranks": ranks, "reps": reps, "rounds": rounds, "configs": {}, "lockstep_ranks": jitter(per)}
    for k in INTERLEAVED:
        ratios = [one / t for one, t in zip(per["one"], per[k])]
        out["configs"][k] = {"step_ms": 1e3 * statistics.median(per[k]),
                             "rounds_ms": [round(1e3 * t, 2) for t in per[k]],
                             "speedup_vs_one": statistics.median(ratios),
                             "speedups": [round(x, 3) for x in ratios]}
        c = out["configs"][k]
        print(f"# {name} interleaved, {k:>11}: {c['step_ms']:8.2f} ms, speed-up on one process "
              f"{c['speedup_vs_one']:.2f}x (rounds {min(ratios):.2f}-{max(ratios):.2f})", flush=True)
    return out


if __name__ == "__main__":
    main()
