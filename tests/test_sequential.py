"""Sequential: PyTorch-style names, state_dict round trips, train/eval, moving between backends, init."""
from __future__ import annotations

import numpy as np
import pytest

import xpcnn
from conftest import make_env
from gradcheck import assert_close, check_grads


def small_net(**kw):
    return xpcnn.Sequential(
        xpcnn.Conv2d(2, 4, 3, padding=1), xpcnn.BatchNorm2d(4), xpcnn.ReLU(), xpcnn.MaxPool2d(2),
        xpcnn.Conv2d(4, 4, (2, 3), groups=2, bias=False), xpcnn.Tanh(), xpcnn.Flatten(),
        xpcnn.Linear(4, 5), xpcnn.BatchNorm1d(5), xpcnn.Dropout(0.3), xpcnn.LeakyReLU(), xpcnn.Linear(5, 3),
        **kw)


def host_state(model):
    return {k: xpcnn.to_numpy(v) for k, v in model.state_dict().items()}


def test_names_and_state_dict_like_pytorch():
    model = small_net(dtype="float64")
    names = [n for n, _ in model.named_parameters()]
    assert names == ["0.weight", "0.bias", "1.weight", "1.bias", "4.weight", "7.weight", "7.bias",
                     "8.weight", "8.bias", "11.weight", "11.bias"]
    assert list(model.state_dict()) == [
        "0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked",
        "4.weight", "7.weight", "7.bias", "8.weight", "8.bias", "8.running_mean", "8.running_var",
        "8.num_batches_tracked", "11.weight", "11.bias"]
    sd = model.state_dict()
    assert sd["4.weight"].shape == (4, 2, 2, 3) and sd["7.weight"].shape == (5, 4)
    assert sd["1.num_batches_tracked"].shape == () and sd["1.num_batches_tracked"].dtype == np.int64
    assert model[4].path == "4"


def test_load_state_dict_roundtrip_numpy_and_backend_arrays(rng):
    a = small_net(dtype="float64", seed=0)
    x = rng.standard_normal((3, 2, 4, 6))
    a.forward(x)  # changes running stats and num_batches_tracked
    b = small_net(dtype="float64", seed=99)
    assert not np.array_equal(host_state(a)["0.weight"], host_state(b)["0.weight"])
    b.load_state_dict(host_state(a))  # NumPy arrays
    for k, v in host_state(a).items():
        np.testing.assert_array_equal(host_state(b)[k], v, err_msg=k)
    assert int(host_state(b)["1.num_batches_tracked"]) == 1
    # loaded values are copies: training b does not touch a's arrays
    before = host_state(a)
    b.forward(x)
    np.testing.assert_array_equal(host_state(a)["1.running_mean"], before["1.running_mean"])
    # backend arrays from another device are accepted too
    env = make_env("strict-device1")
    c = small_net(backend=env.backend, seed=5)
    c.load_state_dict(a.state_dict())
    for k, v in c.state_dict().items():
        assert env.backend.owns(v), k
        np.testing.assert_array_equal(xpcnn.to_numpy(v), before[k], err_msg=k)
    a.eval(), c.eval()
    assert_close(env.get(c.forward(x)), a.forward(x), 1e-12, "same state, same eval output")


def test_load_state_dict_rejects_bad_keys_and_shapes():
    model = small_net()
    sd = host_state(model)
    with pytest.raises(ValueError, match=r"missing keys \['1.running_var'\]"):
        model.load_state_dict({k: v for k, v in sd.items() if k != "1.running_var"})
    with pytest.raises(ValueError, match=r"unexpected keys \['extra'\]"):
        model.load_state_dict({**sd, "extra": np.zeros(1)})
    with pytest.raises(ValueError, match=r"'0.bias' has shape \(3,\), the model expects \(4,\)"):
        model.load_state_dict({**sd, "0.bias": np.zeros(3)})
    with pytest.raises(TypeError):
        model.load_state_dict([("0.bias", np.zeros(4))])
    model.load_state_dict({"0.bias": np.arange(4.0)}, strict=False)
    np.testing.assert_array_equal(xpcnn.to_numpy(model[0].bias.data), np.arange(4.0, dtype=np.float32))


def test_train_eval_flags_and_modes(rng):
    model = small_net(dtype="float64")
    assert model.training and all(m.training for m in model.modules())
    x = rng.standard_normal((4, 2, 4, 6))
    model.eval()
    assert not any(m.training for m in model.modules())
    y1, y2 = model.forward(x), model.forward(x)
    np.testing.assert_array_equal(y1, y2)  # eval: no dropout, running stats, deterministic
    assert int(xpcnn.to_numpy(model[1].num_batches_tracked)) == 0
    model.train()
    assert all(m.training for m in model.modules())
    model.forward(x)
    assert int(xpcnn.to_numpy(model[1].num_batches_tracked)) == 1


def test_model_gradients_numerical(rng):
    """The whole stack (conv, bn, relu, pool, grouped conv, tanh, flatten, linear, bn1d, leaky relu) in eval
    mode is differentiable almost everywhere: check dx and every parameter."""
    model = small_net(dtype="float64", seed=1)
    model.eval()  # dropout is the identity, batch norm uses its running stats
    x = rng.standard_normal((2, 2, 4, 6))
    y = model.forward(x)
    dy = rng.standard_normal(y.shape)
    model.zero_grad()
    dx = model.backward(dy)
    params = model.parameters()
    check_grads(lambda *a: model.forward(x), [x] + [p.data for p in params],
                [dx] + [p.grad.copy() for p in params], dy,
                names=["x"] + [n for n, _ in model.named_parameters()])


@pytest.mark.parametrize("key", ["strict", "strict-device1"])
def test_to_backend_round_trip(key, rng):
    model = small_net(dtype="float64", seed=3)
    x = rng.standard_normal((2, 2, 4, 6))
    model.forward(x)
    model.eval()
    y_np = model.forward(x)
    before = host_state(model)
    env = make_env(key)
    assert model.to(env.spec) is model
    assert model.backend == env.backend
    for k, v in model.state_dict().items():
        assert env.backend.owns(v), k
        np.testing.assert_array_equal(xpcnn.to_numpy(v), before[k], err_msg=k)
    assert all(env.backend.owns(p.grad) for p in model.parameters())
    y = model.forward(x)  # NumPy input is moved by the model
    assert_close(env.get(y), y_np, 1e-12, "same output after the move")
    model.to("numpy")
    assert model.backend.name == "numpy"
    for k, v in model.state_dict().items():
        assert isinstance(v, np.ndarray), k
        np.testing.assert_array_equal(v, before[k], err_msg=k)
    assert_close(model.forward(x), y_np, 1e-12, "back on numpy")


def test_same_seed_same_weights_on_every_backend():
    ref = host_state(small_net(dtype="float64", seed=7))
    for key in ["strict", "strict-device1"]:
        env = make_env(key)
        got = host_state(small_net(backend=env.backend, seed=7))
        for k in ref:
            np.testing.assert_array_equal(got[k], ref[k], err_msg=f"{key} {k}")
    f32 = host_state(small_net(backend=make_env("strict-no_float64").backend, seed=7))
    for k in ref:
        np.testing.assert_array_equal(f32[k], ref[k].astype(f32[k].dtype), err_msg=k)
    other = host_state(small_net(dtype="float64", seed=8))
    assert not np.array_equal(other["0.weight"], ref["0.weight"])


def test_float32_model_stays_float32(rng):
    env = make_env("strict-no_float64")
    model = small_net(backend=env.backend)
    x = rng.standard_normal((2, 2, 4, 6))  # float64 NumPy input is cast by the model
    y = model.forward(x)
    env.get(y)  # asserts float32 and the device
    dx = model.backward(np.ones(tuple(y.shape)))
    env.get(dx)
    for p in model.parameters():
        env.get(p.grad)


def test_forward_accepts_lists_and_returns_backend_array():
    model = xpcnn.Sequential(xpcnn.Linear(2, 1), backend="array_api_strict", dtype="float64")
    y = model([[1.0, 2.0]])
    assert model.backend.owns(y)


def _no_dropout_nets():
    return {
        "conv-first": lambda **kw: xpcnn.Sequential(
            xpcnn.Conv2d(2, 4, 3, padding=1), xpcnn.BatchNorm2d(4), xpcnn.ReLU(), xpcnn.MaxPool2d(2),
            xpcnn.Conv2d(4, 4, (2, 3), groups=2, bias=False), xpcnn.Tanh(), xpcnn.Flatten(),
            xpcnn.Linear(4, 5), xpcnn.LeakyReLU(), xpcnn.Linear(5, 3), **kw),
        "parameter-free-prefix": lambda **kw: xpcnn.Sequential(
            xpcnn.ReLU(), xpcnn.MaxPool2d(2), xpcnn.Conv2d(2, 3, 2, bias=False), xpcnn.Flatten(),
            xpcnn.Linear(6, 2), **kw),
        "linear-first": lambda **kw: xpcnn.Sequential(
            xpcnn.Flatten(), xpcnn.Linear(48, 5), xpcnn.ReLU(), xpcnn.Linear(5, 3), **kw),
        "bn-first": lambda **kw: xpcnn.Sequential(
            xpcnn.BatchNorm2d(2), xpcnn.Conv2d(2, 3, 3), xpcnn.Flatten(), xpcnn.Linear(3 * 2 * 4, 2), **kw),
    }


@pytest.mark.parametrize("key", ["numpy", "strict"])
@pytest.mark.parametrize("net", list(_no_dropout_nets()))
def test_backward_without_input_grad(net, key, rng):
    """``backward(dy, input_grad=False)`` returns None and leaves every parameter gradient as the full pass does."""
    env = make_env(key)
    model = _no_dropout_nets()[net](dtype="float64", seed=2).to(env.spec)
    x = rng.standard_normal((3, 2, 4, 6))
    y = model.forward(x)
    dy = rng.standard_normal(y.shape)
    model.zero_grad()
    dx = model.backward(dy)
    assert dx is not None and tuple(dx.shape) == x.shape
    full = [env.get(p.grad).copy() for p in model.parameters()]
    model.forward(x)
    model.zero_grad()
    assert model.backward(dy, input_grad=False) is None
    for (name, p), g in zip(model.named_parameters(), full):
        np.testing.assert_array_equal(env.get(p.grad), g, err_msg=name)
    model.forward(x)
    assert model.backward(dy, input_grad=True) is not None  # the default path still works after a skip


def test_backward_frees_forward_state(rng):
    """Backward frees what forward kept (as PyTorch frees its graph): a second backward needs a new forward."""
    model = small_net(dtype="float64", seed=4)
    x = rng.standard_normal((2, 2, 4, 6))
    y = model.forward(x)
    dy = rng.standard_normal(y.shape)
    dx = model.backward(dy)
    assert all(getattr(m, "_ctx", None) is None for m in model.layers)
    with pytest.raises(RuntimeError, match="forward"):
        model.backward(dy)
    model.forward(x)
    model.to("numpy")  # moving clears the forward state too
    with pytest.raises(RuntimeError, match="forward"):
        model.backward(dy)
    model.forward(x)
    assert tuple(model.backward(dy).shape) == tuple(dx.shape)


@pytest.mark.parametrize("key", ["numpy", "array_api_strict"])
@pytest.mark.parametrize("name, shape, nan", [("lenet", (5, 1, 28, 28), True), ("vgg-small", (4, 3, 16, 16), False),
                                              ("digits-cnn", (6, 1, 8, 8), True)])
def test_relu_before_max_pool_runs_after_it_with_identical_results(name, shape, nan, key, rng):
    """A ReLU followed by a MaxPool2d runs after the pool (it commutes with max): the outputs, the input gradient
    and every parameter gradient are bit-identical to running the layers in the given order, including ties
    (zeros from the ReLU, whole windows of negative values) and a NaN (not through batch norm, which would
    spread it everywhere)."""
    from xpcnn.models import build_model
    from xpcnn.layers import MaxPool2d, ReLU
    x = np.round(rng.standard_normal(shape), 1)  # ties within pooling windows
    x[0, 0, :4, :4] = -1.0  # a window of negatives: the ReLU output ties at 0
    if nan:
        x[-1, 0, 2, 3] = np.nan
    out = {}
    for reorder in (False, True):
        model = build_model(name, shape[1], 10, shape[2], backend=key, dtype="float64", seed=3)
        model.reorder_relu_pool = reorder
        y = model(x)
        dy = np.random.default_rng(1).standard_normal(tuple(y.shape))
        dx = model.backward(dy)
        out[reorder] = [xpcnn.to_numpy(a) for a in (y, dx)] + [xpcnn.to_numpy(p.grad) for p in model.parameters()]
    order = model.run_order()
    pairs = [i for i in range(len(model) - 1) if type(model[i]) is ReLU and type(model[i + 1]) is MaxPool2d]
    assert pairs and all(order.index(i) == order.index(i + 1) + 1 for i in pairs)
    assert np.isfinite(out[True][0]).mean() > 0.5  # mostly finite: the comparison has teeth
    for a, b in zip(out[True], out[False]):
        np.testing.assert_array_equal(a, b)
