"""Bad input raises ValueError/TypeError naming the layer and the expected versus actual value."""
from __future__ import annotations

import numpy as np
import pytest

import xpcnn
from conftest import make_env

KEYS = ["numpy", "strict-device1"]


def net(env):
    return env.model(xpcnn.Conv2d(3, 4, 3), xpcnn.ReLU(), xpcnn.MaxPool2d(2), xpcnn.BatchNorm2d(4),
                     xpcnn.Flatten(), xpcnn.Linear(4 * 2 * 2, 5))


@pytest.mark.parametrize("key", KEYS)
def test_wrong_rank(key):
    env = make_env(key)
    model = net(env)
    with pytest.raises(ValueError, match=r"layer '0' Conv2d\(3, 4, kernel_size=\(3, 3\).*expected a 3-D or 4-D "
                                         r"input \(N, C, H, W\) or one sample \(C, H, W\), got shape \(3, 6\)"):
        model.forward(np.zeros((3, 6)))
    with pytest.raises(ValueError, match=r"layer '0' Conv2d.*expected 3 input channels \(axis 0\), got 2 "
                                         r"\(input shape \(2, 3, 6\)\)"):  # one unbatched image
        model.forward(np.zeros((2, 3, 6)))
    with pytest.raises(ValueError, match=r"layer '5' Linear\(in_features=16.*expected 16 input features, got 1 "
                                         r"\(the last axis of input shape \(2, 16, 1\)\)"):
        model[5].forward(env.put(np.zeros((2, 16, 1))))
    with pytest.raises(ValueError, match=r"layer '2' MaxPool2d.*4-D.*got shape \(6, 6\)"):
        model[2].forward(env.put(np.zeros((6, 6))))


@pytest.mark.parametrize("key", KEYS)
def test_wrong_channels_and_features(key):
    env = make_env(key)
    model = net(env)
    with pytest.raises(ValueError, match=r"layer '0' Conv2d.*expected 3 input channels.*got 2"):
        model.forward(np.zeros((2, 2, 6, 6)))
    with pytest.raises(ValueError, match=r"layer '3' BatchNorm2d\(4.*expected 4 input channels.*got 3"):
        model[3].forward(env.put(np.zeros((2, 3, 2, 2))))
    with pytest.raises(ValueError, match=r"layer '5' Linear.*expected 16 input features, got 9"):
        model[5].forward(env.put(np.zeros((2, 9))))
    # a bigger image reaches Linear with the wrong number of features: named there
    with pytest.raises(ValueError, match=r"layer '5' Linear.*expected 16 input features, got 36"):
        model.forward(np.zeros((2, 3, 8, 8)))


@pytest.mark.parametrize("key", KEYS)
def test_spatial_size_smaller_than_kernel(key):
    env = make_env(key)
    model = net(env)
    with pytest.raises(ValueError, match=r"layer '0' Conv2d.*spatial size 2x5.*smaller than the dilated kernel 3x3"):
        model.forward(np.zeros((1, 3, 2, 5)))
    with pytest.raises(ValueError, match=r"layer '2' MaxPool2d.*spatial size 1x3.*smaller than the kernel \(2, 2\)"):
        model.forward(np.zeros((1, 3, 3, 5)))  # conv -> 1x3, pool 2x2 does not fit
    dil = env.model(xpcnn.Conv2d(1, 1, 3, dilation=3))
    with pytest.raises(ValueError, match=r"layer '0' Conv2d.*7x7.*dilated kernel 7x7|smaller than the dilated kernel 7x7"):
        dil.forward(np.zeros((1, 1, 6, 9)))


@pytest.mark.parametrize("key", KEYS)
def test_labels_out_of_range_or_float(key):
    env = make_env(key)
    logits = env.put(np.zeros((3, 4)))
    loss = xpcnn.CrossEntropyLoss()
    with pytest.raises(ValueError, match=r"CrossEntropyLoss: labels must be in \[0, 3\] for 4 classes "
                                         r"\(or ignore_index=-100\), got values in \[0, 4\]"):
        loss(logits, np.array([0, 4, 1]))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\].*got values in \[-1, 2\]"):
        loss(logits, env.put(np.array([2, -1, 1])))
    with pytest.raises(TypeError, match=r"CrossEntropyLoss: labels must be integer class indices, got dtype "
                                        r".*float"):
        loss(logits, np.array([0.0, 1.0, 2.0]))
    with pytest.raises(TypeError, match=r"labels must be integer.*float"):
        loss(logits, env.put(np.array([0.0, 1.0, 2.0])))
    with pytest.raises(ValueError, match=r"expected labels \(class indices\) of shape \(3,\).*got \(3, 1\)"):
        loss(logits, np.array([[0], [1], [2]]))
    with pytest.raises(ValueError, match=r"expected labels \(class indices\) of shape \(3, 1\) for logits "
                                         r"\(3, 4, 1\), got \(3,\)"):  # per-position logits need per-position labels
        loss(env.put(np.zeros((3, 4, 1))), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match=r"MSELoss: target shape \(3, 3\) differs from prediction shape \(3, 4\)"):
        xpcnn.MSELoss()(logits, np.zeros((3, 3)))


def test_numpy_array_into_a_layer_on_another_device():
    env = make_env("strict-device1")
    model = net(env)
    x = np.zeros((2, 3, 6, 6))
    model.forward(x)  # the model moves NumPy input by contract
    with pytest.raises(ValueError, match=r"layer '0' Conv2d.*input is a numpy array on cpu, but the layer is on "
                                         r"array_api_strict:device1"):
        model[0].forward(x)
    with pytest.raises(ValueError, match=r"layer '1' ReLU\(\).*numpy array.*array_api_strict:device1"):
        model[1].forward(np.zeros((2, 4, 4, 4)))
    # an array of the same library on another device is not moved silently, not even by the model
    other = make_env("strict").put(x)
    with pytest.raises(ValueError, match=r"model input is a array_api_strict array on .*CPU_DEVICE.*but the model "
                                         r"is on array_api_strict:device1"):
        model.forward(other)
    with pytest.raises(ValueError, match=r"layer '0' Conv2d.*array_api_strict array on .*CPU_DEVICE.*but the layer "
                                         r"is on array_api_strict:device1"):
        model[0].forward(other)
    with pytest.raises(ValueError, match=r"CrossEntropyLoss: labels are on .*CPU_DEVICE.*logits on .*device1"):
        xpcnn.CrossEntropyLoss()(env.put(np.zeros((2, 3))), make_env("strict").put(np.array([0, 1])))


@pytest.mark.parametrize("key", KEYS)
def test_dtype_mismatch(key):
    env = make_env(key)
    model = net(env)
    x32 = env.backend.asarray(np.zeros((2, 3, 6, 6)), dtype=env.xp.float32)
    with pytest.raises(TypeError, match=r"layer '0' Conv2d.*expected a float64 input, got .*float32"):
        model[0].forward(x32)
    if key != "numpy":  # (model.forward casts NumPy input to the model dtype by contract)
        with pytest.raises(TypeError, match=r"layer '0' Conv2d.*expected a float64 input, got .*float32"):
            model.forward(x32)
    with pytest.raises(TypeError, match=r"layer '5' Linear.*expected a float64 input, got .*int64"):
        model[5].forward(env.put(np.zeros((2, 16), dtype=np.int64)))
    y = model.forward(np.zeros((2, 3, 6, 6)))
    dy32 = env.backend.asarray(np.zeros(tuple(y.shape)), dtype=env.xp.float32)
    with pytest.raises(TypeError, match=r"layer '5' Linear.*expected a float64 input, got .*float32"):
        model.layers[-1].check_input(dy32) if key == "numpy" else model.backward(dy32)
    with pytest.raises(TypeError, match=r"CrossEntropyLoss: predictions must be floating point"):
        xpcnn.CrossEntropyLoss()(env.put(np.zeros((2, 3), dtype=np.int64)), np.array([0, 1]))
    with pytest.raises(TypeError, match=r"model input must be numeric, got dtype <U1"):
        model.forward(np.array([["a"]]))


def test_invalid_options():
    with pytest.raises(ValueError, match=r"padding='same' needs stride 1.*stride=\(2, 2\)"):
        xpcnn.Conv2d(3, 4, 3, stride=2, padding="same")
    with pytest.raises(ValueError, match=r"Conv2d: groups=2 must divide in_channels=3"):
        xpcnn.Conv2d(3, 4, 3, groups=2)
    with pytest.raises(ValueError, match=r"padding must be an int, a pair, 'same' or 'valid', got 'full'"):
        xpcnn.Conv2d(3, 4, 3, padding="full")
    with pytest.raises(ValueError, match=r"kernel_size, stride and dilation must be >= 1"):
        xpcnn.Conv2d(3, 4, 0)
    with pytest.raises(TypeError, match=r"in_channels must be an int, got float"):
        xpcnn.Conv2d(3.0, 4, 3)
    with pytest.raises(TypeError, match=r"kernel_size must be an int or a pair of ints, got \(3, 3, 3\)"):
        xpcnn.Conv2d(3, 4, (3, 3, 3))
    with pytest.raises(ValueError, match=r"pooling padding \(2, 2\) must be at most half the kernel size \(3, 3\)"):
        xpcnn.MaxPool2d(3, padding=2)
    with pytest.raises(ValueError, match=r"Dropout: p must be in \[0, 1\), got 1.0"):
        xpcnn.Dropout(1.0)
    with pytest.raises(ValueError, match=r"AdaptiveAvgPool2d: output_size must be >= 1"):
        xpcnn.AdaptiveAvgPool2d(0)
    with pytest.raises(ValueError, match=r"unknown backend 'jax'; valid backends are numpy, cupy"):
        xpcnn.Sequential(xpcnn.ReLU(), backend="jax")
    with pytest.raises(ValueError, match=r"dtype must be one of .*got 'float16'"):
        xpcnn.Sequential(xpcnn.ReLU(), dtype="float16")
    with pytest.raises(ValueError, match=r"does not support float64"):
        xpcnn.Sequential(xpcnn.ReLU(), backend="array_api_strict:no_float64", dtype="float64")
    with pytest.raises(TypeError, match=r"Sequential: argument 1 is a int, not an xpcnn layer"):
        xpcnn.Sequential(xpcnn.ReLU(), 3)
    bn = xpcnn.Sequential(xpcnn.BatchNorm1d(3), dtype="float64")
    with pytest.raises(ValueError, match=r"layer '0' BatchNorm1d.*needs more than 1 value per channel"):
        bn.forward(np.zeros((1, 3)))
