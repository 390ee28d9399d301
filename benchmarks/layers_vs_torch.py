"""One training step layer by layer: xpcnn (NumPy) beside PyTorch on the same model, weights and data.

    python benchmarks/layers_vs_torch.py                          # vgg-small, batch 64, 1 thread
    python benchmarks/layers_vs_torch.py --model lenet --batch 128 --reps 30 --json out.json

A step is forward, CrossEntropyLoss, backward (no input gradient) and SGD(momentum=0.9), float32, one thread
for both (BLAS and torch's intra-op). xpcnn steps and PyTorch steps alternate in one process; each layer's
forward and backward is timed inside the step: xpcnn by wrapping each layer's ``forward``/``backward``,
PyTorch by module hooks (forward pre/post; backward pre/post: from the output's gradient arriving to the
input's being computed, for the first layer, whose input needs no gradient, to the end of ``backward()``).
Reported: medians over ``--reps`` steps, per layer and for the whole step, and their ratio (xpcnn / PyTorch).
xpcnn runs a ReLU followed by a MaxPool2d after the pool (``Sequential.run_order``): those ReLU rows are on the
pooled array.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(__file__))
from bench_cpu import make_xpcnn  # noqa: E402


def _timed_xpcnn(model, times: dict) -> None:
    """Wrap each layer's forward/backward to record its time in ``times`` ("NN Name F" / "NN Name B")."""
    for i, layer in enumerate(model.layers):
        name = f"{i:02d} {type(layer).__name__}"

        def wrap(fn, key):
            def timed(*args, **kwargs):
                t0 = time.perf_counter()
                out = fn(*args, **kwargs)
                times[key] = time.perf_counter() - t0
                return out
            return timed
        layer.forward, layer.backward = wrap(layer.forward, name + " F"), wrap(layer.backward, name + " B")


def _timed_torch(net, times: dict) -> dict:
    """Module hooks recording each child's forward and backward time in ``times``; returns the start times (the
    first layer's backward ends with ``backward()``, see the module docstring)."""
    start: dict = {}
    for i, mod in enumerate(net.children()):
        name = f"{i:02d} {type(mod).__name__}"

        def pre(key):
            return lambda *_: start.__setitem__(key, time.perf_counter())

        def post(key):
            return lambda *_: times.__setitem__(key, time.perf_counter() - start[key])
        mod.register_forward_pre_hook(pre(name + " F"))
        mod.register_forward_hook(post(name + " F"))
        mod.register_full_backward_pre_hook(pre(name + " B"))
        if i:
            mod.register_full_backward_hook(post(name + " B"))
    return start


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="vgg-small")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--json", metavar="FILE")
    a = ap.parse_args(argv)
    from threadpoolctl import threadpool_limits
    threadpool_limits(1)
    import torch
    import xpcnn
    from xpcnn import malloc
    from xpcnn.tools.torch_compat import to_torch
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="Full backward hook is firing")  # the first layer's (docstring)
    malloc.keep_freed_memory()
    model, _, (x, labels) = make_xpcnn(a.model, a.batch)
    net = to_torch(model)
    net.train()
    opt = xpcnn.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = xpcnn.CrossEntropyLoss()
    topt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    tloss = torch.nn.CrossEntropyLoss()
    xt, yt = torch.from_numpy(x), torch.from_numpy(labels)
    cur: dict = {}
    _timed_xpcnn(model, cur)
    start = _timed_torch(net, cur)
    first = f"00 {type(next(net.children())).__name__} B"

    def x_step():
        t0 = time.perf_counter()
        opt.zero_grad()
        loss = loss_fn(model(x), labels)
        model.backward(loss_fn.backward(), input_grad=False)
        t1 = time.perf_counter()
        opt.step()
        cur["optimizer step"], cur["step"] = time.perf_counter() - t1, time.perf_counter() - t0
        return loss

    def t_step():
        t0 = time.perf_counter()
        topt.zero_grad()
        tloss(net(xt), yt).backward()
        t1 = time.perf_counter()
        cur[first] = t1 - start[first]
        topt.step()
        cur["optimizer step"], cur["step"] = time.perf_counter() - t1, time.perf_counter() - t0

    res = {"xpcnn": collections.defaultdict(list), "torch": collections.defaultdict(list)}
    for i in range(3 + a.reps):
        for fw, step in (("xpcnn", x_step), ("torch", t_step)):
            cur.clear()
            step()
            if i >= 3:
                for k, v in cur.items():
                    res[fw][k].append(v)
    med = {fw: {k: 1e3 * statistics.median(v) for k, v in d.items()} for fw, d in res.items()}
    layers = sorted({k for k in med["xpcnn"] if k[:2].isdigit()},
                    key=lambda k: (k.endswith(" B"), -int(k[:2]) if k.endswith(" B") else int(k[:2])))
    print(f"# {a.model}, batch {a.batch}, float32, 1 thread, torch {torch.__version__}; medians of {a.reps} steps (ms)")
    print(f"{'layer':24s} {'xpcnn':>8s} {'torch':>8s} {'ratio':>6s}")
    for k in layers + ["optimizer step", "step"]:
        xv, tv = med["xpcnn"].get(k, float("nan")), med["torch"].get(k, float("nan"))
        print(f"{k:24s} {xv:8.2f} {tv:8.2f} {xv / tv:6.2f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"model": a.model, "batch": a.batch, "reps": a.reps, "ms": med}, f, indent=1)


if __name__ == "__main__":
    main()
