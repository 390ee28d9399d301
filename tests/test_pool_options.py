"""PyTorch's pooling options (ceil_mode, dilation, return_indices, count_include_pad, divisor_override, adaptive
sizes with None, AdaptiveMaxPool2d) against loop references, numerical gradients and torch where installed."""
from __future__ import annotations

import numpy as np
import pytest

import reference_pool as ref
import xpcnn
import xpcnn.functional as F
from conftest import HAVE_TORCH, STRICT, make_env
from gradcheck import assert_close, assert_matches_torch, check_grads
from xpcnn import config

needs_torch = pytest.mark.skipif(not HAVE_TORCH, reason="torch not installed (optional)")

# (kernel, stride, padding, dilation, ceil_mode, (H, W), N)
MAX_CASES = [
    ((3, 3), (2, 2), (1, 1), (1, 1), True, (6, 6), 2),   # ceil: the last window reads past the padding
    ((2, 2), (2, 2), (0, 0), (1, 1), True, (5, 7), 2),   # ceil: a last window of one row / column
    ((2, 2), (2, 2), (1, 1), (1, 1), True, (5, 5), 1),   # ceil: a window starting in the right padding dropped
    ((3, 2), (2, 3), (1, 0), (2, 1), False, (9, 8), 1),  # dilation
    ((2, 3), (3, 2), (1, 1), (2, 2), True, (8, 9), 2),   # dilation and ceil
    ((3, 3), (1, 1), (1, 1), (3, 2), False, (9, 8), 1),  # dilated, overlapping
    ((4, 4), (3, 3), (2, 2), (1, 1), True, (7, 5), 1),   # padding = kernel / 2, ceil drop rule
]
STRICT_MAX = [MAX_CASES[i] for i in (0, 4)]

# (kernel, stride, padding, ceil_mode, count_include_pad, divisor_override, (H, W), N)
AVG_CASES = [
    ((3, 3), (2, 2), (1, 1), True, True, None, (6, 6), 2),   # ceil: divisor clipped to the padded input
    ((3, 3), (2, 2), (1, 1), True, False, None, (6, 6), 2),  # ceil, padding left out of the divisor
    ((3, 3), (3, 3), (1, 1), True, True, None, (6, 6), 1),
    ((2, 3), (2, 2), (1, 1), False, False, None, (5, 6), 2),
    ((2, 2), (2, 2), (1, 1), True, False, 3, (5, 5), 1),     # ceil drop rule, divisor_override
    ((3, 2), (1, 2), (1, 0), False, True, -2, (5, 7), 1),    # a negative divisor, as torch allows
    ((2, 2), (2, 2), (0, 0), True, True, None, (5, 7), 2),
]
STRICT_AVG = [AVG_CASES[i] for i in (1, 4)]


def _ids(cases):
    return ["-".join(str(v).replace(" ", "") for v in c) for c in cases]


def _max(env, case, rng):
    kernel, stride, padding, dilation, ceil_mode, (h, w), n = case
    x = env.ref_input(rng.standard_normal((n, 3, h, w)))
    y, ctx = F.max_pool2d_forward(env.put(x), kernel, stride, padding, dilation, ceil_mode)
    y_ref, idx_ref = ref.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode)
    assert_close(env.get(y), y_ref, env.tol, "max_pool2d forward")
    idx = F.max_pool2d_indices(ctx)
    assert idx.dtype == env.xp.int64
    np.testing.assert_array_equal(env.get(idx, floating=False), idx_ref)
    dy = env.ref_input(rng.standard_normal(y_ref.shape))
    dx = env.get(F.max_pool2d_backward(env.put(dy), ctx))
    assert_close(dx, ref.max_pool2d_backward(dy, x.shape, idx_ref), env.tol, "max_pool2d backward")
    return x, dy, dx


def _avg(env, case, rng):
    kernel, stride, padding, ceil_mode, cip, div, (h, w), n = case
    x = env.ref_input(rng.standard_normal((n, 3, h, w)))
    opts = (ceil_mode, cip, div)
    y, ctx = F.avg_pool2d_forward(env.put(x), kernel, stride, padding, *opts)
    y_ref = ref.avg_pool2d(x, kernel, stride, padding, *opts)
    assert_close(env.get(y), y_ref, env.tol, "avg_pool2d forward")
    dy = env.ref_input(rng.standard_normal(y_ref.shape))
    dx = env.get(F.avg_pool2d_backward(env.put(dy), ctx))
    assert_close(dx, ref.avg_pool2d_backward(dy, x.shape, kernel, stride, padding, *opts), env.tol,
                 "avg_pool2d backward")
    return x, dy, dx


@pytest.mark.parametrize("case", MAX_CASES, ids=_ids(MAX_CASES))
def test_max_pool_options_numpy(case, np_env, rng):
    x, dy, dx = _max(np_env, case, rng)
    kernel, stride, padding, dilation, ceil_mode, *_ = case
    check_grads(lambda x_: F.max_pool2d(x_, kernel, stride, padding, dilation, ceil_mode), [x], [dx], dy)


@pytest.mark.parametrize("key", STRICT)
@pytest.mark.parametrize("case", STRICT_MAX, ids=_ids(STRICT_MAX))
def test_max_pool_options_strict(case, key, rng):
    _max(make_env(key), case, rng)


@pytest.mark.parametrize("case", AVG_CASES, ids=_ids(AVG_CASES))
def test_avg_pool_options_numpy(case, np_env, rng):
    x, dy, dx = _avg(np_env, case, rng)
    kernel, stride, padding, *opts, _, _ = case
    check_grads(lambda x_: F.avg_pool2d(x_, kernel, stride, padding, *opts), [x], [dx], dy)


@pytest.mark.parametrize("key", STRICT)
@pytest.mark.parametrize("case", STRICT_AVG, ids=_ids(STRICT_AVG))
def test_avg_pool_options_strict(case, key, rng):
    _avg(make_env(key), case, rng)


def test_reference_pool_backwards_are_the_gradients_of_their_forwards(rng):
    x = rng.standard_normal((1, 2, 6, 5))
    for kernel, stride, pad, dil, ceil_mode in [((3, 2), (2, 2), (1, 1), (1, 2), True), ((2, 2), (1, 2), (0, 1),
                                                                                          (2, 1), False)]:
        y, idx = ref.max_pool2d(x, kernel, stride, pad, dil, ceil_mode)
        dy = rng.standard_normal(y.shape)
        check_grads(lambda x_: ref.max_pool2d(x_, kernel, stride, pad, dil, ceil_mode)[0], [x],
                    [ref.max_pool2d_backward(dy, x.shape, idx)], dy)
    for opts in [(True, True, None), (True, False, None), (False, False, 5)]:
        y = ref.avg_pool2d(x, (3, 2), (2, 2), (1, 1), *opts)
        dy = rng.standard_normal(y.shape)
        check_grads(lambda x_: ref.avg_pool2d(x_, (3, 2), (2, 2), (1, 1), *opts), [x],
                    [ref.avg_pool2d_backward(dy, x.shape, (3, 2), (2, 2), (1, 1), *opts)], dy)


@needs_torch
@pytest.mark.parametrize("case", MAX_CASES, ids=_ids(MAX_CASES))
def test_max_pool_options_match_torch(case, rng):
    import torch
    kernel, stride, padding, dilation, ceil_mode, (h, w), n = case
    x = rng.standard_normal((n, 3, h, w))
    x[0, 0, 0, :2] = 1.5  # a tie
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    yt, it = torch.nn.functional.max_pool2d(xt, kernel, stride, padding, dilation, ceil_mode, True)
    y, ctx = F.max_pool2d_forward(x, kernel, stride, padding, dilation, ceil_mode)
    assert_close(y, yt.detach().numpy(), 1e-12, "forward")
    np.testing.assert_array_equal(F.max_pool2d_indices(ctx), it.numpy())
    dy = rng.standard_normal(y.shape)
    yt.backward(torch.from_numpy(dy))
    assert_close(F.max_pool2d_backward(dy, ctx), xt.grad.numpy(), 1e-12, "backward")


@needs_torch
@pytest.mark.parametrize("case", AVG_CASES, ids=_ids(AVG_CASES))
def test_avg_pool_options_match_torch(case, rng):
    import torch
    kernel, stride, padding, ceil_mode, cip, div, (h, w), n = case
    x = rng.standard_normal((n, 3, h, w))
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    yt = torch.nn.functional.avg_pool2d(xt, kernel, stride, padding, ceil_mode, cip, div)
    y, ctx = F.avg_pool2d_forward(x, kernel, stride, padding, ceil_mode, cip, div)
    assert_close(y, yt.detach().numpy(), 1e-12, "forward")
    dy = rng.standard_normal(y.shape)
    yt.backward(torch.from_numpy(dy))
    assert_close(F.avg_pool2d_backward(dy, ctx), xt.grad.numpy(), 1e-12, "backward")


@pytest.mark.parametrize("geom", [((3, 3), (2, 2), (1, 1)), ((2, 2), (2, 2), (0, 0)), ((2, 3), (1, 2), (1, 1))])
def test_max_pool_fast_path_matches_portable_in_ceil_mode(geom):
    """The NumPy max-pooling kernels stay the path in ceil mode (the grid just grows): the same bits as the
    portable code, NaN and ties included."""
    k, s, p = geom
    rng = np.random.default_rng(7)
    x = np.round(rng.standard_normal((3, 4, 9, 7)), 1)
    x[1, 2, 8, 6] = np.nan  # in a last (partial) window
    out = []
    for fast in (False, True):
        config.set_fast_paths(fast)
        y, ctx = F.max_pool2d_forward(x, k, s, p, 1, True)
        dy = rng.standard_normal(y.shape) if not out else out[0][2]
        out.append((y, F.max_pool2d_backward(dy, ctx), dy, F.max_pool2d_indices(ctx)))
    for a, b in zip(out[0], out[1]):
        np.testing.assert_array_equal(b, a)


# -- adaptive ---------------------------------------------------------------------------------------------------
ADAPTIVE = [((7, 6), 1), ((7, 6), (2, 3)), ((5, 7), (4, None)), ((5, 6), (7, 8)), ((6, 5), (None, 2)),
            ((4, 4), (None, None))]


def _resolved(hw, out):
    pair = out if isinstance(out, tuple) else (out, out)
    return tuple(s if o is None else o for s, o in zip(hw, pair))


@pytest.mark.parametrize("hw,out", ADAPTIVE, ids=[f"{a}->{b}" for a, b in ADAPTIVE])
def test_adaptive_max_pool_numpy(hw, out, np_env, rng):
    x = rng.standard_normal((1, 2) + hw)
    y, ctx = F.adaptive_max_pool2d_forward(x, out)
    y_ref, idx_ref = ref.adaptive_max_pool2d(x, _resolved(hw, out))
    assert_close(y, y_ref, 1e-12, "forward")
    np.testing.assert_array_equal(F.adaptive_max_pool2d_indices(ctx), idx_ref)
    dy = rng.standard_normal(y.shape)
    dx = F.adaptive_max_pool2d_backward(dy, ctx)
    assert_close(dx, ref.max_pool2d_backward(dy, x.shape, idx_ref), 1e-12, "backward")
    check_grads(lambda x_: F.adaptive_max_pool2d(x_, out), [x], [dx], dy)


@pytest.mark.parametrize("key", STRICT)
def test_adaptive_max_pool_strict(key, rng):
    env = make_env(key)
    x = env.ref_input(rng.standard_normal((2, 3, 5, 7)))
    layer = env.model(xpcnn.AdaptiveMaxPool2d((3, None), return_indices=True))[0]
    y, idx = layer(env.put(x))
    y_ref, idx_ref = ref.adaptive_max_pool2d(x, (3, 7))
    assert_close(env.get(y), y_ref, env.tol, "forward")
    np.testing.assert_array_equal(env.get(idx, floating=False), idx_ref)
    dy = env.ref_input(rng.standard_normal(y_ref.shape))
    assert_close(env.get(layer.backward(env.put(dy))), ref.max_pool2d_backward(dy, x.shape, idx_ref), env.tol,
                 "backward")


@pytest.mark.parametrize("key", ["numpy"] + STRICT)
def test_adaptive_avg_pool_none_keeps_that_size(key, rng):
    env = make_env(key)
    x = env.ref_input(rng.standard_normal((2, 3, 5, 7)))
    model = env.model(xpcnn.AdaptiveAvgPool2d((None, 3)))
    y = model(env.put(x))
    assert tuple(y.shape) == (2, 3, 5, 3)
    expected = np.stack([x[..., a:b].mean(axis=-1) for a, b in [(0, 3), (2, 5), (4, 7)]], axis=-1)  # bins of 7 -> 3
    assert_close(env.get(y), expected, env.tol, "forward")


def test_max_pool_nan_and_ties_like_torch_adaptive_too():
    """The first maximum wins ties; where a bin holds NaNs the last NaN is the index (PyTorch's CPU loop)."""
    x = np.zeros((1, 1, 4, 4))
    x[0, 0, 0, 0] = x[0, 0, 1, 1] = 2.0
    x[0, 0, 2, 2] = x[0, 0, 3, 3] = np.nan
    y, ctx = F.adaptive_max_pool2d_forward(x, 2)
    np.testing.assert_array_equal(F.adaptive_max_pool2d_indices(ctx)[0, 0], [[0, 2], [8, 15]])
    assert np.isnan(y[0, 0, 1, 1]) and y[0, 0, 0, 0] == 2.0
    _, ctx = F.max_pool2d_forward(x, 2, 2, 0, 1, False)
    np.testing.assert_array_equal(F.max_pool2d_indices(ctx)[0, 0], [[0, 2], [8, 15]])


@needs_torch
@pytest.mark.parametrize("hw,out", ADAPTIVE, ids=[f"{a}->{b}" for a, b in ADAPTIVE])
def test_adaptive_pools_match_torch(hw, out, rng):
    import torch
    x = rng.standard_normal((2, 3) + hw)
    x[0, 1, 0, 0] = np.nan
    for max_pool in (True, False):
        xt = torch.from_numpy(x.copy()).requires_grad_(True)
        if max_pool:
            yt, it = torch.nn.AdaptiveMaxPool2d(out, return_indices=True)(xt)
            y, ctx = F.adaptive_max_pool2d_forward(x, out)
            np.testing.assert_array_equal(F.adaptive_max_pool2d_indices(ctx), it.numpy())
        else:
            yt = torch.nn.AdaptiveAvgPool2d(out)(xt)
            y, ctx = F.adaptive_avg_pool2d_forward(x, out)
        np.testing.assert_array_equal(np.isnan(y), np.isnan(yt.detach().numpy()))
        ok = ~np.isnan(y)
        assert_close(y[ok], yt.detach().numpy()[ok], 1e-12, "forward")
        dy = rng.standard_normal(y.shape)
        yt.backward(torch.from_numpy(dy))
        back = (F.adaptive_max_pool2d_backward if max_pool else F.adaptive_avg_pool2d_backward)(dy, ctx)
        assert_close(back, xt.grad.numpy(), 1e-12, "backward")


# -- layers -----------------------------------------------------------------------------------------------------
def test_pool_layers_take_torch_positional_order():
    m = xpcnn.MaxPool2d(3, 2, 1, 2, True, True)
    assert (m.kernel_size, m.stride, m.padding, m.dilation, m.return_indices, m.ceil_mode) == (
        (3, 3), (2, 2), (1, 1), (2, 2), True, True)
    a = xpcnn.AvgPool2d(3, 2, 1, True, False, 4)
    assert (a.ceil_mode, a.count_include_pad, a.divisor_override) == (True, False, 4)
    assert repr(m) == ("MaxPool2d(kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), dilation=(2, 2), "
                       "ceil_mode=True, return_indices=True)")
    assert repr(a) == ("AvgPool2d(kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), ceil_mode=True, "
                       "count_include_pad=False, divisor_override=4)")
    assert repr(xpcnn.MaxPool2d(2)) == "MaxPool2d(kernel_size=(2, 2), stride=(2, 2), padding=(0, 0))"
    assert repr(xpcnn.AdaptiveMaxPool2d((None, 3), True)) == "AdaptiveMaxPool2d(output_size=(None, 3), " \
                                                              "return_indices=True)"
    # defaults passed explicitly are accepted
    xpcnn.MaxPool2d(2, None, 0, 1, False, False)
    xpcnn.AvgPool2d(2, None, 0, False, True, None)


@pytest.mark.parametrize("make,match", [
    (lambda: xpcnn.MaxPool2d(3, padding=2), "at most half"),
    (lambda: xpcnn.MaxPool2d(2, dilation=0), "dilation"),
    (lambda: xpcnn.AvgPool2d(3, divisor_override=0), "divisor_override"),
    (lambda: xpcnn.AdaptiveMaxPool2d(0), "output_size"),
])
def test_pool_layers_reject_bad_options(make, match):
    with pytest.raises(ValueError, match=match):
        make()
    with pytest.raises(TypeError, match="divisor_override"):
        xpcnn.AvgPool2d(2, divisor_override=2.5)
    for bad in ((2, 1.5), None, (1, 2, 3), ()):
        with pytest.raises(TypeError, match="output_size"):
            xpcnn.AdaptiveAvgPool2d(bad)


def test_pool_layer_too_small_input_names_the_dilation():
    model = xpcnn.Sequential(xpcnn.MaxPool2d(3, dilation=3), backend="numpy", dtype="float64")
    with pytest.raises(ValueError, match="dilated"):
        model(np.zeros((1, 1, 6, 6)))


@pytest.mark.parametrize("key", ["numpy"] + STRICT)
def test_max_pool_layer_returns_indices(key, rng):
    env = make_env(key)
    model = env.model(xpcnn.MaxPool2d(3, 2, 1, 1, True, True))
    x = env.ref_input(rng.standard_normal((2, 3, 6, 7)))
    y, idx = model[0](env.put(x))
    y_ref, idx_ref = ref.max_pool2d(x, (3, 3), (2, 2), (1, 1), (1, 1), True)
    assert_close(env.get(y), y_ref, env.tol, "forward")
    np.testing.assert_array_equal(env.get(idx, floating=False), idx_ref)
    dy = env.ref_input(rng.standard_normal(y_ref.shape))
    assert_close(env.get(model[0].backward(env.put(dy))), ref.max_pool2d_backward(dy, x.shape, idx_ref), env.tol,
                 "backward")


def test_relu_before_a_pool_returning_indices_is_not_reordered():
    model = xpcnn.Sequential(xpcnn.ReLU(), xpcnn.MaxPool2d(2, return_indices=True), backend="numpy")
    assert model.run_order() == [0, 1]
    y, idx = model(np.random.default_rng(0).standard_normal((1, 1, 4, 4)).astype(np.float32))
    assert y.shape == idx.shape == (1, 1, 2, 2)


@needs_torch
def test_to_torch_builds_every_pool_option(rng):
    import torch
    from xpcnn.tools.torch_compat import to_torch
    layers = [xpcnn.MaxPool2d(3, 2, 1, 1, False, True), xpcnn.AvgPool2d(3, 2, 1, True, False),
              xpcnn.MaxPool2d(2, 1, 0, 2), xpcnn.AvgPool2d(2, 1, 1, False, True, 3),
              xpcnn.AdaptiveMaxPool2d((None, 3)), xpcnn.AdaptiveAvgPool2d((2, None))]
    model = xpcnn.Sequential(*layers, backend="numpy", dtype="float64")
    net = to_torch(model)
    assert [type(m).__name__ for m in net] == [type(m).__name__ for m in layers]
    assert net[0].ceil_mode and net[1].ceil_mode and not net[1].count_include_pad and net[2].dilation == (2, 2)
    assert net[3].divisor_override == 3 and net[4].output_size == (None, 3)
    assert_matches_torch(model, net, rng.standard_normal((2, 3, 13, 12)), rng, 1e-12)
    indices = to_torch(xpcnn.Sequential(xpcnn.MaxPool2d(2, return_indices=True), backend="numpy"))[0]
    assert indices.return_indices
