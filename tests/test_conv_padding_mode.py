"""Conv2d(padding_mode="reflect"|"replicate"|"circular"): the padding against a loop reference (forward and its
adjoint), the layer against the loop convolution of the padded input, numerical gradients, and torch."""
from __future__ import annotations

import numpy as np
import pytest

import reference as ref
import reference_pool as rp
import xpcnn
from conftest import HAVE_TORCH, STRICT, make_env
from gradcheck import assert_close, assert_matches_torch, check_grads
from xpcnn.functional._util import pad2d_mode, pad2d_mode_backward

MODES = ["reflect", "replicate", "circular"]
PADS = [(1, 1, 1, 1), (2, 0, 1, 3), (0, 0, 2, 0), (3, 2, 4, 3)]  # the last: reflect's and circular's limits at 4x5


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("pads", PADS, ids=[str(p).replace(" ", "") for p in PADS])
@pytest.mark.parametrize("key", ["numpy"] + STRICT)
def test_pad2d_mode_and_its_adjoint_match_the_loop_reference(mode, pads, key, rng):
    env = make_env(key)
    if mode == "circular" and pads == PADS[3]:
        pads = (3, 4, 4, 5)  # circular allows pad == size
    x = env.ref_input(rng.standard_normal((2, 3, 4, 5)))
    y = pad2d_mode(env.put(x), pads, mode)
    assert_close(env.get(y), rp.pad_mode(x, pads, mode), env.tol, "pad")
    g = env.ref_input(rng.standard_normal(tuple(y.shape)))
    dx = pad2d_mode_backward(env.put(g), pads, mode)
    assert_close(env.get(dx), rp.pad_mode_backward(g, x.shape, pads, mode), env.tol, "pad backward")


def test_reference_padding_backward_is_the_adjoint_of_its_forward(rng):
    x = rng.standard_normal((1, 2, 4, 5))
    for mode in MODES:
        y = rp.pad_mode(x, (2, 1, 3, 2), mode)
        dy = rng.standard_normal(y.shape)
        check_grads(lambda x_: rp.pad_mode(x_, (2, 1, 3, 2), mode), [x],
                    [rp.pad_mode_backward(dy, x.shape, (2, 1, 3, 2), mode)], dy)


LAYER_CASES = [  # (in, out, kernel, stride, padding, dilation, groups)
    (3, 4, 3, 1, 1, 1, 1),
    (2, 4, (3, 2), (2, 1), (2, 1), (1, 2), 2),
    (3, 2, 3, 1, "same", 2, 1),
    (2, 3, (2, 3), 1, "same", 1, 1),  # asymmetric "same": the odd extra bottom/right
    (2, 2, 3, 1, "valid", 1, 1),
]


def _ref_layer(x, case, mode):
    _, _, k, s, p, d, g = case
    pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)  # noqa: E731
    pads = ref.pads_of(p if isinstance(p, str) else pair(p), pair(k), pair(d), pair(s))
    xpad = rp.pad_mode(x, pads, mode)
    return xpad, pads, (pair(s), pair(d), g)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", LAYER_CASES, ids=[str(c).replace(" ", "") for c in LAYER_CASES])
def test_conv2d_padding_mode_numpy(mode, case, rng):
    model = xpcnn.Sequential(xpcnn.Conv2d(*case, padding_mode=mode), backend="numpy", dtype="float64", seed=2)
    layer = model[0]
    x = rng.standard_normal((2, case[0], 6, 5))
    w, b = layer.weight.data, layer.bias.data
    xpad, pads, (s, d, g) = _ref_layer(x, case, mode)
    y = model(x)
    assert_close(y, ref.conv2d_forward(xpad, w, b, s, (0, 0, 0, 0), d, g), 1e-7, "forward")
    dy = rng.standard_normal(y.shape)
    dx = model.backward(dy)
    dxpad, dw, db = ref.conv2d_backward(dy, xpad, w, s, (0, 0, 0, 0), d, g)
    assert_close(dx, rp.pad_mode_backward(dxpad, x.shape, pads, mode), 1e-7, "dx")
    assert_close(layer.weight.grad, dw, 1e-7, "weight.grad")
    assert_close(layer.bias.grad, db, 1e-7, "bias.grad")
    model.zero_grad()
    model(x)
    model.backward(dy)
    check_grads(lambda x_, w_, b_: model.forward(x_), [x, layer.weight.data, layer.bias.data],
                [dx, layer.weight.grad.copy(), layer.bias.grad.copy()], dy, names=["x", "weight", "bias"])


@pytest.mark.parametrize("key", STRICT)
@pytest.mark.parametrize("mode", MODES)
def test_conv2d_padding_mode_strict(mode, key, rng):
    env = make_env(key)
    case = LAYER_CASES[1]
    model = env.model(xpcnn.Conv2d(*case, padding_mode=mode), seed=2)
    layer = model[0]
    x = env.ref_input(rng.standard_normal((2, case[0], 6, 5)))
    w, b = env.get(layer.weight.data), env.get(layer.bias.data)
    xpad, pads, (s, d, g) = _ref_layer(x, case, mode)
    y = model(env.put(x))
    assert_close(env.get(y), ref.conv2d_forward(xpad, w, b, s, (0, 0, 0, 0), d, g), env.tol, "forward")
    dy = env.ref_input(rng.standard_normal(tuple(y.shape)))
    dx = model.backward(env.put(dy))
    dxpad, dw, _ = ref.conv2d_backward(dy, xpad, w, s, (0, 0, 0, 0), d, g)
    assert_close(env.get(dx), rp.pad_mode_backward(dxpad, x.shape, pads, mode), env.tol, "dx")
    assert_close(env.get(layer.weight.grad), dw, env.tol, "weight.grad")


def test_conv2d_padding_mode_training_step_skips_the_input_gradient(rng):
    """As the first layer of a step (no input gradient), a padded conv still gets its weight gradient."""
    model = xpcnn.Sequential(xpcnn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect"), backend="numpy",
                             dtype="float64")
    x = rng.standard_normal((2, 2, 5, 5))
    y = model(x)
    dy = rng.standard_normal(y.shape)
    assert model.backward(dy, input_grad=False) is None
    xpad = rp.pad_mode(x, (1, 1, 1, 1), "reflect")
    _, dw, _ = ref.conv2d_backward(dy, xpad, model[0].weight.data, (1, 1), (0, 0, 0, 0), (1, 1), 1)
    assert_close(model[0].weight.grad, dw, 1e-7, "weight.grad")


def test_conv2d_padding_mode_errors_and_repr():
    with pytest.raises(ValueError, match="padding_mode"):
        xpcnn.Conv2d(1, 1, 3, padding_mode="mirror")
    conv = xpcnn.Conv2d(1, 2, 3, 1, 2, 1, 1, True, "reflect")  # torch's positional order
    assert repr(conv) == "Conv2d(1, 2, kernel_size=(3, 3), stride=(1, 1), padding=(2, 2), padding_mode='reflect')"
    model = xpcnn.Sequential(conv, backend="numpy", dtype="float64")
    with pytest.raises(ValueError, match=r"layer '0'.*reflect.*less than the input height 2"):
        model(np.zeros((1, 1, 2, 6)))
    circ = xpcnn.Sequential(xpcnn.Conv2d(1, 1, 5, padding=3, padding_mode="circular"), backend="numpy")
    circ(np.zeros((1, 1, 3, 3), dtype=np.float32))  # pad == size: allowed
    with pytest.raises(ValueError, match="circular.*at most the input width 2"):
        circ(np.zeros((1, 1, 3, 2), dtype=np.float32))
    zeros = xpcnn.Conv2d(1, 1, 3, padding=1, padding_mode="zeros")
    assert "padding_mode" not in repr(zeros)


@pytest.mark.skipif(not HAVE_TORCH, reason="torch not installed (optional)")
@pytest.mark.parametrize("mode", ["zeros"] + MODES)
def test_conv2d_padding_mode_matches_torch(mode, rng):
    import torch
    from xpcnn.tools.torch_compat import to_torch
    model = xpcnn.Sequential(xpcnn.Conv2d(2, 4, (3, 2), (2, 1), (2, 1), (1, 2), 2, padding_mode=mode),
                             xpcnn.Conv2d(4, 3, 3, padding="same", dilation=2, padding_mode=mode),
                             backend="numpy", dtype="float64", seed=4)
    net = to_torch(model)
    assert net[0].padding_mode == mode and net[1].padding_mode == mode
    assert_matches_torch(model, net, rng.standard_normal((2, 2, 7, 6)), rng, 1e-12)


def test_checkpoint_round_trip_keeps_padding_mode_and_pool_options(tmp_path, rng):
    def build(seed):
        return xpcnn.Sequential(xpcnn.Conv2d(2, 3, 3, padding=1, padding_mode="circular"),
                                xpcnn.MaxPool2d(3, 2, 1, 2, ceil_mode=True), xpcnn.AvgPool2d(2, 1, 1, True, False),
                                xpcnn.AdaptiveMaxPool2d((2, None)), backend="numpy", dtype="float64", seed=seed)
    model = build(0)
    x = rng.standard_normal((2, 2, 9, 8))
    xpcnn.save_checkpoint(tmp_path / "m.ckpt", model)
    ckpt = xpcnn.load_checkpoint(tmp_path / "m.ckpt", build(1))
    assert sorted(ckpt.model_state) == ["0.bias", "0.weight"]  # safetensors stores names sorted
    other = build(1)
    assert not np.allclose(other(x), model(x))  # other weights before loading
    assert_close(other.load_state_dict(ckpt.model_state)(x), model(x), 1e-15, "same outputs")
