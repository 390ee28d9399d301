"""Layer benchmark: conv and pool forward/backward on the NumPy backend, against the GEMM floor.

    python benchmarks/bench_layers.py                 # all shapes, threads as the BLAS default
    python benchmarks/bench_layers.py --threads 1 --reps 15

Inputs are in the memory layout the layer sees inside a model: channels-last (what every xpcnn op returns),
except the first layers of LeNet and vgg-small, which get the user's NCHW array. The ops run inside
``xpcnn.threads.step``, as in a model step: with ``--threads 2`` the batch is split over two worker threads
and BLAS runs one thread per call; the floor GEMMs run outside it, on the BLAS threads.

For each conv shape it times ``conv2d_forward`` and ``conv2d_backward`` and the floor: the three plain
NumPy matmuls of the same GEMM shapes on ready, contiguous operands (forward ``W(F,K) @ col(K,P)``; weight
gradient ``dY(F,P) @ col(K,P).T``; column gradient ``W(F,K).T @ dY(F,P)``, with ``K = C*kh*kw`` and
``P = N*oh*ow``), at the BLAS thread count. An im2col convolution cannot beat that floor; ``ratio`` =
median(fwd + bwd) / median(floor). The two alternate in two rounds of loops, each loop after two warm-up
repetitions, not repetition by repetition: OpenBLAS's helper threads keep spinning for ~0.1 s after a
multi-threaded GEMM and took a core from the convolution's second worker (32x32x32 forward 17 -> 30 ms right
after a 2-thread GEMM; any repetition right after an idle pause was slow too).
GFLOP/s counts 2*F*K*P per GEMM (6*F*K*P for forward + backward).
A model never computes its first layer's input gradient (``backward(dy, input_grad=False)``, as PyTorch), so
for LeNet's and vgg-small's first layers the line also gives ``as first layer``: forward + backward without
the input gradient over the forward and weight-gradient GEMMs alone.
Pooling is timed forward and backward (no floor).
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from xpcnn import malloc, threads

# N, C, H(=W), F, k, stride, pad
CONV_SHAPES = [
    (128, 32, 32, 64, 3, 1, 1),   # the reference shape
    (128, 1, 28, 6, 5, 1, 2),     # lenet conv1
    (128, 6, 14, 16, 5, 1, 0),    # lenet conv2
    (128, 3, 32, 32, 3, 1, 1),    # vgg-small conv1
    (128, 32, 32, 32, 3, 1, 1),   # vgg-small conv2
    (128, 64, 16, 64, 3, 1, 1),   # vgg-small conv4
    (128, 128, 8, 128, 3, 1, 1),  # vgg-small conv6
    (64, 64, 32, 64, 3, 2, 1),    # strided
]
FIRST_LAYERS = {(128, 1, 28, 6, 5, 1, 2), (128, 3, 32, 32, 3, 1, 1)}  # fed the user's NCHW array in a model
# N, C, H(=W), k, stride, pad
POOL_SHAPES = [
    (128, 6, 28, 2, 2, 0),        # lenet pool1
    (128, 32, 32, 2, 2, 0),       # vgg-small pool1
    (128, 64, 32, 3, 2, 1),       # overlapping
]


def _t(f):
    t0 = time.perf_counter()
    r = f()
    return time.perf_counter() - t0, r


def bench_conv(shape, reps, dtype=np.float32):
    from xpcnn.functional import conv2d_backward, conv2d_forward
    from xpcnn.functional.conv import conv2d_backward_params
    n, c, hw, f, k, s, p = shape
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, c, hw, hw)).astype(dtype)
    if shape not in FIRST_LAYERS:  # a layer inside a model gets the channels-last memory every xpcnn op returns
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    w = (rng.standard_normal((f, c, k, k)) * 0.1).astype(dtype)
    b = rng.standard_normal(f).astype(dtype)
    y, ctx = conv2d_forward(x, w, b, s, p)
    dy = np.empty_like(y)  # the output's memory layout (channels-last), as in a model's backward
    dy[...] = rng.standard_normal(y.shape).astype(dtype)
    oh, ow = y.shape[2], y.shape[3]
    kk, pp = c * k * k, n * oh * ow
    wm = w.reshape(f, kk)
    col = rng.standard_normal((kk, pp)).astype(dtype)
    dym = rng.standard_normal((f, pp)).astype(dtype)
    first = shape in FIRST_LAYERS
    tf, tb, tn, tg, t2 = [], [], [], [], []
    for _ in range(2):  # rounds of reps, convolution and floor in separate loops (see the module docstring)
        for _ in range(reps // 2 + 2):
            with threads.step(np):
                a, (y, ctx) = _t(lambda: conv2d_forward(x, w, b, s, p))
                bb, _ = _t(lambda: conv2d_backward(dy, ctx))
                bn, _ = _t(lambda: conv2d_backward_params(dy, ctx)) if first else (0.0, None)
            del ctx, y
            tf.append(a), tb.append(bb), tn.append(bn)
        for t in (tf, tb, tn):
            del t[-(reps // 2 + 2):-(reps // 2)]  # two warm-up repetitions
        for _ in range(reps // 2 + 1):
            g, _ = _t(lambda: (wm @ col, dym @ col.T, wm.T @ dym))
            g2, _ = _t(lambda: (wm @ col, dym @ col.T)) if first else (0.0, None)
            tg.append(g), t2.append(g2)
        del tg[-(reps // 2 + 1)], t2[-(reps // 2 + 1)]
    flop = 6.0 * f * kk * pp
    fb = statistics.median(a + b for a, b in zip(tf, tb))
    gm = statistics.median(tg)
    ratio = fb / gm
    print(f"conv N={n:<4d} C={c:<4d} {hw}x{hw:<3d} F={f:<4d} k={k} s={s} p={p} | "
          f"fwd {1e3 * statistics.median(tf):7.1f} ms  bwd {1e3 * statistics.median(tb):7.1f} ms  "
          f"fwd+bwd {1e3 * fb:7.1f} ms {flop / fb / 1e9:6.1f} GFLOP/s | GEMMs {1e3 * gm:7.1f} ms "
          f"{flop / gm / 1e9:6.1f} GFLOP/s | ratio {ratio:5.2f}"
          + (f" | as first layer: fwd+bwd without dx {1e3 * statistics.median(a + b for a, b in zip(tf, tn)):6.1f} ms"
             f" / fwd+dW GEMMs {1e3 * statistics.median(t2):6.1f} ms = "
             f"{statistics.median(a + b for a, b in zip(tf, tn)) / statistics.median(t2):5.2f}" if first else ""),
          flush=True)


def bench_pool(shape, reps, dtype=np.float32):
    from xpcnn.functional import max_pool2d_backward, max_pool2d_forward
    n, c, hw, k, s, p = shape
    rng = np.random.default_rng(0)
    x = np.ascontiguousarray(rng.standard_normal((n, hw, hw, c)).astype(dtype)).transpose(0, 3, 1, 2)  # channels-last
    y, ctx = max_pool2d_forward(x, k, s, p)
    dy = np.empty_like(y)  # the output's layout, as in a model's backward
    dy[...] = rng.standard_normal(y.shape).astype(dtype)
    tf, tb = [], []
    for _ in range(reps + 1):
        with threads.step(np):
            a, (y, ctx) = _t(lambda: max_pool2d_forward(x, k, s, p))
            bb, _ = _t(lambda: max_pool2d_backward(dy, ctx))
        tf.append(a), tb.append(bb)
    tf, tb = tf[1:], tb[1:]
    mb = x.nbytes / 2 ** 20
    print(f"maxpool N={n:<4d} C={c:<4d} {hw}x{hw:<3d} k={k} s={s} p={p} | "
          f"fwd {1e3 * statistics.median(tf):7.2f} ms  bwd {1e3 * statistics.median(tb):7.2f} ms  "
          f"(input {mb:.0f} MiB)", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None, help="BLAS threads (threadpoolctl); default: unchanged")
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--only", choices=["conv", "pool"], default=None)
    a = ap.parse_args(argv)
    from contextlib import nullcontext
    from threadpoolctl import threadpool_limits
    ctx = threadpool_limits(limits=a.threads) if a.threads else nullcontext()
    malloc.keep_freed_memory()  # as the first model step does
    print(f"# numpy {np.__version__}, float32, threads {a.threads or 'default'}, reps {a.reps} (medians)")
    with ctx:
        if a.only != "pool":
            for shape in CONV_SHAPES:
                bench_conv(shape, a.reps)
        if a.only != "conv":
            for shape in POOL_SHAPES:
                bench_pool(shape, a.reps)


if __name__ == "__main__":
    main()
