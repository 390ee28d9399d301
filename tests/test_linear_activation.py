"""Linear, Flatten, activations, dropout, softmax and log_softmax: values and gradients."""
from __future__ import annotations

import math

import numpy as np
import pytest

import xpcnn
import xpcnn.functional as F
from gradcheck import assert_close, check_grads


def _sigmoid(x):
    return np.array([1 / (1 + math.exp(-v)) if v >= 0 else math.exp(v) / (1 + math.exp(v)) for v in x.ravel()]
                    ).reshape(x.shape)


def _softmax(x):
    out = np.empty_like(x)
    for i, row in enumerate(x):
        m = max(row)
        e = [math.exp(v - m) for v in row]
        out[i] = [v / sum(e) for v in e]
    return out


ACTS = {  # name -> (layer, reference)
    "relu": (xpcnn.ReLU, lambda x: np.where(x > 0, x, 0.0)),
    "leaky_relu": (lambda: xpcnn.LeakyReLU(0.2), lambda x: np.where(x > 0, x, 0.2 * x)),
    "sigmoid": (xpcnn.Sigmoid, _sigmoid),
    "tanh": (xpcnn.Tanh, lambda x: np.vectorize(math.tanh)(x)),
}


@pytest.mark.parametrize("name", list(ACTS))
def test_activation_layers(name, env, rng):
    layer, fn = ACTS[name]
    model = env.model(layer())
    x = env.ref_input(rng.standard_normal((2, 3, 4, 3)) * 3)
    y = model.forward(env.put(x))
    assert_close(env.get(y), fn(x), env.tol, f"{name} forward")
    dy = env.ref_input(rng.standard_normal(x.shape))
    dx = env.get(model.backward(env.put(dy)))
    if env.dtype_name == "float64":
        check_grads(fn, [x.copy()], [dx], dy, names=[name])
    else:
        h = 1e-6
        num = (fn(x + h) - fn(x - h)) / (2 * h) * dy  # element-wise: the derivative in float64
        assert_close(dx, num, env.tol, f"{name} backward")


def test_sigmoid_tanh_saturate_without_overflow(env):
    x = env.ref_input(np.array([[-1000.0, -50.0, 0.0, 50.0, 1000.0]]))
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        s = env.get(F.sigmoid(env.put(x)))
    assert np.all(np.isfinite(s)) and s[0, 0] == 0.0 and s[0, -1] == 1.0 and s[0, 2] == 0.5
    t = env.get(F.tanh(env.put(x)))
    assert t[0, 0] == -1.0 and t[0, -1] == 1.0


def test_linear_layer(env, rng):
    model = env.model(xpcnn.Linear(5, 3), seed=2)
    lin = model[0]
    w, b = env.get(lin.weight.data), env.get(lin.bias.data)
    assert w.shape == (3, 5) and b.shape == (3,)
    assert np.all(np.abs(w) <= 1 / math.sqrt(5)) and np.all(np.abs(b) <= 1 / math.sqrt(5))
    x = env.ref_input(rng.standard_normal((4, 5)))
    y = model.forward(env.put(x))
    y_ref = np.array([[sum(x[n, i] * w[o, i] for i in range(5)) + b[o] for o in range(3)] for n in range(4)])
    assert_close(env.get(y), y_ref, env.tol, "linear forward")
    dy = env.ref_input(rng.standard_normal((4, 3)))
    dx = model.backward(env.put(dy))
    assert_close(env.get(dx), dy @ w, env.tol, "linear dx")
    assert_close(env.get(lin.weight.grad), dy.T @ x, env.tol, "linear weight.grad")
    assert_close(env.get(lin.bias.grad), dy.sum(0), env.tol, "linear bias.grad")


def test_linear_numerical_gradient_no_bias(rng):
    x, w = rng.standard_normal((3, 4)), rng.standard_normal((2, 4))
    y, ctx = F.linear_forward(x, w)
    dy = rng.standard_normal(y.shape)
    dx, dw, db = F.linear_backward(dy, ctx)
    assert db is None
    check_grads(F.linear, [x, w], [dx, dw], dy, names=["x", "weight"])


def test_flatten(env, rng):
    model = env.model(xpcnn.Flatten())
    x = env.ref_input(rng.standard_normal((2, 3, 4, 5)))
    y = model.forward(env.put(x))
    assert tuple(y.shape) == (2, 60)
    np.testing.assert_array_equal(env.get(y), x.reshape(2, 60))
    dy = rng.standard_normal((2, 60))
    np.testing.assert_array_equal(env.get(model.backward(env.put(env.ref_input(dy)))),
                                  env.ref_input(dy).reshape(x.shape))


def test_dropout_inverted_and_identity_in_eval(env, rng):
    model = env.model(xpcnn.Dropout(0.25), seed=7)
    x = env.ref_input(rng.uniform(1, 2, (40, 50)))
    y = env.get(model.forward(env.put(x)))
    kept = y != 0
    assert_close(y[kept], x[kept] / 0.75, env.tol, "kept values are scaled by 1/(1-p)")
    assert abs(kept.mean() - 0.75) < 0.03, kept.mean()  # 2000 draws: ~3 sigma
    dy = env.ref_input(rng.standard_normal(x.shape))
    dx = env.get(model.backward(env.put(dy)))
    assert_close(dx, np.where(kept, dy / 0.75, 0.0), env.tol, "backward uses the same mask")
    y2 = env.get(model.forward(env.put(x)))
    assert not np.array_equal(y2 != 0, kept), "a new mask each call"
    model.eval()
    np.testing.assert_array_equal(env.get(model.forward(env.put(x))), x)
    np.testing.assert_array_equal(env.get(model.backward(env.put(dy))), dy)


def test_dropout_same_seed_same_masks():
    def masks(seed):
        m = xpcnn.Sequential(xpcnn.Dropout(0.5), backend="numpy", dtype="float64", seed=seed)
        return [m.forward(np.ones((4, 6))) for _ in range(2)]
    a, b, c = masks(3), masks(3), masks(4)
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    assert not all(np.array_equal(u, v) for u, v in zip(a, c))


@pytest.mark.parametrize("fn", ["softmax", "log_softmax"])
def test_softmax_log_softmax(fn, env, rng):
    x = env.ref_input(rng.standard_normal((3, 5)) * 4)
    y_ref = _softmax(x) if fn == "softmax" else np.log(_softmax(x))
    y = getattr(F, fn)(env.put(x), axis=1)
    assert_close(env.get(y), y_ref, env.tol, f"{fn} forward")
    dy = env.ref_input(rng.standard_normal(x.shape))
    dx = env.get(getattr(F, f"{fn}_backward")(env.put(dy), y, axis=1))
    ref_fn = _softmax if fn == "softmax" else (lambda a: np.log(_softmax(a)))
    if env.dtype_name == "float64":
        check_grads(ref_fn, [x.copy()], [dx], dy)
    else:  # analytic float64 Jacobian-vector product
        s = _softmax(x)
        jvp = s * (dy - (dy * s).sum(1, keepdims=True)) if fn == "softmax" else dy - s * dy.sum(1, keepdims=True)
        assert_close(dx, jvp, env.tol, f"{fn} backward")


def test_softmax_stable_for_huge_logits(env):
    big = 1e30 if env.dtype_name == "float32" else 1e300
    x = env.put(np.array([[big, 0.0, -big], [1000.0, 1000.0, -1000.0]]))
    s = env.get(F.softmax(x, axis=1))
    ls = env.get(F.log_softmax(x, axis=1))
    assert np.all(np.isfinite(s))
    np.testing.assert_allclose(s, [[1, 0, 0], [0.5, 0.5, 0]], atol=0)
    assert ls[0, 0] == 0 and ls[1, 0] == ls[1, 1] and abs(ls[1, 0] + math.log(2)) < 1e-7
