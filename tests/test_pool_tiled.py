"""Max pooling on the GPU plan where the windows tile the input (xpcnn.functional.pool.tiles): one reduction of a
6-D view and a keyed first-maximum mask, against the loop reference (ties, NaN, infinities), numerical gradients,
and the path each plan runs."""
from __future__ import annotations

import numpy as np
import pytest

import reference_pool as ref
import xpcnn
import xpcnn.functional as F
from conftest import make_env
from gradcheck import check_grads
from xpcnn import config
from xpcnn.functional import pool


@pytest.fixture
def gpu_plan():
    with xpcnn.using(plan="gpu"):
        yield


def _special_input(rng, n, c, h, w, kernel):
    """Small integers (ties in most windows), and windows with one NaN, two NaNs, a NaN beside +inf, all -inf,
    and tied +inf."""
    x = rng.integers(-2, 3, (n, c, h, w)).astype(np.float64)
    kh, kw = kernel
    x[0, 0, 0, 1] = np.nan
    x[0, 0, 0, kw] = x[0, 0, kh - 1, kw] = np.nan           # two NaNs: the last one takes the gradient
    x[0, 1 % c, kh, 0] = np.nan
    x[0, 1 % c, kh, 1] = np.inf
    x[-1, -1, :kh, :kw] = -np.inf
    x[-1, 0, kh:2 * kh, kw] = x[-1, 0, kh:2 * kh, kw - 1] = np.inf
    return x


CASES = [((2, 2), (2, 3, 6, 8)), ((3, 2), (2, 2, 9, 4)), ((1, 3), (1, 2, 2, 6)), ((4, 4), (2, 3, 8, 8)),
         ((16, 16), (1, 2, 32, 32))]  # 256 positions: int32 keys


@pytest.mark.parametrize("kernel,shape", CASES, ids=[f"{k}" for k, _ in CASES])
def test_tiled_max_pool_against_the_loop_reference(env, kernel, shape, gpu_plan, rng):
    x = env.ref_input(_special_input(rng, *shape, kernel))
    y, ctx = F.max_pool2d_forward(env.put(x), kernel)
    assert isinstance(ctx, pool.TiledPool)  # the tiled path ran
    y_ref, idx_ref = ref.max_pool2d(x, kernel, kernel, (0, 0))
    np.testing.assert_array_equal(env.get(y), y_ref)  # max is exact; NaN where the window holds one
    np.testing.assert_array_equal(env.get(F.max_pool2d_indices(ctx), floating=False), idx_ref)
    dy = env.ref_input(rng.standard_normal(y_ref.shape))
    dx = F.max_pool2d_backward(env.put(dy), ctx)
    # each input position receives one output's gradient or 0 (disjoint windows): exact
    np.testing.assert_array_equal(env.get(dx), ref.max_pool2d_backward(dy, x.shape, idx_ref))
    assert tuple(y.shape) == y_ref.shape and tuple(dx.shape) == x.shape


@pytest.mark.parametrize("key", ["numpy", "strict", "strict-device1", "torch"])
def test_tiled_max_pool_numerical_gradients(key, gpu_plan, rng):
    if key == "torch":
        pytest.importorskip("torch", reason="torch not installed (optional)")
    env = make_env(key)
    for kernel, shape in CASES[:2]:
        x = rng.standard_normal(shape)  # distinct values: differentiable everywhere
        y, ctx = F.max_pool2d_forward(env.put(x), kernel)
        assert isinstance(ctx, pool.TiledPool)
        dy = rng.standard_normal(tuple(y.shape))
        dx = env.get(F.max_pool2d_backward(env.put(dy), ctx))
        check_grads(lambda x_: env.get(F.max_pool2d(env.put(x_), kernel)), [x], [dx], dy)


def test_the_path_each_plan_runs(rng):
    """GPU plan: tiled where the windows tile, the loop elsewhere (padding, overlap, ceil-mode overhang, sizes
    not divisible, dilation); CPU plan: NumPy's kernels, and the loop on other namespaces (faster on a CPU)."""
    assert pool.tiles((1, 1, 8, 6), (2, 3), (2, 3), (1, 1), (0, 0, 0, 0), 4, 2)
    assert not pool.tiles((1, 1, 7, 6), (2, 2), (2, 2), (1, 1), (0, 0, 0, 0), 3, 3)  # floor drops a row
    assert not pool.tiles((1, 1, 8, 8), (2, 2), (2, 2), (1, 1), (0, 0, 0, 1), 4, 4)
    assert not pool.tiles((1, 1, 8, 8), (2, 2), (1, 1), (1, 1), (0, 0, 0, 0), 4, 4)
    assert not pool.tiles((1, 1, 8, 8), (2, 2), (2, 2), (2, 1), (0, 0, 0, 0), 4, 4)
    strict = make_env("strict")
    x = rng.standard_normal((2, 3, 8, 8))
    for plan, env, options, tiled in [("gpu", strict, (2,), True), ("gpu", strict, (2, 2, 1), False),
                                      ("gpu", strict, (3, 3, 0, 1, True), False), ("cpu", strict, (2,), False),
                                      ("gpu", make_env("numpy"), (2,), True),
                                      ("cpu", make_env("numpy"), (2,), False)]:
        config.set_plan(plan)
        _, ctx = F.max_pool2d_forward(env.put(x), *options)
        assert isinstance(ctx, pool.TiledPool) == tiled, (plan, env, options)


def test_tiled_layer_with_indices_and_an_empty_batch(gpu_plan, rng):
    """MaxPool2d(return_indices=True) and a batch of 0 samples on the tiled path, on the simulated device."""
    env = make_env("strict-device1")
    layer = env.model(xpcnn.MaxPool2d(2, return_indices=True))[0]
    x = env.ref_input(rng.standard_normal((3, 2, 4, 6)))
    y, idx = layer(env.put(x))
    y_ref, idx_ref = ref.max_pool2d(x, (2, 2), (2, 2), (0, 0))
    np.testing.assert_array_equal(env.get(y), y_ref)
    np.testing.assert_array_equal(env.get(idx, floating=False), idx_ref)
    empty = env.model(xpcnn.MaxPool2d(2))[0]
    y0 = empty(env.put(np.zeros((0, 2, 4, 6))))
    assert tuple(y0.shape) == (0, 2, 2, 3) and isinstance(empty._ctx, pool.TiledPool)
    assert tuple(empty.backward(env.put(np.zeros((0, 2, 2, 3)))).shape) == (0, 2, 4, 6)


def test_constants_are_kept_per_value_dtype_and_device():
    from xpcnn.functional._util import constant
    dev1, cpu = make_env("strict-device1"), make_env("strict")
    a = constant(dev1.xp, ((1, 2),), dev1.dtype, dev1.backend.device)
    assert constant(dev1.xp, ((1, 2),), dev1.dtype, dev1.backend.device) is a
    np.testing.assert_array_equal(dev1.get(a), ((1, 2),))
    others = [constant(dev1.xp, ((1, 3),), dev1.dtype, dev1.backend.device),
              constant(dev1.xp, ((1, 2),), dev1.xp.float32, dev1.backend.device),
              constant(cpu.xp, ((1, 2),), cpu.dtype, cpu.backend.device)]
    assert all(b is not a for b in others) and others[2].device == cpu.backend.device
    calls = []

    class Stub:  # a namespace whose devices cannot be hashed (kept under their str)
        __name__ = "stub"

        @staticmethod
        def asarray(value, dtype, device):
            calls.append(value)
            return object()
    first = constant(Stub, 0, "float32", ["gpu", 0])
    assert constant(Stub, 0, "float32", ["gpu", 0]) is first and calls == [0]


def test_lenet_step_on_the_gpu_plan_within_its_launch_budget():
    """Issue 15's target for LeNet (<= 300 operations a training step on the GPU plan), and the tiled pooling's
    5 + 11 operations a layer (2 layers), counted."""
    pytest.importorskip("array_api_strict")
    from xpcnn.tools import opcount
    r = opcount.count_step("lenet", 2)
    assert r["ops"] <= 300, r["by_section"]
    assert (r["by_section"]["MaxPool2d.forward"], r["by_section"]["MaxPool2d.backward"]) == (10, 22)
