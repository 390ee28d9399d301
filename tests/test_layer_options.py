"""PyTorch's layer options beyond the defaults: unbatched inputs, Linear on any leading axes, Flatten(start_dim,
end_dim), constructor arguments in torch's order (NumPy integers, device/dtype None, inplace), 0-d arrays, and the
model's clear errors for non-arrays and misshapen gradients; values and gradients against references on every
backend, and against PyTorch where installed."""
from __future__ import annotations

import numpy as np
import pytest

import reference as ref
import xpcnn
from conftest import HAVE_TORCH
from gradcheck import assert_close, check_grads


def test_conv2d_takes_one_unbatched_image(env, rng):
    """(C, H, W) in, (F, H', W') out, the same values and gradients as the batch of one (torch's unbatched input)."""
    model = env.model(xpcnn.Conv2d(2, 3, 3, stride=(1, 2), padding=1), seed=3)
    w, b = env.get(model[0].weight.data), env.get(model[0].bias.data)
    x = env.ref_input(rng.standard_normal((2, 5, 6)))
    y = model.forward(env.put(x))
    y_ref = ref.conv2d_forward(x[None], w, b, (1, 2), (1, 1, 1, 1))[0]
    assert tuple(y.shape) == y_ref.shape
    assert_close(env.get(y), y_ref, env.tol, "unbatched forward")
    dy = env.ref_input(rng.standard_normal(y_ref.shape))
    model.zero_grad()
    dx = model.backward(env.put(dy))
    dx_ref, dw_ref, db_ref = ref.conv2d_backward(dy[None], x[None], w, (1, 2), (1, 1, 1, 1))
    assert tuple(dx.shape) == x.shape
    assert_close(env.get(dx), dx_ref[0], env.tol, "unbatched dx")
    assert_close(env.get(model[0].weight.grad), dw_ref, env.tol, "unbatched weight grad")
    model.forward(env.put(x))
    assert model.backward(env.put(dy), input_grad=False) is None  # the skipped input gradient stays None


@pytest.mark.parametrize("shape", [(4,), (2, 3, 4), (0, 4)])
def test_linear_takes_any_leading_axes(shape, env, rng):
    model = env.model(xpcnn.Linear(4, 3), seed=2)
    w, b = env.get(model[0].weight.data), env.get(model[0].bias.data)
    x = env.ref_input(rng.standard_normal(shape))
    y = model.forward(env.put(x))
    assert tuple(y.shape) == shape[:-1] + (3,)
    assert_close(env.get(y), x @ w.T + b, env.tol, "forward")
    dy = env.ref_input(rng.standard_normal(shape[:-1] + (3,)))
    model.zero_grad()
    dx = model.backward(env.put(dy))
    assert_close(env.get(dx), dy @ w, env.tol, "dx")
    assert_close(env.get(model[0].weight.grad), dy.reshape(-1, 3).T @ x.reshape(-1, 4), env.tol, "dw")
    assert_close(env.get(model[0].bias.grad), dy.reshape(-1, 3).sum(0), env.tol, "db")


@pytest.mark.parametrize("start,end,shape,out", [
    (1, -1, (2, 3, 4, 5), (2, 60)), (0, -1, (2, 3, 4), (24,)), (1, 2, (2, 3, 4, 5), (2, 12, 5)),
    (-3, -2, (2, 3, 4, 5), (2, 12, 5)), (2, 2, (2, 3, 4), (2, 3, 4)), (0, 0, (), (1,))])
def test_flatten_start_and_end(start, end, shape, out, env, rng):
    model = env.model(xpcnn.Flatten(start, end))
    x = env.ref_input(rng.standard_normal(shape))
    y = model.forward(env.put(x))
    assert tuple(y.shape) == out
    assert_close(env.get(y), x.reshape(out), env.tol, "flatten")
    dy = env.ref_input(rng.standard_normal(out))
    dx = model.backward(env.put(dy))
    assert tuple(dx.shape) == shape
    assert_close(env.get(dx), dy.reshape(shape), env.tol, "flatten backward")


def test_flatten_errors():
    model = xpcnn.Sequential(xpcnn.Flatten(1, 5), backend="numpy")
    with pytest.raises(ValueError, match=r"no axes 1 to 5 to flatten \(axes in \[-3, 2\]\)"):
        model(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="start_dim 2 comes after end_dim 1"):
        xpcnn.Sequential(xpcnn.Flatten(2, 1), backend="numpy")(np.zeros((2, 3, 4)))
    with pytest.raises(TypeError, match="end_dim must be an int"):
        xpcnn.Flatten(1, 2.0)


def test_activations_and_dropout_of_any_shape(env, rng):
    """Element-wise layers take any shape, a 0-d array included (NumPy's sharded kernels too)."""
    for layer in (xpcnn.ReLU(), xpcnn.LeakyReLU(0.1), xpcnn.Sigmoid(), xpcnn.Tanh(), xpcnn.Dropout(0.4)):
        model = env.model(layer)
        for x in (np.array(-1.5), np.array(2.0), rng.standard_normal((3,))):
            x = env.ref_input(x)
            model.eval()
            y = env.get(model.forward(env.put(x)))
            expected = {"ReLU": np.maximum(x, 0), "LeakyReLU": np.where(x > 0, x, 0.1 * x),
                        "Sigmoid": 1 / (1 + np.exp(-x)), "Tanh": np.tanh(x), "Dropout": x}[type(layer).__name__]
            assert y.shape == x.shape
            assert_close(y, expected, env.tol, f"{layer!r} of shape {x.shape}")
            model.train()
            y = model.forward(env.put(x))
            dx = env.get(model.backward(env.put(np.ones(x.shape))))
            assert dx.shape == x.shape and tuple(y.shape) == x.shape


def test_zero_d_relu_on_worker_threads():
    with xpcnn.using(num_threads=2):
        model = xpcnn.Sequential(xpcnn.ReLU(), backend="numpy", dtype="float64")
        assert float(model(np.array(-2.0))) == 0.0 and float(model(np.array(3.0))) == 3.0
        assert float(model.backward(np.array(5.0))) == 5.0


def test_constructors_take_torch_arguments_in_torch_order():
    layers = [xpcnn.Linear(4, 3, True, None, None), xpcnn.Conv2d(np.int64(1), np.int32(2), np.int64(3)),
              xpcnn.Conv2d(1, 2, (np.int64(3), 2), np.int16(1), np.int64(1), 1, 1, True),
              xpcnn.BatchNorm2d(2, 1e-5, 0.1, True, True, None, None), xpcnn.BatchNorm1d(np.uint8(4)),
              xpcnn.ReLU(False), xpcnn.ReLU(True), xpcnn.LeakyReLU(0.01, False), xpcnn.Dropout(0.5, False),
              xpcnn.Flatten(1, -1), xpcnn.Linear(np.int64(4), 3)]
    assert layers[1].in_channels == 1 and type(layers[1].in_channels) is int
    assert layers[2].kernel_size == (3, 2)
    with pytest.raises(TypeError, match="in_channels must be an int, got bool"):
        xpcnn.Conv2d(True, 2, 3)
    with pytest.raises(TypeError, match="kernel_size must be an int or a pair"):
        xpcnn.Conv2d(1, 2, np.bool_(True))
    with pytest.raises(ValueError, match="Linear: device='cpu' per layer is not supported"):
        xpcnn.Linear(4, 3, True, "cpu")
    with pytest.raises(ValueError, match="Linear: dtype='float64' per layer is not supported"):
        xpcnn.Linear(4, 3, dtype="float64")
    with pytest.raises(TypeError, match="ReLU: inplace must be a bool"):
        xpcnn.ReLU(0.5)


def test_model_refuses_non_arrays_and_misshapen_gradients(env):
    model = env.model(xpcnn.Linear(3, 10))
    for bad in (None, 3.0, "x"):
        with pytest.raises(TypeError, match=f"model input must be an array.*got {type(bad).__name__}"):
            model(bad)
    model(np.zeros((2, 3)))
    with pytest.raises(TypeError, match="model gradient must be an array"):
        model.backward(None)
    with pytest.raises(ValueError, match=r"Sequential.backward: gradient of shape \(2, 9\) does not match the "
                                         r"output \(2, 10\)"):
        model.backward(np.zeros((2, 9)))
    model.backward(np.zeros((2, 10)))  # the model is still usable after the refused gradient


def test_unbatched_input_is_not_split_over_worker_threads():
    """A (C, H, W) sample's first axis is not a batch: the ops see a batch of one, whatever the thread count."""
    with xpcnn.using(num_threads=2):
        model = xpcnn.Sequential(xpcnn.Conv2d(64, 2, 3), xpcnn.Flatten(0), xpcnn.Linear(72, 3),
                                 backend="numpy", dtype="float64")
        x = np.random.default_rng(0).standard_normal((64, 8, 8))
        y = model(x)
        assert y.shape == (3,)
        assert model.backward(np.ones(3)).shape == x.shape


@pytest.mark.skipif(not HAVE_TORCH, reason="torch not installed (optional)")
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_new_options_match_torch(mode, rng):
    """A model of the new options, through to_torch: forward, backward, parameter gradients and state (the
    state_dict keys of affine=False and track_running_stats=False included) as PyTorch's, over three steps."""
    import torch
    from xpcnn.tools.torch_compat import to_torch
    layers = [xpcnn.BatchNorm2d(3, 1e-3, None), xpcnn.Conv2d(3, 4, 3, padding=1, bias=False),
              xpcnn.BatchNorm2d(4, affine=False), xpcnn.ReLU(True), xpcnn.Flatten(2, 3),
              xpcnn.BatchNorm1d(4, momentum=None, track_running_stats=False), xpcnn.Flatten(1, -1),
              xpcnn.Linear(4 * 25, 6), xpcnn.LeakyReLU(0.2, True), xpcnn.BatchNorm1d(6, 1e-4, 0.3, False, True),
              xpcnn.Linear(6, 2)]  # (no bias straight before a batch norm in training: its gradient is 0 + rounding)
    model = xpcnn.Sequential(*layers, backend="numpy", dtype="float64", seed=5)
    net = to_torch(model)
    assert list(net.state_dict()) == list(model.state_dict())
    for step in range(3):
        x = rng.standard_normal((4, 3, 5, 5)) * (step + 1)
        if mode == "eval" and step == 2:
            model.eval()
            net.eval()
        net.zero_grad()
        xt = torch.tensor(x, requires_grad=True)
        yt = net(xt)
        y = model.forward(x)
        assert_close(y, yt.detach().numpy(), 1e-10, f"forward {step}")
        dy = rng.standard_normal(y.shape)
        yt.backward(torch.tensor(dy))
        model.zero_grad()
        assert_close(model.backward(dy), xt.grad.numpy(), 1e-10, f"dx {step}")
        tparams = dict(net.named_parameters())
        for name, p in model.named_parameters():
            assert_close(p.grad, tparams[name].grad.numpy(), 1e-10, f"{name}.grad {step}")
        for name, v in net.state_dict().items():
            assert_close(np.asarray(model.state_dict()[name], np.float64), v.numpy().astype(np.float64), 1e-10,
                         f"{name} {step}")
    # unbatched samples as torch
    single = rng.standard_normal((3, 5, 5))
    conv = xpcnn.Sequential(xpcnn.Conv2d(3, 2, 3), xpcnn.ReLU(), xpcnn.Flatten(0), xpcnn.Linear(18, 4),
                            backend="numpy", dtype="float64", seed=1)
    assert_close(conv(single), to_torch(conv)(torch.tensor(single)).detach().numpy(), 1e-12, "unbatched")
    conv.forward(single)
    dx = conv.backward(np.ones(4))
    check_grads(lambda s: conv.forward(s), [single.copy()], [dx], np.ones(4))


@pytest.mark.parametrize("make", [lambda: xpcnn.MaxPool2d(3, stride=2, padding=1), lambda: xpcnn.AvgPool2d(2),
                                  lambda: xpcnn.AdaptiveAvgPool2d((2, 3)), lambda: xpcnn.GlobalAvgPool2d()],
                         ids=["max", "avg", "adaptive", "global"])
def test_pooling_takes_one_unbatched_image(make, env, rng):
    """(C, H, W) in: the values and gradients of the batch of one, without its batch axis."""
    x = env.ref_input(rng.standard_normal((2, 6, 7)))
    single, batch = env.model(make()), env.model(make())
    y, y1 = single.forward(env.put(x)), batch.forward(env.put(x[None]))
    assert tuple(y.shape) == tuple(y1.shape)[1:]
    assert_close(env.get(y), env.get(y1)[0], env.tol, "unbatched forward")
    dy = env.ref_input(rng.standard_normal(tuple(y.shape)))
    dx, dx1 = single.backward(env.put(dy)), batch.backward(env.put(dy[None]))
    assert tuple(dx.shape) == x.shape
    assert_close(env.get(dx), env.get(dx1)[0], env.tol, "unbatched backward")


def test_checkpoint_of_the_new_options_loads_back_and_into_torch(tmp_path):
    """state_dict names as PyTorch's for affine=False / track_running_stats=False / momentum=None, through a
    checkpoint file: back into xpcnn on another backend, and into torch with strict=True."""
    from xpcnn.checkpoint import Checkpoint, load_checkpoint, save_checkpoint

    def make(backend):
        return xpcnn.Sequential(xpcnn.Conv2d(1, 3, 3), xpcnn.BatchNorm2d(3, affine=False, momentum=None),
                                xpcnn.ReLU(True), xpcnn.BatchNorm2d(3, track_running_stats=False),
                                xpcnn.Flatten(1, -1), xpcnn.Linear(48, 4), xpcnn.BatchNorm1d(4, 1e-3, None, False),
                                backend=backend, dtype="float64", seed=4)
    m = make("numpy")
    x = np.random.default_rng(0).standard_normal((5, 1, 6, 6))
    for _ in range(2):
        m(x)
    p = tmp_path / "o.ckpt"
    save_checkpoint(p, m)
    back = make("array_api_strict")
    load_checkpoint(p, back)
    m.eval()
    back.eval()
    assert_close(xpcnn.to_numpy(back(x)), m(x), 1e-12, "reloaded model")
    if HAVE_TORCH:
        import torch
        from xpcnn.tools.torch_compat import to_torch
        net = to_torch(m, copy_weights=False)
        net.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in Checkpoint(p).model_state.items()},
                            strict=True)
        net.eval()
        assert_close(net(torch.from_numpy(x)).detach().numpy(), m(x), 1e-12, "into torch")
