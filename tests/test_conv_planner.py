"""The convolution planner (xpcnn/functional/conv/planner.py): which path it picks for representative shapes,
settings and devices, every pair of settings working, and settings read there alone."""
from __future__ import annotations

import functools
import itertools
import re
from pathlib import Path

import numpy as np
import pytest

import reference as ref
import xpcnn
from gradcheck import assert_close
from xpcnn import config
from xpcnn.errors import InputValueError
from xpcnn.functional.conv import backward_algorithm, conv2d_backward, conv2d_backward_params, conv2d_forward
from xpcnn.functional.conv import planner

LAYOUTS = config.CONV_LAYOUTS
INPUT_GRADS = config.CONV_INPUT_GRADS


def _paths(xs, ws, stride=1, padding=1, groups=1, **settings):
    """(layout, width block, input-gradient name, plain path?) that a convolution takes under ``settings``."""
    rng = np.random.default_rng(0)
    with xpcnn.using(**settings):
        ctx = conv2d_forward(rng.standard_normal(xs), rng.standard_normal(ws), None, stride, padding, 1, groups)[1]
        return ctx.algorithm, ctx.block, backward_algorithm(ctx), ctx.wk is None


@pytest.mark.parametrize("xs, ws, stride, groups, plan, expected", [
    # CPU plan ("auto"): by channels, filters, stride and groups
    ((2, 32, 16, 16), (32, 32, 3, 3), 1, 1, "cpu", ("im2col_nhwc", 1, "transposed", False)),   # vgg-small conv2
    ((2, 32, 16, 16), (32, 32, 3, 3), 2, 1, "cpu", ("im2col_nhwc", 1, "polyphase", False)),    # strided, F <= C
    ((2, 16, 16, 16), (32, 16, 3, 3), 2, 1, "cpu", ("im2col_nhwc", 1, "im2col_nhwc", False)),  # F > C: col2im
    ((2, 3, 32, 32), (32, 3, 3, 3), 1, 1, "cpu", ("im2col", 1, "banded", False)),              # vgg-small conv1
    ((2, 1, 28, 28), (6, 1, 5, 5), 1, 1, "cpu", ("im2col_blocked", 4, "banded", False)),      # LeNet conv1
    ((2, 6, 14, 14), (16, 6, 5, 5), 1, 1, "cpu", ("im2col_blocked", 2, "banded", False)),     # LeNet conv2
    ((2, 1, 26, 26), (6, 1, 5, 5), 1, 1, "cpu", ("im2col", 1, "banded", False)),    # ow = 24 + 2: no B*F >= 24
    ((2, 3, 32, 32), (32, 3, 3, 3), 2, 1, "cpu", ("im2col", 1, "im2col", False)),              # few channels, strided
    ((2, 32, 8, 8), (32, 16, 3, 3), 1, 2, "cpu", ("im2col", 1, "im2col", False)),              # grouped
    # GPU plan: the plain convolution (tensordot), transposed at stride 1, else col2im
    ((2, 3, 32, 32), (32, 3, 3, 3), 1, 1, "gpu", ("im2col_nhwc", 1, "transposed", True)),
    ((2, 32, 16, 16), (32, 32, 3, 3), 2, 1, "gpu", ("im2col_nhwc", 1, "im2col_nhwc", True)),
    ((2, 32, 8, 8), (32, 16, 3, 3), 1, 2, "gpu", ("im2col", 1, "im2col", False)),
])
def test_auto_picks_the_path_of_the_decision_table(xs, ws, stride, groups, plan, expected):
    padding = {5: (2 if xs[2] == 28 else 0)}.get(ws[2], 1)  # LeNet's paddings for its 5x5 kernels
    assert _paths(xs, ws, stride, padding, groups=groups, plan=plan) == expected


def test_a_forced_setting_turns_the_plain_path_off_and_the_other_follows_the_cpu_rules():
    few, many = ((2, 3, 32, 32), (32, 3, 3, 3)), ((2, 32, 16, 16), (32, 32, 3, 3))
    assert _paths(*few, plan="gpu", conv_input_grad="col2im") == ("im2col", 1, "im2col", False)
    assert _paths(*few, plan="gpu", conv_layout="im2col_nhwc") == ("im2col_nhwc", 1, "transposed", False)
    assert _paths(*many, stride=2, plan="gpu", conv_layout="im2col_nhwc") == ("im2col_nhwc", 1, "polyphase", False)
    assert _paths(*many, plan="gpu", conv_input_grad="banded") == ("im2col_nhwc", 1, "banded", False)


@pytest.mark.parametrize("xs, ws, stride, padding, expected", [
    ((2, 16, 8, 8), (16, 16, 3, 3), 1, 1, "transposed"),
    ((2, 16, 8, 8), (16, 16, 3, 3), 2, 1, "polyphase"),   # forced polyphase, forced transposed: no stride 1
    ((2, 16, 6, 6), (8, 16, 2, 2), 1, 3, "polyphase"),    # padding beyond the kernel: transposed does not apply
])
def test_forced_input_gradients_apply_where_they_can_else_col2im(xs, ws, stride, padding, expected):
    for forced in ("transposed", "polyphase", "banded"):
        name = _paths(xs, ws, stride, padding, conv_input_grad=forced, plan="cpu")[2]
        applies = forced == expected or (forced == "banded" and stride == 1) or (
            forced == "polyphase" and expected == "transposed")
        assert name == (forced if applies else "im2col_nhwc"), (forced, name)
    with pytest.raises(InputValueError):
        with xpcnn.using(conv_input_grad="winograd"):
            pass


CASES = [  # x shape, w shape, stride, padding, dilation: few and many channels, strided, dilated, 1x1
    ((2, 3, 7, 8), (6, 3, 3, 3), 1, 1, 1),
    ((2, 4, 8, 8), (4, 4, 3, 2), 2, (1, 0), (1, 2)),
    ((2, 16, 6, 5), (8, 16, 3, 3), 1, 2, 2),
    ((2, 16, 7, 7), (16, 16, 3, 3), 2, 1, 1),
    ((3, 16, 5, 4), (8, 16, 1, 1), 1, 0, 1),
]


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


@functools.lru_cache(maxsize=None)
def _case(i: int):
    """Case ``i``'s data, dY and loop-reference results (computed once: the loops are slow)."""
    xs, ws, stride, padding, dilation = CASES[i]
    rng = np.random.default_rng(i)
    x, w, b = rng.standard_normal(xs), rng.standard_normal(ws), rng.standard_normal(ws[0])
    s2, d2 = _pair(stride), _pair(dilation)
    pads = ref.pads_of(padding, ws[2:], d2, s2)
    y_ref = ref.conv2d_forward(x, w, b, s2, pads, d2, 1)
    dy = rng.standard_normal(y_ref.shape)
    return (x, w, b, dy, y_ref) + tuple(ref.conv2d_backward(dy, x, w, s2, pads, d2, 1))


@pytest.mark.parametrize("layout, input_grad", list(itertools.product(LAYOUTS, INPUT_GRADS)))
@pytest.mark.parametrize("plan", ["cpu", "gpu"])
def test_every_pair_of_settings_matches_the_loop_reference(layout, input_grad, plan):
    """Each forward layout with each input-gradient algorithm (where it applies; else col2im), on both plans,
    in one chunk and one sample a chunk, against the loop reference; the input gradient skipped gives the same
    parameter gradients."""
    for i, limit in itertools.product(range(len(CASES)), (None, 1)):
        _, _, stride, padding, dilation = CASES[i]
        x, w, b, dy, y_ref, dx_ref, dw_ref, db_ref = _case(i)
        with xpcnn.using(conv_layout=layout, conv_input_grad=input_grad, plan=plan, workspace_limit=limit):
            y, ctx = conv2d_forward(x, w, b, stride, padding, dilation)
            if layout != "auto":
                assert ctx.algorithm == layout
            name = backward_algorithm(ctx)
            if input_grad not in ("auto", "col2im") and name != input_grad:
                assert name in ("im2col", "im2col_nhwc")  # does not apply: col2im
            dx, dw, db = conv2d_backward(dy, ctx)
            none, dw2, db2 = conv2d_backward_params(dy, conv2d_forward(x, w, b, stride, padding, dilation)[1])
        what = f"{layout}+{input_grad} {plan} case {i} limit {limit} ({name})"
        assert_close(y, y_ref, 1e-12, f"y {what}")
        assert_close(dx, dx_ref, 1e-10, f"dx {what}")
        assert_close(dw, dw_ref, 1e-10, f"dw {what}")
        assert_close(db, db_ref, 1e-10, f"db {what}")
        assert none is None and np.array_equal(dw2, dw) and np.array_equal(db2, db)


@pytest.mark.parametrize("name", list(config._CONV_ALGORITHMS))
def test_the_old_names_are_their_pairs(name):
    """set_conv_algorithm(name) and using(conv_layout=..., conv_input_grad=...) of its pair: the same paths and
    the same arrays, to the bit."""
    rng = np.random.default_rng(2)
    layout, input_grad = config._CONV_ALGORITHMS[name]
    for xs, ws, stride, padding, dilation in CASES:
        x, w = rng.standard_normal(xs), rng.standard_normal(ws)
        dy = None
        out = []
        for how in ("old", "pair"):
            if how == "old":
                config.set_conv_algorithm(name)
            try:
                with xpcnn.using(**({} if how == "old" else dict(conv_layout=layout, conv_input_grad=input_grad))):
                    y, ctx = conv2d_forward(x, w, None, stride, padding, dilation)
                    dy = rng.standard_normal(y.shape) if dy is None else dy
                    out.append((ctx.algorithm, backward_algorithm(ctx), y) + tuple(conv2d_backward(dy, ctx)[:2]))
            finally:
                config.set_conv_algorithm(None)
        assert out[0][:2] == out[1][:2]
        assert all(np.array_equal(a, b) for a, b in zip(out[0][2:], out[1][2:]))


def test_transposed_is_polyphase_with_one_phase():
    """At stride 1 (padding within the kernel) the forced polyphase gradient is the transposed convolution: the
    same array operations, the same values."""
    from xpcnn.tools.opcount import counting
    import array_api_strict as strict
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal((2, 16, 7, 6)), rng.standard_normal((8, 16, 3, 2))
    dy = rng.standard_normal((2, 8, 7, 6))
    results = {}
    for forced in ("transposed", "polyphase"):
        with xpcnn.using(conv_input_grad=forced, plan="cpu"):
            ctx = conv2d_forward(strict.asarray(x), strict.asarray(w), None, 1, (1, 1), (1, 2))[1]
            assert backward_algorithm(ctx) == forced
            with counting(strict) as counter:
                dx = conv2d_backward(strict.asarray(dy), ctx)[0]
            results[forced] = (np.asarray(dx), dict(counter.by_name))
    assert np.array_equal(results["transposed"][0], results["polyphase"][0])
    assert results["transposed"][1] == results["polyphase"][1]


def test_the_backward_plan_says_what_to_compute():
    rng = np.random.default_rng(4)
    ctx = conv2d_forward(rng.standard_normal((2, 3, 8, 8)), rng.standard_normal((8, 3, 3, 3)), None, 1, 1)[1]
    with xpcnn.using(plan="cpu"):
        full, params = planner.plan_backward(np, ctx, True), planner.plan_backward(np, ctx, False)
    assert (full.input_grad, full.name, full.dcol, full.by_convolution) == ("banded", "banded", True, False)
    assert (params.input_grad, params.name, params.dcol, params.by_convolution) == (None, "banded", False, False)


def test_settings_are_read_in_the_planner_alone():
    """No module of the conv package but the planner reads a setting (or any of xpcnn.config)."""
    package = Path(planner.__file__).parent
    for path in sorted(package.glob("*.py")):
        if path.name == "planner.py":
            continue
        text = path.read_text()
        assert not re.search(r"\bconfig\b", text), f"{path.name} reads xpcnn.config"
