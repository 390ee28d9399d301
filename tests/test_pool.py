"""Max, average and adaptive average pooling against the loop references and numerical gradients."""
from __future__ import annotations

import numpy as np
import pytest

import reference as ref
import xpcnn
import xpcnn.functional as F
from conftest import STRICT, make_env
from gradcheck import assert_close, check_grads

# (kernel, stride, padding, (H, W), N): non-overlapping, overlapping, rectangular, sizes that don't divide
POOL_CASES = [
    ((2, 2), None, (0, 0), (7, 6), 2),
    ((3, 3), (2, 2), (1, 1), (7, 6), 1),   # overlapping windows, padding
    ((3, 2), (1, 2), (1, 0), (5, 7), 2),   # rectangular, overlapping in H
    ((2, 3), (1, 1), (1, 1), (6, 5), 1),   # stride 1: heavy overlap
    ((3, 3), (3, 3), (0, 0), (8, 7), 2),   # 8 and 7 not divisible by 3: trailing rows/cols dropped
    ((1, 1), (2, 3), (0, 0), (5, 7), 1),
    ((4, 2), (2, 1), (2, 1), (5, 4), 2),
]
STRICT_POOL = [POOL_CASES[i] for i in (1, 2, 4)]


def _pid(case):
    k, s, p, hw, n = case
    return f"k{k}-s{s}-p{p}-{hw}-n{n}".replace(" ", "")


def _run_pool(env, kind, case, rng):
    kernel, stride, padding, (h, w), n = case
    x = env.ref_input(rng.standard_normal((n, 3, h, w)))
    fwd = getattr(F, f"{kind}_pool2d_forward")
    bwd = getattr(F, f"{kind}_pool2d_backward")
    y, ctx = fwd(env.put(x), kernel, stride, padding)
    if kind == "max":
        y_ref = ref.max_pool2d_forward(x, kernel, stride, padding)[0]
    else:
        y_ref = ref.avg_pool2d_forward(x, kernel, stride, padding)
    assert_close(env.get(y), y_ref, env.tol, f"{kind}_pool2d forward")
    dy = env.ref_input(rng.standard_normal(y_ref.shape))
    dx = bwd(env.put(dy), ctx)
    if kind == "max":
        dx_ref = ref.max_pool2d_backward(dy, x, kernel, stride, padding)
    else:
        dx_ref = ref.avg_pool2d_backward(dy, x.shape, kernel, stride, padding)
    assert_close(env.get(dx), dx_ref, env.tol, f"{kind}_pool2d backward")
    return x, dy, dx


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("case", POOL_CASES, ids=_pid)
def test_pool_matches_loop_reference_numpy(kind, case, np_env, rng):
    x, dy, dx = _run_pool(np_env, kind, case, rng)
    kernel, stride, padding, *_ = case
    fwd = getattr(F, f"{kind}_pool2d")
    check_grads(lambda x_: fwd(x_, kernel, stride, padding), [x], [np.asarray(dx)], dy, names=["x"])


@pytest.mark.parametrize("key", STRICT)
@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("case", STRICT_POOL, ids=_pid)
def test_pool_matches_loop_reference_strict(kind, case, key, rng):
    _run_pool(make_env(key), kind, case, rng)


def test_reference_pool_backward_is_the_gradient_of_its_forward(rng):
    x = rng.standard_normal((1, 2, 5, 4))
    for kernel, stride, pad in [((3, 2), (1, 2), (1, 1)), ((2, 2), (1, 1), (0, 0))]:
        y = ref.max_pool2d_forward(x, kernel, stride, pad)[0]
        dy = rng.standard_normal(y.shape)
        check_grads(lambda x_: ref.max_pool2d_forward(x_, kernel, stride, pad)[0], [x],
                    [ref.max_pool2d_backward(dy, x, kernel, stride, pad)], dy)
        check_grads(lambda x_: ref.avg_pool2d_forward(x_, kernel, stride, pad), [x],
                    [ref.avg_pool2d_backward(dy, x.shape, kernel, stride, pad)], dy)


def test_max_pool_ties_go_to_the_first_maximum_and_overlaps_accumulate(env):
    # Every 2x2 window (stride 1) of this 3x4 input holds ties; the row-major first maximum takes the gradient.
    x = np.array([[1., 1., 2., 2.],
                  [1., 1., 2., 2.],
                  [0., 0., 0., 0.]])[None, None]
    y, ctx = F.max_pool2d_forward(env.put(x), 2, 1)
    assert_close(env.get(y), [[[[1, 2, 2], [1, 2, 2]]]], env.tol, "forward")
    dy = np.array([[1., 10., 100.], [1000., 10000., 100000.]])[None, None]
    dx = env.get(F.max_pool2d_backward(env.put(dy), ctx))
    expected = np.zeros((3, 4))
    expected[0, 0] = 1            # window (0,0): first max at (0,0)
    expected[0, 2] = 10 + 100     # windows (0,1) and (0,2) both route to (0,2): accumulated
    expected[1, 0] = 1000         # window (1,0): (1,0) and (1,1) tie at 1 -> (1,0)
    expected[1, 2] = 10000 + 100000
    assert_close(dx[0, 0], expected, env.tol, "max-pool tie routing")
    assert_close(dx[0, 0], ref.max_pool2d_backward(dy, x, (2, 2), (1, 1))[0, 0], env.tol, "vs reference")

    # one big value shared by four overlapping windows collects all four gradients
    x2 = np.zeros((1, 1, 3, 3))
    x2[0, 0, 1, 1] = 5
    _, ctx = F.max_pool2d_forward(env.put(x2), 2, 1)
    dx2 = env.get(F.max_pool2d_backward(env.put(np.ones((1, 1, 2, 2)) * [[1, 2], [3, 4]]), ctx))
    assert dx2[0, 0, 1, 1] == 10 and dx2.sum() == 10


def test_max_pool_padding_never_wins(env):
    x = env.ref_input(-1e30 * np.ones((1, 1, 3, 3)) if env.dtype_name == "float32" else -1e300 * np.ones((1, 1, 3, 3)))
    y, ctx = F.max_pool2d_forward(env.put(x), 3, 2, 1)
    assert np.all(env.get(y) == x[0, 0, 0, 0])
    dx = env.get(F.max_pool2d_backward(env.put(np.ones(tuple(y.shape))), ctx))
    assert dx.sum() == np.prod(y.shape)  # every gradient lands inside the input


def test_max_pool_propagates_nan(env):
    """A NaN in a window must show in the output (as PyTorch), not be hidden by a larger value."""
    x = np.array([[1.0, np.nan, 0.0, 0.0], [3.0, 4.0, 0.0, 5.0]])[None, None]
    y, ctx = F.max_pool2d_forward(env.put(x), 2)
    y = env.get(y)
    assert np.isnan(y[0, 0, 0, 0]) and y[0, 0, 0, 1] == 5.0
    dx = env.get(F.max_pool2d_backward(env.put(np.array([[[[2.0, 3.0]]]])), ctx))
    np.testing.assert_array_equal(dx[0, 0], [[0, 2, 0, 0], [0, 0, 0, 3]])  # the NaN took the gradient


# -- adaptive -------------------------------------------------------------------------------------------
ADAPTIVE = [((7, 6), (1, 1)), ((7, 6), (2, 3)), ((5, 7), (4, 4)), ((5, 6), (7, 8)), ((6, 6), (3, 3))]


@pytest.mark.parametrize("hw,out", ADAPTIVE, ids=[f"{a}->{b}" for a, b in ADAPTIVE])
def test_adaptive_avg_pool_numpy(hw, out, np_env, rng):
    x = rng.standard_normal((2, 3) + hw)
    y, ctx = F.adaptive_avg_pool2d_forward(x, out)
    assert_close(y, ref.adaptive_avg_pool2d_forward(x, out), 1e-7, "adaptive forward")
    dy = rng.standard_normal(y.shape)
    dx = F.adaptive_avg_pool2d_backward(dy, ctx)
    assert_close(dx, ref.adaptive_avg_pool2d_backward(dy, x.shape), 1e-7, "adaptive backward")
    check_grads(lambda x_: F.adaptive_avg_pool2d(x_, out), [x], [dx], dy)


@pytest.mark.parametrize("hw,out", [ADAPTIVE[0], ADAPTIVE[2]], ids=["global", "overlapping"])
def test_adaptive_avg_pool_layers(hw, out, env, rng):
    layer = xpcnn.GlobalAvgPool2d() if out == (1, 1) else xpcnn.AdaptiveAvgPool2d(out)
    model = env.model(layer)
    x = env.ref_input(rng.standard_normal((2, 3) + hw))
    y = model.forward(env.put(x))
    assert_close(env.get(y), ref.adaptive_avg_pool2d_forward(x, out), env.tol, "forward")
    dy = env.ref_input(rng.standard_normal(y.shape))
    dx = model.backward(env.put(dy))
    assert_close(env.get(dx), ref.adaptive_avg_pool2d_backward(dy, x.shape), env.tol, "backward")


@pytest.mark.parametrize("cls", [xpcnn.MaxPool2d, xpcnn.AvgPool2d])
def test_pool_layers(cls, env, rng):
    model = env.model(cls(3, stride=2, padding=1), cls((2, 1)))
    x = env.ref_input(rng.standard_normal((2, 3, 7, 6)))
    y = model.forward(env.put(x))
    r = ref.max_pool2d_forward if cls is xpcnn.MaxPool2d else ref.avg_pool2d_forward
    y1 = r(x, (3, 3), (2, 2), (1, 1))
    y1 = y1[0] if isinstance(y1, tuple) else y1
    y2 = r(y1, (2, 1), (2, 1), (0, 0))
    y2 = y2[0] if isinstance(y2, tuple) else y2
    assert tuple(y.shape) == (2, 3, 2, 3)
    assert_close(env.get(y), y2, env.tol, f"{cls.__name__} forward")
    dy = env.ref_input(rng.standard_normal(y2.shape))
    dx = env.get(model.backward(env.put(dy)))
    if cls is xpcnn.MaxPool2d:
        d1 = ref.max_pool2d_backward(dy, y1, (2, 1), (2, 1))
        dx_ref = ref.max_pool2d_backward(d1, x, (3, 3), (2, 2), (1, 1))
    else:
        d1 = ref.avg_pool2d_backward(dy, y1.shape, (2, 1), (2, 1))
        dx_ref = ref.avg_pool2d_backward(d1, x.shape, (3, 3), (2, 2), (1, 1))
    assert_close(dx, dx_ref, env.tol, f"{cls.__name__} backward")
