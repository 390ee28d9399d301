"""Fast paths against the portable reference: NumPy kernels, batch chunking, column caching (float64, tight).

The portable path (``xpcnn.config.set_fast_paths(False)``, and every non-NumPy backend such as
array_api_strict in the other test files) is the reference; each fast path must match it to ~1e-12.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from xpcnn import config
from xpcnn.functional import conv2d_backward, conv2d_forward

CASES = [  # x shape, w shape, stride, padding, dilation, groups
    ((3, 4, 9, 8), (6, 4, 3, 3), 1, 1, 1, 1),
    ((2, 4, 7, 6), (4, 1, 3, 2), (2, 1), (1, 2), (1, 2), 4),
    ((2, 4, 7, 6), (6, 2, 2, 3), 3, 2, 1, 2),
    ((5, 3, 8, 8), (4, 3, 5, 5), 2, 3, 1, 1),
    ((2, 3, 10, 9), (5, 3, 3, 3), 2, (0, 2), (2, 1), 1),
    ((3, 32, 6, 6), (20, 32, 3, 3), 1, 1, 1, 1),      # channels-last backward (C >= 16)
    ((2, 64, 7, 7), (6, 32, 3, 2), 2, 1, (1, 2), 2),  # channels-last backward, grouped
]


def _run(case, seed):
    xs, ws, s, p, d, g = case
    rng = np.random.default_rng(seed)
    x, w, b = rng.standard_normal(xs), rng.standard_normal(ws), rng.standard_normal(ws[0])
    y, ctx = conv2d_forward(x, w, b, s, p, d, g)
    dy = rng.standard_normal(y.shape)
    return (y,) + tuple(conv2d_backward(dy, ctx))


@pytest.mark.parametrize("case", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_conv_fast_paths_match_portable(case):
    config.set_fast_paths(False)
    ref = _run(case, 7)
    for fast, limit, cache, algo in itertools.product([False, True], [1, 3000, 10 ** 9], [False, True],
                                                      ["auto", "im2col", "im2col_nhwc", "im2col_blocked",
                                                       "transposed", "polyphase"]):
        config.set_fast_paths(fast)
        config.set_workspace_limit(limit)  # 1 byte: one sample per chunk; 3000: some chunks of several
        config.set_cache_columns(cache)
        config.set_conv_algorithm(algo)  # every path where it applies
        got = _run(case, 7)
        for a, r in zip(got, ref):
            np.testing.assert_allclose(np.asarray(a), np.asarray(r), rtol=1e-12, atol=1e-12,
                                       err_msg=f"fast={fast} limit={limit} cache={cache} algo={algo}")


def test_workspace_limit_bounds_the_column_buffer():
    """Batch 1024 of 3x224x224 through a first conv: the column buffer stays under the limit (chunked)."""
    from xpcnn.functional.conv import planner
    n, c, hw = 1024, 3, 224
    nb = planner.batch_chunk(n, hw * hw * 3 * 3 * c, 4)
    assert nb * hw * hw * 27 * 4 <= config.get_workspace_limit() and nb >= 1
    config.set_workspace_limit(2 ** 18)  # a sample's columns are 32*32*27*8 = 216 KiB: one per chunk
    x = np.ones((4, 3, 32, 32))
    y, ctx = conv2d_forward(x, np.ones((2, 3, 3, 3)), None, 1, 1)
    assert ctx.nb == 1
    np.testing.assert_allclose(y[:, :, 1:-1, 1:-1], 27.0)
    # width-blocked columns (8 filters: B = 4): a sample's are 32*8*3*6*3*8 = 108 KiB, two fit in 2**18 bytes
    y, ctx = conv2d_forward(x, np.ones((8, 3, 3, 3)), None, 1, 1)
    assert (ctx.algorithm, ctx.block, ctx.nb) == ("im2col_blocked", 4, 2)
    np.testing.assert_allclose(y[:, :, 1:-1, 1:-1], 27.0)


def test_workspace_limit_defaults_per_device_and_one_setting_for_all(monkeypatch):
    """16 MiB on a CPU, 512 MiB on a GPU (where each chunk is a round of kernel launches); a limit that is set
    holds on every device, and None restores the defaults. vgg-small's 32 -> 32 conv at batch 128 (1.2 MB of
    float32 columns a sample): 14 samples a chunk under 16 MiB, the whole batch on a GPU."""
    from xpcnn.functional.conv import planner
    assert (config.get_workspace_limit(), config.get_workspace_limit(gpu=True)) == (16 * 2 ** 20, 512 * 2 ** 20)
    sample = 32 * 32 * 9 * 32  # column values of one sample
    config.set_cache_columns(True)  # no CPU cache-sized target: the workspace limit alone
    assert planner.batch_chunk(128, sample, 4, "im2col_nhwc", cache=True) == 14
    assert planner.batch_chunk(128, sample, 4, "im2col_nhwc", cache=False) == 128
    config.set_workspace_limit(2 ** 22)
    assert config.get_workspace_limit() == config.get_workspace_limit(gpu=True) == 2 ** 22
    assert planner.batch_chunk(128, sample, 4, "im2col_nhwc", cache=False) == 3
    config.set_workspace_limit(None)
    assert config.get_workspace_limit(gpu=True) == 512 * 2 ** 20
    config.set_plan("gpu")  # as a GPU array: the GPU default
    x = np.zeros((40, 32, 32, 32), dtype=np.float32)
    assert conv2d_forward(x, np.zeros((32, 32, 3, 3), dtype=np.float32), None, 1, 1)[1].nb == 40


def test_workspace_limit_validation():
    with pytest.raises(ValueError):
        config.set_workspace_limit(0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("special", [None, "nan", "inf", "huge"])
def test_relu_backward_fast_path_matches_portable(dtype, special):
    """The NumPy ReLU backward (a multiply by the mask) equals ``where(y > 0, dy, 0)`` exactly, also for inf/NaN
    in ``dy`` where ``y <= 0`` (0, as PyTorch), and keeps the channels-last layout of its inputs."""
    from xpcnn.functional import relu, relu_backward
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 5, 6, 3)).astype(dtype).transpose(0, 3, 1, 2)  # NCHW view of NHWC memory
    x[0, 0, 0, 0] = 0.0
    y = relu(x)
    dy = rng.standard_normal((4, 5, 6, 3)).astype(dtype).transpose(0, 3, 1, 2)
    if special:
        neg, pos = np.argwhere(y <= 0), np.argwhere(y > 0)
        v = {"nan": np.nan, "inf": np.inf, "huge": np.finfo(dtype).max}[special]
        dy[tuple(neg[0])] = v
        dy[tuple(neg[1])] = -v
        dy[tuple(pos[0])] = v
    config.set_fast_paths(False)
    ref = relu_backward(dy, y)
    config.set_fast_paths(True)
    got = relu_backward(dy, y)
    assert got.dtype == ref.dtype and got.strides == y.strides
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("geom", [(2, 2, 0), (3, 2, 1), (2, 3, 0)])  # kernel, stride, padding
@pytest.mark.parametrize("special", [None, "nan", "inf"])
def test_max_pool_fast_path_matches_portable(geom, special):
    """Max pooling with the NumPy ``where_zero`` kernel equals the portable path exactly (ties, NaN in the
    input, inf/NaN in the gradient), disjoint and overlapping windows."""
    from xpcnn.functional import max_pool2d_backward, max_pool2d_forward
    k, s, p = geom
    rng = np.random.default_rng(5)
    x = np.round(rng.standard_normal((3, 4, 9, 7)), 1).astype(np.float32).transpose(0, 1, 2, 3)
    x[0, 0, 0, :] = 1.0  # ties
    x[1, 2, 3, 3] = np.nan
    out = []
    for fast in (False, True):
        config.set_fast_paths(fast)
        y, ctx = max_pool2d_forward(x, k, s, p)
        dy = rng.standard_normal(y.shape).astype(np.float32) if not out else out[0][2]
        if special and not out:
            dy[0, 0, 0, 0] = {"nan": np.nan, "inf": np.inf}[special]
        out.append((y, max_pool2d_backward(dy, ctx), dy))
    np.testing.assert_array_equal(out[1][0], out[0][0])
    np.testing.assert_array_equal(out[1][1], out[0][1])


def test_workspace_limit_bounds_the_transposed_gradient_columns():
    """The input gradient as a transposed convolution chunks its columns like a forward: (kh*kw*F) values per
    output pixel under the limit."""
    from xpcnn.functional import conv as C
    from xpcnn.functional.conv import planner
    config.set_workspace_limit(32 * 32 * 9 * 8 * 8 * 2)  # two samples' columns of the gradient, float64
    x = np.ones((5, 4, 32, 32))
    y, ctx = conv2d_forward(x, np.ones((8, 4, 3, 3)), None, 1, 1)
    assert C.backward_algorithm(ctx) == "banded"  # 4 channels: ow-innermost columns, banded rows under auto
    config.set_conv_algorithm("transposed")
    assert C.backward_algorithm(ctx) == "transposed"
    assert planner.batch_chunk(5, 32 * 32 * 9 * 8, 8) == 2
    np.testing.assert_allclose(y[:, :, 1:-1, 1:-1], 36.0)
    dx, dw, _ = conv2d_backward(np.ones(y.shape), ctx)
    np.testing.assert_allclose(dx[:, :, 1:-1, 1:-1], 72.0)


def test_cache_sized_pieces_only_off_the_gpu(monkeypatch):
    """On a CPU a batch runs in cache-sized chunks (CHUNK_TARGET), the banded input gradient in sub-chunks and long
    weight-gradient reductions in blocks; on a GPU only the workspace limit bounds a chunk (each piece would be
    more kernel launches). Same gradients either way."""
    from xpcnn.functional import conv as C
    from xpcnn.functional.conv import banded, planner, weight_grad
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal((64, 3, 32, 32)), rng.standard_normal((32, 3, 3, 3))  # few channels: banded dx
    dy = rng.standard_normal((64, 32, 32, 32))
    results = {}
    config.set_conv_algorithm("banded")  # the GPU plan's own choice is the plain path (tests/test_gpu_plan.py)
    for gpu in (False, True):
        config.set_plan("gpu" if gpu else "cpu")
        y, ctx = conv2d_forward(x, w, None, 1, 1)
        assert C.backward_algorithm(ctx) == "banded"
        results[gpu] = (ctx.nb, y) + tuple(conv2d_backward(dy, ctx))
    cpu_nb, gpu_nb = results[False][0], results[True][0]
    # a sample's columns: 32*32*27*8 bytes = 216 KiB; 2 MiB on a CPU: 9 samples; 16 MiB workspace: all 64
    assert (cpu_nb, gpu_nb) == (9, 64)
    for a, b in zip(results[False][1:4], results[True][1:4]):  # y, dx, dw (no bias)
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)

    class Counted(np.ndarray):
        products = 0

        def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
            Counted.products += ufunc is np.matmul
            return super().__array_ufunc__(ufunc, method, *(np.asarray(i) for i in inputs), **kwargs)
    a, b = np.ones((3, 5000)).view(Counted), np.ones((5000, 2))
    for gpu, products in ((False, 5), (True, 1)):  # blocks of DW_BLOCK = 1024 rows on a CPU
        config.set_plan("gpu" if gpu else "cpu")
        Counted.products = 0
        assert np.array_equal(np.asarray(weight_grad.long_matmul(np, a, b)), np.full((3, 2), 5000.0))
        assert Counted.products == products
    monkeypatch.setattr(planner, "BAND_BYTES", 1)  # the banded input gradient: a sub-chunk per sample on a CPU
    real_chunks, sizes = banded.chunks, []
    monkeypatch.setattr(banded, "chunks", lambda a, b, size: sizes.append(size) or real_chunks(a, b, size))
    for gpu in (False, True):
        config.set_plan("gpu" if gpu else "cpu")
        sizes.clear()
        dx = C.conv2d_backward(dy, conv2d_forward(x, w, None, 1, 1)[1])[0]
        np.testing.assert_allclose(dx, results[gpu][2], rtol=1e-12, atol=1e-12)
        assert sizes[-1] == (64 if gpu else 1)  # the banded sub-chunks, after the weight-gradient chunks
