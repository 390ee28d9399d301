"""The GPU plan (xpcnn.config.set_plan / XPCNN_PLAN) on CPU backends: the path CuPy runs, with the same results."""
from __future__ import annotations

import math

import numpy as np
import pytest

import xpcnn
from xpcnn import config, kernels, threads
from xpcnn.functional import conv as C
from conftest import make_env
from gradcheck import assert_close


def test_set_plan_validates_and_reads_the_environment(monkeypatch):
    with pytest.raises(xpcnn.errors.InputValueError, match="plan must be one of"):
        config.set_plan("tpu")
    config.set_plan("gpu")
    assert config.get_plan() == "gpu" and config.gpu_plan() and config.gpu_plan(np.zeros(1))
    config.set_plan("cpu")
    assert not config.gpu_plan()
    config.set_plan(None)
    assert config.get_plan() == "auto" and not config.gpu_plan(np.zeros(1))
    monkeypatch.setenv("XPCNN_PLAN", "GPU")
    assert config._plan_from_env() == "gpu"
    monkeypatch.setenv("XPCNN_PLAN", "nonsense")
    with pytest.warns(UserWarning, match="XPCNN_PLAN"):
        assert config._plan_from_env() == "auto"


def _model(backend):
    return xpcnn.Sequential(
        xpcnn.Conv2d(1, 4, 5, padding=2), xpcnn.ReLU(), xpcnn.MaxPool2d(2),
        xpcnn.Conv2d(4, 16, 3, padding=1, bias=False), xpcnn.BatchNorm2d(16), xpcnn.ReLU(),
        xpcnn.Conv2d(16, 16, 3, stride=2, padding=1), xpcnn.ReLU(),
        xpcnn.Flatten(), xpcnn.Linear(16 * 2 * 2, 3), backend=backend, seed=3)


def _two_steps(env, rng_seed=5):
    """Loss, input gradient and parameters after two SGD (Nesterov, weight decay) steps."""
    rng = np.random.default_rng(rng_seed)
    x, labels = rng.standard_normal((6, 1, 8, 8)), rng.integers(0, 3, 6)
    model = _model(env.backend)
    loss_fn = xpcnn.CrossEntropyLoss()
    opt = xpcnn.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)
    for _ in range(2):
        opt.zero_grad()
        loss = loss_fn(model(x), labels)
        dx = model.backward(loss_fn.backward())
        opt.step()
    return [env.get(loss), env.get(dx)] + [env.get(p.data) for p in model.parameters()]


@pytest.mark.parametrize("key", ["numpy", "strict"])
def test_gpu_plan_matches_cpu_plan(key):
    env = make_env(key)
    config.set_plan("cpu")
    cpu = _two_steps(env)
    config.set_plan("gpu")
    gpu = _two_steps(env)
    for k, (a, b) in enumerate(zip(gpu, cpu)):
        assert_close(a, b, env.tol, f"{key} result {k}")


@pytest.mark.parametrize("key", ["numpy", "strict"])
def test_gpu_plan_runs_the_plain_convolution(key, rng):
    """Few channels (the CPU plan's width-blocked columns and banded input gradient), many channels at stride 1
    (transposed) and stride 2 (polyphase): on the GPU plan all are im2col_nhwc, columns kept, and the input
    gradient a transposed convolution at stride 1, else col2im."""
    env = make_env(key)
    cases = [((2, 1, 12, 12), (6, 1, 5, 5), 1, "im2col_blocked", "banded"),
             ((2, 16, 8, 8), (16, 16, 3, 3), 1, "im2col_nhwc", "transposed"),
             ((2, 16, 8, 8), (16, 16, 3, 3), 2, "im2col_nhwc", "polyphase")]
    for x_shape, w_shape, stride, cpu_layout, cpu_dx in cases:
        x, w = env.put(rng.standard_normal(x_shape)), env.put(rng.standard_normal(w_shape))
        results = {}
        for name in ("cpu", "gpu"):
            config.set_plan(name)
            y, ctx = C.conv2d_forward(x, w, stride=stride, padding=1)
            dx, dw, _ = C.conv2d_backward(y, ctx)
            results[name] = (env.get(y), env.get(dx), env.get(dw))
            layout, dx_path = ctx.algorithm, C.backward_algorithm(ctx)
            if name == "gpu":
                gpu_dx = "transposed" if stride == 1 else "im2col_nhwc"
                assert (layout, dx_path) == ("im2col_nhwc", gpu_dx) and ctx.cols is not None
            elif key == "numpy" or cpu_layout == "im2col_nhwc":
                assert (layout, dx_path) == (cpu_layout, cpu_dx)
        for a, b in zip(results["gpu"], results["cpu"]):
            assert_close(a, b, env.tol, f"{key} {w_shape} stride {stride}")


def test_gpu_plan_turns_off_numpy_kernels_and_threads():
    config.set_plan("cpu")
    assert kernels.get("relu", np) is not None
    config.set_plan("gpu")
    assert kernels.get("relu", np) is None
    xpcnn.config.set_num_threads(2)
    with threads.step(np) as workers:
        assert workers == 1


@pytest.mark.parametrize("key", ["numpy", "strict-device1"])
@pytest.mark.parametrize("geometry", [dict(kernel=(3, 2), stride=(2, 1), padding=1, dilation=2),
                                      dict(kernel=(5, 5), stride=1, padding=2, dilation=1),
                                      dict(kernel=(2, 3), stride=(1, 3), padding=0, dilation=(1, 2)),
                                      dict(kernel=(1, 3), stride=1, padding=(0, 1), dilation=1),
                                      dict(kernel=(3, 2), stride=1, padding=(1, 0), dilation=(2, 1)),
                                      dict(kernel=(1, 3), stride=1, padding=1, dilation=1)])
def test_gpu_plan_convolution_against_the_loop_reference(key, geometry, rng):
    """The plain path's separable im2col and col2im (kh + kw copies and adds) or transposed input gradient (stride
    1) on odd geometries, in one chunk
    and one sample per chunk (a tiny workspace limit), against the loop reference."""
    import reference as ref
    from xpcnn.functional._util import pair
    env = make_env(key)
    x0, w0 = rng.standard_normal((5, 3, 9, 10)), rng.standard_normal((4, 3) + geometry["kernel"])
    stride, dil = pair(geometry["stride"], "stride"), pair(geometry["dilation"], "dilation")
    pads = ref.pads_of(geometry["padding"], geometry["kernel"], dil, stride)
    y_ref = ref.conv2d_forward(x0, w0, None, stride, pads, dil)
    g0 = rng.standard_normal(y_ref.shape)
    dx_ref, dw_ref, _ = ref.conv2d_backward(g0, x0, w0, stride, pads, dil)
    config.set_plan("gpu")
    for limit in (None, 1):  # 1 byte: one sample per chunk
        config.set_workspace_limit(limit)
        y, ctx = C.conv2d_forward(env.put(x0), env.put(w0), None, geometry["stride"], geometry["padding"],
                                  geometry["dilation"])
        dx, dw, _ = C.conv2d_backward(env.put(g0), ctx)
        within = all(p <= d * (k - 1) for p, d, k in zip(pads, (dil[0], dil[0], dil[1], dil[1]),
                                                          2 * geometry["kernel"][:1] + 2 * geometry["kernel"][1:]))
        gpu_dx = "transposed" if stride == (1, 1) and within else "im2col_nhwc"  # else padding beyond the kernel
        assert ctx.algorithm == "im2col_nhwc" and C.backward_algorithm(ctx) == gpu_dx
        assert (ctx.nb < 5) == (limit is not None)
        assert_close(env.get(y), y_ref, env.tol, f"forward {geometry}")
        assert_close(env.get(dx), dx_ref, env.tol, f"dx {geometry}")
        assert_close(env.get(dw), dw_ref, env.tol, f"dw {geometry}")


def test_kept_padded_buffers_are_not_shared_by_other_paddings(rng):
    """Two convolutions whose padded inputs have one shape (6x6 padded by 1, 4x4 by 2) but other borders, run
    in turn: each keeps its own zero border."""
    import reference as ref
    config.set_plan("gpu")
    w0 = rng.standard_normal((2, 3, 3, 3))
    for _ in range(2):
        for size, pad in ((6, 1), (4, 2)):
            x0 = rng.standard_normal((2, 3, size, size))
            y = C.conv2d_forward(x0, w0, None, 1, pad)[0]
            assert_close(np.asarray(y), ref.conv2d_forward(x0, w0, None, (1, 1), (pad,) * 4), 1e-12, f"pad {pad}")


@pytest.mark.parametrize("options", [dict(kernel_size=3, padding=1), dict(kernel_size=(3, 2), padding=(2, 1),
                                                                           dilation=(1, 2), bias=False),
                                     dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=1),
                                     dict(kernel_size=3, padding=1, padding_mode="reflect"),
                                     dict(kernel_size=(1, 3), stride=(2, 1), padding=(0, 1))])
@pytest.mark.parametrize("limit", [None, 1])
def test_gpu_plan_conv_layer_matches_cpu_plan(env, options, limit, rng):
    """Conv2d on the GPU plan (tensordot with the weight as it lies, columns (m, oh, ow, kh, kw, C); transposed
    input gradient at stride 1): output, input gradient, weight and bias gradients, with and without the input
    gradient, as on the CPU plan, on every backend; in one chunk and one sample a chunk (``limit`` 1 byte)."""
    x0 = rng.standard_normal((3, 5, 7, 6))
    results = {}
    for name in ("cpu", "gpu"):
        config.set_plan(name)
        config.set_workspace_limit(limit if name == "gpu" else None)
        layer = xpcnn.Sequential(xpcnn.Conv2d(5, 4, **options), backend=env.backend, seed=2)
        conv = layer.layers[0]
        y = layer(env.put(x0))
        g = env.put(np.linspace(-1, 1, math.prod(y.shape)).reshape(tuple(y.shape)))
        dx = conv.backward(g)
        grads = [env.get(p.grad) for p in conv.parameters()]
        for p in conv.parameters():
            p.grad = p.grad * 0
        assert conv.backward(g, input_grad=False) is None
        assert all(np.array_equal(a, env.get(p.grad)) for a, p in zip(grads, conv.parameters()))
        results[name] = [env.get(y), env.get(dx)] + grads
        if name == "gpu":
            ctx = conv._ctx
            assert ctx.algorithm == "im2col_nhwc" and ctx.wk is None and (ctx.cols is None) == (limit is not None)
            stride1 = options.get("stride", 1) == 1
            assert C.backward_algorithm(ctx) == ("transposed" if stride1 else "im2col_nhwc")
    assert len(results["gpu"]) == 3 + ("bias" not in options)
    for k, (a, b) in enumerate(zip(results["gpu"], results["cpu"])):
        assert_close(a, b, env.tol, f"{env.key} {options} result {k}")
