"""Optimizers over flat buffers: Parameter.data/.grad are views, kept through moves, loads and replacements."""
from __future__ import annotations

import numpy as np
import pytest

import xpcnn
from conftest import make_env


def _model(backend="numpy", seed=0):
    return xpcnn.Sequential(xpcnn.Conv2d(1, 3, 3), xpcnn.BatchNorm2d(3), xpcnn.ReLU(), xpcnn.Flatten(),
                            xpcnn.Linear(12, 2), backend=backend, dtype="float64", seed=seed)


def _steps(model, opt, n, rng_seed=0):
    rng = np.random.default_rng(rng_seed)
    loss_fn = xpcnn.CrossEntropyLoss()
    for _ in range(n):
        x, labels = rng.standard_normal((4, 1, 4, 4)), rng.integers(0, 2, 4)
        opt.zero_grad()
        loss_fn(model(x), labels)
        model.backward(loss_fn.backward())
        opt.step()


OPTIMIZERS = {"sgd": lambda ps: xpcnn.optim.SGD(ps, lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01),
              "nesterov": lambda ps: xpcnn.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
              "adam": lambda ps: xpcnn.optim.Adam(ps, lr=0.01, weight_decay=0.01),
              "adamw": lambda ps: xpcnn.optim.AdamW(ps, lr=0.01)}


@pytest.mark.parametrize("key", ["numpy", "strict", "strict-device1"])
def test_parameters_and_gradients_are_views_of_the_flat_buffers(key):
    env = make_env(key)
    model = xpcnn.Sequential(xpcnn.Linear(3, 2), xpcnn.Linear(2, 1), backend=env.backend)
    opt = xpcnn.optim.SGD(model.parameters(), lr=0.1)
    (flat,) = opt.flat_grads()
    assert flat.shape == (sum(int(np.prod(p.shape)) for p in model.parameters()),)
    flat[...] = 1.0  # an in-place write of the buffer (an all-reduce) is every gradient's
    assert all(np.all(env.get(p.grad) == 1.0) for p in model.parameters())
    before = [env.get(p.data) for p in model.parameters()]
    opt.step()
    for p, b in zip(model.parameters(), before):
        np.testing.assert_allclose(env.get(p.data), b - 0.1)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_flat_update_equals_one_parameter_at_a_time(name):
    """One optimizer over all parameters (one flat buffer) against one optimizer per parameter: the same
    elementwise arithmetic, so the same float64 bits."""
    a, b = _model(), _model()
    opt_a = OPTIMIZERS[name](a.parameters())
    per = [OPTIMIZERS[name]([p]) for p in b.parameters()]

    class Each:
        def zero_grad(self):
            for o in per:
                o.zero_grad()

        def step(self):
            for o in per:
                o.step()
    _steps(a, opt_a, 3)
    _steps(b, Each(), 3)
    for pa, pb in zip(a.parameters(), b.parameters()):
        np.testing.assert_array_equal(pa.data, pb.data)


def test_views_survive_load_state_dict_move_checkpoint_and_replaced_arrays(tmp_path):
    ref, model = _model(), _model(seed=1)
    opt_ref, opt = OPTIMIZERS["nesterov"](ref.parameters()), OPTIMIZERS["nesterov"](model.parameters())
    _steps(ref, opt_ref, 2)
    model.load_state_dict(ref.state_dict())              # replaces Parameter.data
    opt.load_state_dict(opt_ref.state_dict())
    model.to("array_api_strict:device1")                  # replaces data and grad
    model[4].weight.grad = model.backend.zeros(model[4].weight.shape)  # a layer assigning a gradient
    _steps(ref, opt_ref, 2, rng_seed=1)
    _steps(model, opt, 2, rng_seed=1)
    env = make_env("strict-device1")
    for pa, pb in zip(ref.parameters(), model.parameters()):
        np.testing.assert_allclose(env.get(pb.data), pa.data, rtol=1e-12, atol=1e-14)
    assert all(env.backend.owns(g) for g in opt.flat_grads())
    path = tmp_path / "run.ckpt"
    xpcnn.checkpoint.save_checkpoint(path, ref, opt_ref)
    again = _model(seed=2)
    opt_again = OPTIMIZERS["nesterov"](again.parameters())
    xpcnn.checkpoint.load_checkpoint(path, again, opt_again)
    _steps(ref, opt_ref, 1, rng_seed=2)
    _steps(again, opt_again, 1, rng_seed=2)
    for pa, pb in zip(ref.parameters(), again.parameters()):
        np.testing.assert_array_equal(pa.data, pb.data)
    (flat,) = opt_again.flat_grads()
    assert all(np.shares_memory(p.grad, flat) and np.shares_memory(p.data, opt_again.flat.groups()[0].data)
               for p in again.parameters())


def test_a_parameter_without_gradient_is_skipped_as_in_pytorch():
    model = xpcnn.Sequential(xpcnn.Linear(2, 2), backend="numpy", dtype="float64")
    opt = xpcnn.optim.SGD(model.parameters(), lr=0.1, weight_decay=0.5)
    bias = model[0].bias.data.copy()
    model[0].bias.grad = None
    model[0].weight.grad[...] = 1.0
    w = model[0].weight.data.copy()
    opt.step()
    np.testing.assert_array_equal(model[0].bias.data, bias)
    np.testing.assert_allclose(model[0].weight.data, w - 0.1 * (1.0 + 0.5 * w))
