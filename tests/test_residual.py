"""Residual blocks and option-A shortcuts: loop references, numerical gradients, every backend, state, torch twin."""
from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest

import xpcnn
from conftest import make_env
from gradcheck import assert_close, assert_matches_torch, check_grads
from xpcnn import BatchNorm2d, Conv2d, ReLU, Residual, Sequential, ZeroPadShortcut


def zero_pad_reference(x, out_channels, stride):
    """Loop reference of option A: y[n, before + c, i, j] = x[n, c, i * stride, j * stride], zeros elsewhere."""
    n, c, h, w = x.shape
    oh, ow = -(-h // stride), -(-w // stride)
    before = (out_channels - c) // 2
    y = np.zeros((n, out_channels, oh, ow))
    for a in range(n):
        for k in range(c):
            for i in range(oh):
                for j in range(ow):
                    y[a, before + k, i, j] = x[a, k, i * stride, j * stride]
    return y


@pytest.mark.parametrize("cin, cout, stride, shape", [(2, 4, 2, (2, 2, 5, 6)), (3, 3, 1, (1, 3, 4, 4)),
                                                      (2, 5, 3, (2, 2, 7, 7))])
def test_zero_pad_shortcut_matches_loop_reference_and_gradient(env, rng, cin, cout, stride, shape):
    x = rng.standard_normal(shape)
    model = env.model(ZeroPadShortcut(cin, cout, stride))
    y = env.get(model.forward(env.put(x)))
    assert_close(y, zero_pad_reference(env.ref_input(x), cout, stride), env.tol, "forward")
    dy = rng.standard_normal(y.shape)
    dx = env.get(model.backward(env.put(dy)))
    # the shortcut is linear: its gradient is the transpose of the reference map, checked numerically
    check_grads(lambda a: zero_pad_reference(a, cout, stride), [x.copy()], [dx], env.ref_input(dy),
                tol=env.tol if env.dtype_name == "float64" else 1e-4)


def block(cin=2, cout=4, stride=2, shortcut="pad"):
    body = Sequential(Conv2d(cin, cout, 3, stride, 1, bias=False), BatchNorm2d(cout), ReLU(),
                      Conv2d(cout, cout, 3, 1, 1, bias=False), BatchNorm2d(cout))
    if shortcut == "pad":
        short = ZeroPadShortcut(cin, cout, stride)
    elif shortcut == "conv":
        short = Sequential(Conv2d(cin, cout, 1, stride, bias=False), BatchNorm2d(cout))
    else:
        short = None
    return Residual(body, short)


SHORTCUTS = [("pad", 1, 2, 2), ("conv", 2, 2, 2), (None, 2, 2, 1)]  # (a 1x1 conv of one channel before
# batch norm would be scale-invariant: a zero gradient, no test)


@pytest.mark.parametrize("shortcut, cin, cout, stride", SHORTCUTS, ids=["pad", "conv", "identity"])
def test_residual_is_body_plus_shortcut_with_numerical_gradients(env, rng, shortcut, cin, cout, stride):
    """Forward against the branches run apart; input and parameter gradients against central differences."""
    model = env.model(block(cin, cout, stride, shortcut), ReLU(), seed=3)
    res = model[0]
    x = rng.standard_normal((2, cin, 4, 4))
    y = env.get(model.forward(env.put(x)))
    # the branches alone, on the same input (batch statistics: the same in train mode)
    xb = env.put(x)
    body = env.get(res.body.forward(xb))
    short = env.ref_input(x) if res.shortcut is None else env.get(res.shortcut.forward(xb))
    assert_close(y, np.maximum(body + short, 0), env.tol, "forward")
    if env.dtype_name != "float64":
        return  # numerical gradients need float64
    dy = rng.standard_normal(y.shape)
    model.zero_grad()
    dx = env.get(model.backward(env.put(dy)))
    params = [(n, p) for n, p in model.named_parameters()]
    grads = [env.get(p.grad) for _, p in params]
    if env.key not in ("numpy", "torch"):
        # array_api_strict is slow per call: its gradients are held to NumPy's, which central differences check
        ref = make_env("numpy").model(block(cin, cout, stride, shortcut), ReLU(), seed=3)
        ref.forward(x)
        ref.zero_grad()
        assert_close(dx, ref.backward(dy), 1e-10, "input gradient against NumPy's")
        for (name, _), g, (_, p) in zip(params, grads, ref.named_parameters()):
            assert_close(g, p.grad, 1e-10, f"{name}.grad against NumPy's")
        return

    def forward(xh, *ws):
        for (_, p), w in zip(params, ws):
            p.data = env.put(w)
        return env.get(model.forward(env.put(xh)))

    host = [x] + [env.get(p.data) for _, p in params]
    check_grads(forward, [h.copy() for h in host], [dx] + grads, dy, tol=1e-6,
                names=["input"] + [n for n, _ in params])


def test_gradient_reaches_both_branches(np_env, rng):
    """With the body's output weights at zero the input gradient is the shortcut's alone, and vice versa."""
    model = np_env.model(block(3, 3, 1, None))
    x, dy = rng.standard_normal((2, 3, 4, 4)), rng.standard_normal((2, 3, 4, 4))
    model[0].body[4].weight.data[...] = 0.0  # the body's last batch norm scales to zero: y = x
    np.testing.assert_allclose(model.forward(x), x, atol=1e-12)
    np.testing.assert_allclose(model.backward(dy), dy, atol=1e-12)
    assert np.abs(model[0].body[4].weight.grad).max() > 0  # the body still gets its gradient


def test_names_state_dict_train_eval_and_summary():
    model = Sequential(Conv2d(1, 2, 3, padding=1), block(2, 4, 2, "conv"), ReLU(), block(4, 4, 1, None),
                       dtype="float64")
    names = list(model.state_dict())
    assert names[:3] == ["0.weight", "0.bias", "1.body.0.weight"]
    assert "1.shortcut.0.weight" in names and "1.shortcut.1.running_var" in names
    assert "3.body.4.num_batches_tracked" in names and not any(k.startswith("3.shortcut") for k in names)
    assert model[1].body[1].path == "1.body.1" and model[1].shortcut[0].path == "1.shortcut.0"
    model.eval()
    assert not any(m.training for m in model.modules())
    model.train()
    assert all(m.training for m in model.modules())
    text = repr(model)
    assert "(1): Residual(\n    (body): Sequential(\n      (0): Conv2d(2, 4" in text
    assert "(shortcut): Sequential(" in text and text.count("backend=") == 1
    assert "ZeroPadShortcut(2, 4, stride=2)" in repr(block())
    assert model.num_parameters() == sum(int(np.prod(p.shape)) for p in model.parameters()) > 0


def test_a_sequential_nests_as_a_layer(rng):
    inner = Sequential(Conv2d(2, 3, 3), BatchNorm2d(3), ReLU())
    model = Sequential(inner, xpcnn.Flatten(), xpcnn.Linear(12, 2), dtype="float64", seed=1)
    flat = Sequential(Conv2d(2, 3, 3), BatchNorm2d(3), ReLU(), xpcnn.Flatten(), xpcnn.Linear(12, 2),
                      dtype="float64")
    assert list(model.state_dict())[:2] == ["0.0.weight", "0.0.bias"] and inner.path == "0"
    flat.load_state_dict({k[2:] if k.startswith("0.") else str(int(k[0]) + 2) + k[1:]: v
                          for k, v in model.state_dict().items()})
    x, dy = rng.standard_normal((3, 2, 4, 4)), rng.standard_normal((3, 2))
    np.testing.assert_allclose(model.forward(x), flat.forward(x), rtol=1e-13)
    np.testing.assert_allclose(model.backward(dy), flat.backward(dy), rtol=1e-13)
    assert "backend=" not in repr(inner) and repr(model).count("backend=") == 1


def test_caches_are_freed_and_copies_pickle(np_env, rng):
    model = np_env.model(block(), ReLU())
    x = rng.standard_normal((2, 2, 6, 6))
    model.forward(x)
    assert model[0].body[0]._ctx is not None
    twin = pickle.loads(pickle.dumps(model))  # without what forward kept
    assert twin[0].body[0]._ctx is None
    model.backward(rng.standard_normal((2, 4, 3, 3)))
    assert all(getattr(m, "_ctx", None) is None for m in model.modules())
    np.testing.assert_array_equal(copy.deepcopy(twin).forward(x), twin.forward(x))


def test_moves_between_backends_and_checkpoints(tmp_path, rng):
    env = make_env("strict-device1")
    model = xpcnn.build_model("resnet20", 1, 10, 8, dtype="float64", seed=2)
    x = rng.standard_normal((2, 1, 8, 8))
    model.forward(x)  # running statistics move off their initial values
    model.eval()
    expected = xpcnn.to_numpy(model.forward(x))
    xpcnn.save_checkpoint(tmp_path / "r.ckpt", model, epoch=1, metadata={"architecture": "resnet20"})
    other = xpcnn.build_model("resnet20", 1, 10, 8, backend=env.backend, seed=7)
    xpcnn.load_checkpoint(tmp_path / "r.ckpt", other)
    other.eval()
    assert all(env.backend.owns(v) for v in other.state_dict().values())
    assert_close(env.get(other.forward(env.put(x))), expected, 1e-10, "after the checkpoint")
    model.to(env.backend)
    assert all(env.backend.owns(p.data) for p in model.parameters())
    assert_close(env.get(model.forward(env.put(x))), expected, 1e-12, "after to()")


def test_bad_blocks_are_clear_errors(np_env):
    with pytest.raises(TypeError, match="body is a int"):
        Residual(3)
    with pytest.raises(ValueError, match="out_channels .* must be >= in_channels"):
        ZeroPadShortcut(4, 2)
    model = np_env.model(Residual(Conv2d(2, 3, 3, padding=1)))
    with pytest.raises(ValueError, match=r"layer '0' Residual.*body gives shape \(1, 3, 4, 4\) but the shortcut "
                                         r"\(1, 2, 4, 4\)"):
        model.forward(np.zeros((1, 2, 4, 4)))


def test_to_torch_twin_matches_outputs_and_gradients(rng):
    torch = pytest.importorskip("torch", reason="torch not installed (optional)")
    from xpcnn.tools.torch_compat import to_torch

    model = Sequential(Conv2d(2, 4, 3, padding=1, bias=False), BatchNorm2d(4), ReLU(),
                       block(4, 8, 2, "pad"), ReLU(), block(8, 8, 1, None), ReLU(), block(8, 8, 2, "conv"), ReLU(),
                       xpcnn.GlobalAvgPool2d(), xpcnn.Flatten(), xpcnn.Linear(8, 3), dtype="float64", seed=4)
    net = to_torch(model)  # loads the weights with strict=True
    assert list(net.state_dict()) == list(model.state_dict())
    assert_matches_torch(model, net, rng.standard_normal((3, 2, 7, 7)), rng, 1e-10)
    for name, v in net.state_dict().items():  # running statistics after the training forward
        assert_close(model.state_dict()[name], v.numpy(), 1e-10, name)
