"""SGD (momentum, dampening, Nesterov, weight decay), Adam and AdamW against hand-written float64 updates."""
from __future__ import annotations

import math

import numpy as np
import pytest

import xpcnn
from conftest import make_env
from gradcheck import assert_close

STEPS = 5


def ref_sgd(p, grads, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
    p, buf = p.copy(), None
    for t, grad in enumerate(grads):
        g = grad + weight_decay * p
        if momentum:
            buf = g.copy() if t == 0 else momentum * buf + (1 - dampening) * g
            g = g + momentum * buf if nesterov else buf
        p = p - lr * g
    return p


def ref_adam(p, grads, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, decoupled=False):
    p = p.copy()
    m, v = np.zeros_like(p), np.zeros_like(p)
    b1, b2 = betas
    for t, grad in enumerate(grads, start=1):
        g = grad
        if decoupled:
            p = p * (1 - lr * weight_decay)
        else:
            g = g + weight_decay * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        mhat, vhat = m / (1 - b1 ** t), v / (1 - b2 ** t)
        p = p - lr * mhat / (np.sqrt(vhat) + eps)
    return p


CASES = {
    "sgd": (xpcnn.optim.SGD, ref_sgd, dict(lr=0.1)),
    "sgd-wd": (xpcnn.optim.SGD, ref_sgd, dict(lr=0.1, weight_decay=0.05)),
    "momentum": (xpcnn.optim.SGD, ref_sgd, dict(lr=0.1, momentum=0.9)),
    "momentum-dampening-wd": (xpcnn.optim.SGD, ref_sgd, dict(lr=0.05, momentum=0.8, dampening=0.3,
                                                              weight_decay=0.01)),
    "nesterov-wd": (xpcnn.optim.SGD, ref_sgd, dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.02)),
    "adam": (xpcnn.optim.Adam, ref_adam, dict(lr=0.01)),
    "adam-l2": (xpcnn.optim.Adam, ref_adam, dict(lr=0.01, betas=(0.8, 0.99), eps=1e-3, weight_decay=0.1)),
    "adamw": (xpcnn.optim.AdamW, lambda *a, **k: ref_adam(*a, decoupled=True, **k), dict(lr=0.01)),
    "adamw-wd": (xpcnn.optim.AdamW, lambda *a, **k: ref_adam(*a, decoupled=True, **k),
                 dict(lr=0.02, weight_decay=0.3, betas=(0.5, 0.9))),
}


def _run(env, name, rng):
    cls, ref, kw = CASES[name]
    p0 = [env.ref_input(rng.standard_normal(s)) for s in [(3, 4), (4,)]]
    grads = [[env.ref_input(rng.standard_normal(p.shape)) for _ in range(STEPS)] for p in p0]
    params = [xpcnn.Parameter(env.put(p), env.put(np.zeros_like(p))) for p in p0]
    opt = cls(params, **kw)
    for t in range(STEPS):
        opt.zero_grad()
        for p, g in zip(params, grads):
            p.grad += env.put(g[t])
        opt.step()
    refkw = dict(kw)
    if name == "adamw":
        refkw["weight_decay"] = 0.01  # PyTorch's AdamW default
    for p, p_init, g in zip(params, p0, grads):
        expected = ref(p_init, g, **refkw)
        got = env.get(p.data)
        # compare the parameter change, not the parameter, so that a tiny update error cannot hide
        assert_close(got - p_init, expected - p_init, env.tol, f"{name} update")
    return params, opt


@pytest.mark.parametrize("name", list(CASES))
def test_optimizer_matches_reference_numpy(name, np_env, rng):
    _run(np_env, name, rng)


@pytest.mark.parametrize("key", ["strict-device1", "strict-no_float64"])
@pytest.mark.parametrize("name", ["nesterov-wd", "momentum-dampening-wd", "adam-l2", "adamw-wd"])
def test_optimizer_matches_reference_strict(name, key, rng):
    env = make_env(key)
    _, opt = _run(env, name, rng)
    for st in opt.state:
        for v in st.values():
            env.get(v)  # state stays on the device, in the model dtype


def test_optimizer_state_follows_model_to(rng):
    """SGD momentum: 2 steps on NumPy, move the model to device1, 2 more steps == 4 steps on NumPy."""
    grads = [rng.standard_normal((2, 3)) for _ in range(4)]

    def run(move):
        model = xpcnn.Sequential(xpcnn.Linear(3, 2, bias=False), backend="numpy", dtype="float64", seed=0)
        opt = xpcnn.optim.Adam(model.parameters(), lr=0.1)
        sgd = xpcnn.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
        for t, g in enumerate(grads):
            if move and t == 2:
                model.to("array_api_strict:device1")
            for o in (opt, sgd):
                o.zero_grad()
                model[0].weight.grad += model.backend.asarray(g)
                o.step()
        return model[0].weight.data, opt, sgd

    a, *_ = run(False)
    b, opt, sgd = run(True)
    env = make_env("strict-device1")
    np.testing.assert_array_equal(env.get(b), a)
    for o in (opt, sgd):
        for st in o.state:
            assert all(env.backend.owns(v) for v in st.values())


def test_optimizer_rejects_bad_arguments():
    params = xpcnn.Sequential(xpcnn.Linear(2, 2)).parameters()
    with pytest.raises(ValueError, match="lr"):
        xpcnn.optim.SGD(params, lr=-1)
    with pytest.raises(ValueError, match="Nesterov"):
        xpcnn.optim.SGD(params, lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="betas"):
        xpcnn.optim.Adam(params, betas=(1.0, 0.9))
    with pytest.raises(ValueError, match="empty"):
        xpcnn.optim.SGD([], lr=0.1)
    with pytest.raises(TypeError, match="Parameter"):
        xpcnn.optim.SGD([np.zeros(3)], lr=0.1)
    assert math.isclose(xpcnn.optim.AdamW(params).weight_decay, 0.01)
