"""End to end: a small CNN fits a generated, learnable data set; the same seed trains bit-identically."""
from __future__ import annotations

import numpy as np
import pytest

import xpcnn


def make_data(n=24, side=6, seed=0):
    """Class = which quadrant holds a bright 2x2 blob (3 classes: top-left, top-right, bottom), plus noise."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 0.3, (n, 1, side, side))
    y = np.arange(n) % 3
    for i, c in enumerate(y):
        r = rng.integers(0, 2) if c < 2 else rng.integers(3, side - 2)
        col = rng.integers(0, 2) if c == 0 else rng.integers(3, side - 2)
        x[i, 0, r:r + 2, col:col + 2] += 2.0
    return x, y


def cnn(dropout=0.0, bn=False, **kw):
    layers = [xpcnn.Conv2d(1, 6, 3, padding=1)] + ([xpcnn.BatchNorm2d(6)] if bn else []) + [
        xpcnn.ReLU(), xpcnn.MaxPool2d(2), xpcnn.Flatten(), xpcnn.Linear(6 * 3 * 3, 16), xpcnn.Tanh()]
    layers += ([xpcnn.Dropout(dropout)] if dropout else []) + [xpcnn.Linear(16, 3)]
    return xpcnn.Sequential(*layers, **kw)


def train(model, x, y, steps, opt="adam", batch=None):
    loss_fn = xpcnn.CrossEntropyLoss()
    optim = (xpcnn.optim.Adam(model.parameters(), lr=0.02) if opt == "adam"
             else xpcnn.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4))
    xb, yb = model.backend.asarray(x), model.backend.asarray(y)
    losses = []
    n = x.shape[0]
    for step in range(steps):
        if batch:
            i = (step * batch) % n
            xs, ys = xb[i:i + batch, ...], yb[i:i + batch]
        else:
            xs, ys = xb, yb
        optim.zero_grad()
        loss = loss_fn(model.forward(xs), ys)
        model.backward(loss_fn.backward())
        optim.step()
        losses.append(loss)
    return [float(xpcnn.to_numpy(v)) for v in losses]


@pytest.mark.parametrize("spec,dtype,opt", [("numpy", "float64", "adam"), ("numpy", "float32", "sgd"),
                                            ("array_api_strict:device1", "float32", "adam")])
def test_small_cnn_reaches_near_zero_training_loss(spec, dtype, opt):
    x, y = make_data()
    model = cnn(backend=spec, dtype=dtype, seed=0)
    losses = train(model, x, y, steps=200, opt=opt)
    assert losses[0] > 0.8  # starts near log(3)
    assert losses[-1] < 0.01, losses[-10:]
    model.eval()
    pred = np.argmax(xpcnn.to_numpy(model.forward(x)), axis=1)
    assert np.array_equal(pred, y)


@pytest.mark.parametrize("spec", ["numpy", "array_api_strict:no_float64"])
def test_same_seed_bit_identical_weights(spec):
    """Dropout masks, batch-norm statistics, minibatches and Adam: twice with seed 3 -> identical bits."""
    x, y = make_data(seed=1)

    def run(seed):
        model = cnn(dropout=0.2, bn=True, backend=spec, dtype="float32", seed=seed)
        train(model, x, y, steps=30, batch=8)
        return {k: xpcnn.to_numpy(v) for k, v in model.state_dict().items()}

    a, b, c = run(3), run(3), run(4)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].tobytes() == b[k].tobytes(), k
    assert a["0.weight"].tobytes() != c["0.weight"].tobytes()
