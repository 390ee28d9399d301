"""Conv2d (functional im2col/col2im and the layer) against the loop reference and numerical gradients."""
from __future__ import annotations

import math

import array_api_compat.numpy
import numpy as np
import pytest

import reference as ref
import xpcnn
import xpcnn.functional as F
import xpcnn.functional.conv as conv_module
from xpcnn.functional.conv import banded, geometry, planner
from xpcnn.functional.conv import columns as layouts
from conftest import STRICT, make_env
from gradcheck import assert_close, check_grads

KERNELS = [(3, 3), (2, 3), (3, 2), (1, 1)]
SIZES = [(7, 6), (5, 8), (6, 5)]
CHANNELS = {1: (3, 4, 1), 2: (4, 6, 2), "dw": (3, 6, 3)}  # (C, F, groups); "dw": depthwise, multiplier 2


def _grid():
    cases, k = [], 0
    for g in (1, 2, "dw"):
        for dil in (1, 2):
            for stride in (1, 2, 3):
                for pad in (0, 1, 2, "same"):
                    if pad == "same" and stride != 1:
                        continue
                    cases.append((g, KERNELS[k % 4], stride, pad, dil, SIZES[k % 3], (2, 1)[k % 2]))
                    k += 1
    # rectangular strides / paddings / dilations, "valid", kernel as big as the padded input
    cases += [(1, (3, 2), (2, 1), (1, 2), (2, 1), (7, 6), 2),
              (2, (2, 3), (1, 3), (2, 0), (1, 2), (6, 9), 1),
              ("dw", (3, 3), 1, "valid", 1, (5, 5), 2),
              (1, (2, 2), 1, "same", (2, 1), (6, 5), 1),  # even kernel: odd "same" padding, extra bottom/right
              (1, (4, 3), 1, "same", 1, (5, 6), 2),
              (2, (3, 3), 2, 1, 1, (1, 1), 2)]            # 1x1 input, padding makes room for the 3x3 kernel
    return cases


GRID = _grid()


def _ids(case):
    g, k, s, p, d, hw, n = case
    return f"g{g}-k{k[0]}x{k[1]}-s{s}-p{p}-d{d}-{hw[0]}x{hw[1]}-n{n}".replace(" ", "")


def _data(case, rng):
    g, kernel, stride, pad, dil, (h, w), n = case
    c, f, groups = CHANNELS[g]
    x = rng.standard_normal((n, c, h, w))
    wt = rng.standard_normal((f, c // groups) + kernel)
    b = rng.standard_normal(f)
    pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)  # noqa: E731
    pads = ref.pads_of(pad if isinstance(pad, str) else pair(pad), kernel, pair(dil), pair(stride))
    return x, wt, b, groups, pair(stride), pads, pair(dil)


def _check_functional(env, case, rng, bias=True):
    g, kernel, stride, pad, dil, hw, n = case
    x, wt, b, groups, s2, pads, d2 = _data(case, rng)
    x, wt, b = env.ref_input(x), env.ref_input(wt), env.ref_input(b)
    y_ref = ref.conv2d_forward(x, wt, b if bias else None, s2, pads, d2, groups)
    dy = env.ref_input(rng.standard_normal(y_ref.shape))
    dx_ref, dw_ref, db_ref = ref.conv2d_backward(dy, x, wt, s2, pads, d2, groups)

    y, ctx = F.conv2d_forward(env.put(x), env.put(wt), env.put(b) if bias else None, stride, pad, dil, groups)
    assert_close(env.get(y), y_ref, env.tol, "conv2d forward")
    dx, dw, db = F.conv2d_backward(env.put(dy), ctx)
    assert_close(env.get(dx), dx_ref, env.tol, "conv2d dx")
    assert_close(env.get(dw), dw_ref, env.tol, "conv2d dweight")
    if bias:
        assert_close(env.get(db), db_ref, env.tol, "conv2d dbias")
    else:
        assert db is None


@pytest.mark.parametrize("case", GRID, ids=_ids)
def test_conv2d_matches_loop_reference_numpy(case, np_env, rng):
    """Full grid in float64 on NumPy: stride 1-3, padding 0-2/same/valid, dilation 1-2, groups 1/2/depthwise."""
    _check_functional(np_env, case, rng, bias=GRID.index(case) % 5 != 0)


STRICT_CASES = [GRID[i] for i in (1, 9, 23, 41, 55)] + GRID[-6:-3]


@pytest.mark.parametrize("key", STRICT)
@pytest.mark.parametrize("case", STRICT_CASES, ids=_ids)
def test_conv2d_matches_loop_reference_strict(case, key, rng):
    _check_functional(make_env(key), case, rng)


# Paths forced on the grid: channels-innermost columns with col2im (groups 1), and the input gradient as a
# transposed convolution (stride 1, groups 1, padding within the dilated kernel), also after ow-innermost columns.
def _transposable(case):
    """Stride 1, groups 1 and no side padded beyond the dilated kernel: the transposed gradient applies."""
    pads, dil = _data(case, np.random.default_rng(0))[5:]
    return case[0] == 1 and case[2] == 1 and geometry.transposed_pads(pads, case[1], dil) is not None


FORCED = {"im2col": [c for c in GRID if c[2] == 1][::2],  # col2im at stride 1 (auto: "banded" for groups 1)
          "im2col_nhwc": [c for c in GRID if c[0] == 1],
          "im2col_blocked": [c for c in GRID if c[0] == 1],
          "transposed": [c for c in GRID if _transposable(c)],
          "polyphase": [c for c in GRID if c[0] == 1],
          "banded": [c for c in GRID if c[0] == 1 and c[2] == 1]}
FORCED_CASES = [(algo, c) for algo, cases in FORCED.items() for c in cases]


@pytest.fixture
def conv_algorithm(request):
    xpcnn.config.set_conv_algorithm(request.param)
    return request.param


def _took(algo, case, rng):
    """The path ``algo`` names is the one a convolution of ``case`` takes."""
    x, wt, b, groups, *_ = _data(case, rng)
    ctx = F.conv2d_forward(x, wt, b, case[2], case[3], case[4], groups)[1]
    backward = algo in ("transposed", "polyphase", "banded")
    return (conv_module.backward_algorithm(ctx) if backward else ctx.algorithm) == algo


@pytest.mark.parametrize("conv_algorithm, case", FORCED_CASES, indirect=["conv_algorithm"],
                         ids=[f"{a}-{_ids(c)}" for a, c in FORCED_CASES])
def test_conv2d_forced_path_matches_loop_reference_numpy(conv_algorithm, case, np_env, rng):
    """Channels-innermost columns and the transposed-convolution input gradient in float64: strides, padding
    0-2/same/valid, dilation 1-2, even/odd kernels."""
    _check_functional(np_env, case, rng, bias=FORCED[conv_algorithm].index(case) % 2 == 0)
    assert _took(conv_algorithm, case, rng)


STRICT_FORCED = [(a, c) for a, cases in FORCED.items() for c in cases[::4]]


@pytest.mark.parametrize("key", STRICT)
@pytest.mark.parametrize("conv_algorithm, case", STRICT_FORCED, indirect=["conv_algorithm"],
                         ids=[f"{a}-{_ids(c)}" for a, c in STRICT_FORCED])
def test_conv2d_forced_path_matches_loop_reference_strict(conv_algorithm, case, key, rng):
    _check_functional(make_env(key), case, rng)


def test_conv2d_auto_takes_each_path_where_measured_faster(rng):
    """auto: channels-innermost columns for groups 1 and >= 16 channels, else ow-innermost; the input gradient
    as a transposed convolution after channels-innermost columns at stride 1, else col2im."""
    def paths(xs, ws, stride=1, groups=1):
        y, ctx = F.conv2d_forward(rng.standard_normal(xs), rng.standard_normal(ws), None, stride, 1, 1, groups)
        return ctx.algorithm, conv_module.backward_algorithm(ctx)
    assert paths((1, 32, 32, 32), (8, 32, 3, 3)) == ("im2col_nhwc", "transposed")
    assert paths((1, 16, 16, 16), (8, 16, 3, 3)) == ("im2col_nhwc", "transposed")
    assert paths((1, 8, 32, 32), (32, 8, 3, 3)) == ("im2col", "banded")             # few channels, stride 1
    assert paths((1, 8, 32, 32), (32, 8, 3, 3), stride=2) == ("im2col", "im2col")
    # few channels and filters: width-blocked columns (B = 4 outputs of 8 filters per row here)
    assert paths((1, 8, 32, 32), (8, 8, 3, 3)) == ("im2col_blocked", "banded")
    assert paths((1, 8, 32, 32), (8, 8, 3, 3), stride=2) == ("im2col_blocked", "im2col")
    assert paths((1, 8, 31, 31), (8, 8, 3, 3)) == ("im2col", "banded")              # ow = 31: no block divides it
    for xs, ws, pad, block in [((1, 1, 28, 28), (6, 1, 5, 5), 2, 4), ((1, 6, 14, 14), (16, 6, 5, 5), 0, 2)]:
        ctx = F.conv2d_forward(rng.standard_normal(xs), rng.standard_normal(ws), None, 1, pad)[1]
        assert (ctx.algorithm, ctx.block) == ("im2col_blocked", block)  # LeNet's convs: B*F >= 24
    assert paths((1, 32, 32, 32), (8, 32, 3, 3), stride=2) == ("im2col_nhwc", "polyphase")  # strided: by phases
    assert paths((1, 32, 32, 32), (64, 32, 3, 3), stride=2) == ("im2col_nhwc", "im2col_nhwc")  # F > C: col2im
    assert paths((1, 32, 32, 32), (8, 32, 1, 1), stride=2) == ("im2col_nhwc", "im2col_nhwc")  # no overlap: col2im
    assert paths((1, 32, 32, 32), (8, 16, 3, 3), groups=2) == ("im2col", "im2col")
    xpcnn.config.set_conv_algorithm("im2col")
    assert paths((1, 32, 32, 32), (8, 32, 3, 3)) == ("im2col", "im2col")
    xpcnn.config.set_conv_algorithm("polyphase")  # forced at stride 1 too, where auto would transpose
    assert paths((1, 32, 32, 32), (8, 32, 3, 3)) == ("im2col_nhwc", "polyphase")
    with pytest.raises(ValueError):
        xpcnn.config.set_conv_algorithm("winograd")


@pytest.mark.parametrize("case", GRID[::6] + GRID[-6:], ids=_ids)
def test_conv2d_backward_matches_numerical_gradient(case, rng):
    g, kernel, stride, pad, dil, hw, n = case
    x, wt, b, groups, *_ = _data(case, rng)
    y, ctx = F.conv2d_forward(x, wt, b, stride, pad, dil, groups)
    dy = rng.standard_normal(y.shape)
    dx, dw, db = F.conv2d_backward(dy, ctx)
    check_grads(lambda x_, w_, b_: F.conv2d(x_, w_, b_, stride, pad, dil, groups), [x, wt, b], [dx, dw, db], dy,
                names=["x", "weight", "bias"])


@pytest.mark.parametrize("case", [GRID[3], GRID[-5], GRID[-3]], ids=_ids)
def test_reference_conv_backward_is_the_gradient_of_its_forward(case, rng):
    """The loop reference checks itself: its backward is the numerical gradient of its forward."""
    x, wt, b, groups, s2, pads, d2 = _data(case, rng)
    x = np.ascontiguousarray(x[:1, :, :5, :5])  # smaller: the reference forward is slow
    y = ref.conv2d_forward(x, wt, b, s2, pads, d2, groups)
    dy = rng.standard_normal(y.shape)
    dx, dw, db = ref.conv2d_backward(dy, x, wt, s2, pads, d2, groups)
    check_grads(lambda x_, w_, b_: ref.conv2d_forward(x_, w_, b_, s2, pads, d2, groups), [x, wt, b],
                [dx, dw, db], dy, names=["x", "weight", "bias"])


def test_im2col_col2im_are_adjoint(rng):
    """<im2col(x), c> == <x, col2im(c)>: col2im sums overlaps exactly (strided, dilated, overlapping)."""
    x = rng.standard_normal((2, 3, 8, 7))
    col = F.im2col(x, 3, 2, (2, 1), (2, 3), 2, 4)
    c = rng.standard_normal(col.shape)
    lhs = float(np.sum(col * c))
    rhs = float(np.sum(x * F.col2im(c, x.shape, (2, 1), (2, 3))))
    assert abs(lhs - rhs) <= 1e-12 * abs(lhs) + 1e-12


# -- the layer ------------------------------------------------------------------------------------------
LAYER_CASES = [
    dict(in_channels=3, out_channels=4, kernel_size=3, padding="same"),
    dict(in_channels=4, out_channels=4, kernel_size=(3, 2), stride=(2, 1), padding=(1, 2), dilation=(1, 2),
         groups=4),
    dict(in_channels=4, out_channels=6, kernel_size=(2, 3), stride=3, padding=2, groups=2, bias=False),
]


@pytest.mark.parametrize("kw", LAYER_CASES, ids=["same", "depthwise-rect", "grouped-nobias"])
def test_conv2d_layer_forward_backward(kw, env, rng):
    model = env.model(xpcnn.Conv2d(**kw), seed=3)
    layer = model[0]
    x = env.ref_input(rng.standard_normal((2, kw["in_channels"], 7, 6)))
    w = env.get(layer.weight.data)
    b = env.get(layer.bias.data) if kw.get("bias", True) else None
    groups = kw.get("groups", 1)
    pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)  # noqa: E731
    k2, s2, d2 = pair(kw["kernel_size"]), pair(kw.get("stride", 1)), pair(kw.get("dilation", 1))
    pad = kw.get("padding", 0)
    pads = ref.pads_of(pad if isinstance(pad, str) else pair(pad), k2, d2, s2)

    y = model.forward(x)  # NumPy input is moved by the model
    y_ref = ref.conv2d_forward(x, w, b, s2, pads, d2, groups)
    assert_close(env.get(y), y_ref, env.tol, "Conv2d forward")
    if pad == "same":
        assert tuple(y.shape) == (2, kw["out_channels"], 7, 6)
    dy = env.ref_input(rng.standard_normal(y_ref.shape))
    dx = model.backward(env.put(dy))
    dx_ref, dw_ref, db_ref = ref.conv2d_backward(dy, x, w, s2, pads, d2, groups)
    assert_close(env.get(dx), dx_ref, env.tol, "Conv2d dx")
    assert_close(env.get(layer.weight.grad), dw_ref, env.tol, "Conv2d weight.grad")
    if b is not None:
        assert_close(env.get(layer.bias.grad), db_ref, env.tol, "Conv2d bias.grad")
    # a second backward accumulates into .grad; zero_grad clears it
    model.forward(x)
    model.backward(env.put(dy))
    assert_close(env.get(layer.weight.grad), 2 * dw_ref, env.tol, "accumulated weight.grad")
    model.zero_grad()
    assert np.all(env.get(layer.weight.grad) == 0)


def test_conv2d_layer_parameters_and_init():
    """PyTorch shapes; Kaiming-uniform (a=sqrt(5)) bounds 1/sqrt(fan_in) for weight and bias."""
    model = xpcnn.Sequential(xpcnn.Conv2d(6, 8, (3, 5), groups=2), backend="numpy", dtype="float64", seed=0)
    sd = model.state_dict()
    assert list(sd) == ["0.weight", "0.bias"]
    assert sd["0.weight"].shape == (8, 3, 3, 5) and sd["0.bias"].shape == (8,)
    bound = 1 / math.sqrt(3 * 3 * 5)
    for k in sd:
        a = xpcnn.to_numpy(sd[k])
        assert np.all(np.abs(a) <= bound)
        assert np.abs(a).max() > 0.8 * bound  # actually uses the range (not a too-small bound)
    big = xpcnn.Sequential(xpcnn.Conv2d(4, 64, 3), backend="numpy", dtype="float64", seed=1)
    w = xpcnn.to_numpy(big[0].weight.data)
    assert abs(w.std() - (1 / math.sqrt(36)) / math.sqrt(3)) < 0.01  # U(-b, b) has std b/sqrt(3)


def test_conv2d_layer_gradients_through_model_numerical(rng):
    model = xpcnn.Sequential(xpcnn.Conv2d(2, 3, (2, 3), stride=(1, 2), padding=1, dilation=(2, 1)),
                             backend="numpy", dtype="float64", seed=5)
    layer = model[0]
    x = rng.standard_normal((1, 2, 5, 6))
    y = model.forward(x)
    dy = rng.standard_normal(y.shape)
    dx = model.backward(dy)
    check_grads(lambda x_, w_, b_: model.forward(x_), [x, layer.weight.data, layer.bias.data],
                [dx, layer.weight.grad.copy(), layer.bias.grad.copy()], dy, names=["x", "weight", "bias"])


@pytest.mark.parametrize("c, f, kernel, pad, dil", [
    (2, 16, (3, 3), 1, 1),
    (2, 16, (3, 2), (2, 1), 2),   # dilated, asymmetric kernel and padding
    (3, 4, (3, 3), 1, 1),
    (1, 3, (5, 5), 2, 1),
    (2, 3, (2, 3), (0, 2), (2, 1)),
    (2, 3, (2, 2), (3, 3), 1),    # padding wider than the kernel
    (2, 3, (2, 2), 0, 5),         # dilated beyond the output: input rows and columns no window reaches
    (2, 3, (3, 2), 1, 3),         # the kernel row written first (covering most input rows) is not the first
])
@pytest.mark.parametrize("count, sub", [(1, None), (3, 2), (8, 1), (None, None)])
def test_banded_input_gradient_matches_loop_reference(c, f, kernel, pad, dil, count, sub, rng, monkeypatch):
    """The banded input gradient (few channels, stride 1) in float64 against the loop reference: the width in one
    block, in three, in one block per input column, or as many as its cost model picks; in sub-chunks of one
    sample, of two (the last one partial) and of the whole batch of five. Uninitialised memory is NaN here, so
    any value the gradient fails to write shows."""
    empty = array_api_compat.numpy.empty
    monkeypatch.setattr(array_api_compat.numpy, "empty", lambda *a, **k: array_api_compat.numpy.full_like(
        empty(*a, **k), math.nan))
    if count is not None:
        monkeypatch.setattr(planner, "band_count", lambda *args: count)
    if sub is not None:
        bands = banded.bands
        monkeypatch.setattr(banded, "bands", lambda *args: (bands(*args)[0], sub))
    x, wt = rng.standard_normal((5, c, 7, 8)), rng.standard_normal((f, c) + kernel)
    y, ctx = F.conv2d_forward(x, wt, None, 1, pad, dil)
    assert conv_module.backward_algorithm(ctx) == "banded"
    pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)  # noqa: E731
    pads = ref.pads_of(pair(pad), kernel, pair(dil), (1, 1))
    dy = rng.standard_normal(y.shape)
    dx_ref, dw_ref, _ = ref.conv2d_backward(dy, x, wt, (1, 1), pads, pair(dil), 1)
    dx, dw, _ = F.conv2d_backward(dy, ctx)
    assert_close(dx, dx_ref, 1e-10, "banded dx")
    assert_close(dw, dw_ref, 1e-10, "dweight")


def test_band_count_trades_gemm_work_for_fewer_adds():
    """The cost model's block count: one block per row where the image is narrow, more (narrower blocks, less
    work on the band's zeros) as the width and the filters grow (the counts measured fastest here: LeNet conv2
    2-3, vgg-small conv1 8)."""
    lenet2 = planner.band_count(128, 6, 14, 16, 5, 5, 10, 10, 0, 1)
    vgg1 = planner.band_count(128, 3, 32, 32, 3, 3, 32, 32, 1, 1)
    assert lenet2 in (2, 3) and vgg1 in (6, 7, 8, 9, 10)
    assert planner.band_count(16, 6, 4, 16, 3, 3, 4, 4, 1, 1) <= 2
    blocks = geometry.band_blocks(14, 10, 5, 0, 1, 3)
    assert [b[:2] for b in blocks] == [(0, 5), (5, 9), (9, 14)]  # near-equal widths covering the input
    assert [b[2:] for b in blocks] == [(0, 5), (1, 9), (5, 10)]  # the output columns whose windows reach them


@pytest.mark.parametrize("a, b, size", [(0, 128, 58), (64, 128, 58), (0, 5, 2), (0, 1, 3), (3, 10, 1), (0, 7, 7)])
def test_batch_chunks_cover_the_range_in_even_runs(a, b, size):
    """Chunks of a batch shard: contiguous, covering ``[a, b)``, none longer than ``size``, as few as that allows,
    lengths differing by at most one (no short tail chunk)."""
    runs = list(layouts.chunks(a, b, size))
    assert runs[0][0] == a and runs[-1][1] == b
    assert all(prev[1] == nxt[0] for prev, nxt in zip(runs, runs[1:]))
    lengths = [e - s for s, e in runs]
    assert max(lengths) <= size and max(lengths) - min(lengths) <= 1
    assert len(runs) == math.ceil((b - a) / size)


@pytest.mark.parametrize("channels_last", [True, False])
def test_pointwise_conv_uses_the_input_rows_as_columns(channels_last, rng):
    """A 1x1 convolution at stride 1 without padding (>= 16 channels: channels-innermost columns) takes the rows of
    the channels-last input as its columns, without a copy; forward and backward match the loop reference (a
    user's NCHW array works too: the rows are then a copy)."""
    x, wt, b = rng.standard_normal((3, 16, 5, 4)), rng.standard_normal((8, 16, 1, 1)), rng.standard_normal(8)
    if channels_last:
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    y, ctx = F.conv2d_forward(x, wt, b)
    assert ctx.algorithm == "im2col_nhwc"
    columns = layouts.column_builder(np, x, wt.shape, ctx.algorithm, ctx.pads, ctx.stride, ctx.dilation, 1, 5, 4,
                                   ctx.nb)(0, 3)
    assert columns.shape == (3 * 5 * 4, 16) and np.shares_memory(columns, x) == channels_last
    dy = rng.standard_normal(y.shape)
    zero = (0, 0, 0, 0)
    assert_close(y, ref.conv2d_forward(x, wt, b, (1, 1), zero, (1, 1), 1), 1e-12, "y")
    for got, want, name in zip(F.conv2d_backward(dy, ctx), ref.conv2d_backward(dy, x, wt, (1, 1), zero, (1, 1), 1),
                               ("dx", "dweight", "dbias")):
        assert_close(got, want, 1e-10, name)
