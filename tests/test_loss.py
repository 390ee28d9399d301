"""Cross-entropy (from logits, integer labels) and MSE: values, gradients, stability."""
from __future__ import annotations

import math

import numpy as np
import pytest

import xpcnn
from gradcheck import assert_close, check_grads


def _ce_ref(logits, labels):
    total = 0.0
    for row, t in zip(logits, labels):
        m = max(row)
        total += -(row[t] - m - math.log(sum(math.exp(v - m) for v in row)))
    return total / len(labels)


def test_cross_entropy(env, rng):
    logits = env.ref_input(rng.standard_normal((4, 5)) * 3)
    labels = np.array([0, 4, 2, 2])
    loss_fn = xpcnn.CrossEntropyLoss()
    for lab in (labels, env.put(labels)):  # NumPy labels are moved; backend labels are used as they are
        loss = loss_fn(env.put(logits), lab)
        assert tuple(loss.shape) == ()
        assert_close(env.get(loss), _ce_ref(logits, labels), env.tol, "cross-entropy value")
        d = env.get(loss_fn.backward())
        if env.dtype_name == "float64":
            check_grads(lambda z: _ce_ref(z, labels), [logits.copy()], [d], np.array(1.0), names=["logits"])
        else:
            p = np.exp(logits - logits.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            p[np.arange(4), labels] -= 1
            assert_close(d, p / 4, env.tol, "cross-entropy gradient")
    assert_close(env.get(loss_fn.backward(2.5)), 2.5 * d, env.tol, "dloss scales the gradient")


@pytest.mark.filterwarnings("ignore:overflow encountered in subtract")  # -big - big = -inf is intended
@pytest.mark.parametrize("scale", [1e4, 1e30, "max"])
def test_cross_entropy_stable_for_huge_logits(scale, env):
    big = float(np.finfo(env.dtype_name).max) if scale == "max" else scale
    logits = env.put(np.array([[big, 0.0, -big], [0.0, big, -big], [big, big, -big]]))
    loss_fn = xpcnn.CrossEntropyLoss()
    loss = float(env.get(loss_fn(logits, np.array([0, 1, 0]))))
    assert math.isfinite(loss)
    assert abs(loss - math.log(2) / 3) < 1e-6  # only the tied row costs anything: log 2
    d = env.get(loss_fn.backward())
    assert np.all(np.isfinite(d))
    expected = np.array([[0, 0, 0], [0, 0, 0], [-0.5, 0.5, 0]]) / 3
    np.testing.assert_allclose(d, expected, atol=1e-7)
    # a confidently wrong prediction: loss ~ the logit gap, finite and exact
    wrong = float(env.get(loss_fn(env.put(np.array([[1e4, -1e4]])), np.array([1]))))
    assert wrong == 2e4


def test_mse(env, rng):
    pred = env.ref_input(rng.standard_normal((3, 4)))
    target = env.ref_input(rng.standard_normal((3, 4)))
    fn = xpcnn.MSELoss()
    for tgt in (target, env.put(target)):
        loss = fn(env.put(pred), tgt)
        assert tuple(loss.shape) == ()
        assert_close(env.get(loss), sum((p - t) ** 2 for p, t in zip(pred.ravel(), target.ravel())) / 12,
                     env.tol, "mse value")
        d = env.get(fn.backward())
        assert_close(d, 2 * (pred - target) / 12, env.tol, "mse gradient")
    if env.dtype_name == "float64":
        check_grads(lambda p: np.mean((p - target) ** 2), [pred.copy()], [d], np.array(1.0))
    # plain lists are host data like NumPy arrays, on every backend
    loss = fn(env.put(pred), target.tolist())
    assert_close(env.get(loss), np.mean((pred - target) ** 2), env.tol, "mse with a list target")
    ce = xpcnn.CrossEntropyLoss()
    assert_close(env.get(ce(env.put(pred), [0, 3, 1])), -np.mean(np.log(np.exp(pred) / np.exp(pred).sum(1,
                 keepdims=True))[np.arange(3), [0, 3, 1]]), env.tol, "cross-entropy with list labels")
