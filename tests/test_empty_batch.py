"""An empty batch (N = 0) runs through every layer, forward and backward, as in PyTorch: empty outputs and input
gradients of the right shapes, parameter gradients of zero; batch norm in training too, as PyTorch."""
from __future__ import annotations

import numpy as np
import pytest

import xpcnn

LAYERS = [
    (lambda: xpcnn.Conv2d(3, 4, 3, padding=1), (3, 8, 8), (4, 8, 8)),
    (lambda: xpcnn.Conv2d(3, 4, 3, stride=2), (3, 9, 9), (4, 4, 4)),
    (lambda: xpcnn.Conv2d(16, 16, 3, padding=1), (16, 6, 6), (16, 6, 6)),  # channels-innermost columns
    (lambda: xpcnn.Conv2d(16, 8, 1), (16, 5, 5), (8, 5, 5)),              # input rows as columns
    (lambda: xpcnn.Conv2d(1, 6, 5, padding=2), (1, 12, 12), (6, 12, 12)),  # width-blocked columns
    (lambda: xpcnn.Conv2d(4, 4, 3, groups=2), (4, 6, 6), (4, 4, 4)),
    (lambda: xpcnn.MaxPool2d(2), (3, 8, 8), (3, 4, 4)),
    (lambda: xpcnn.MaxPool2d(3, stride=2, padding=1), (3, 8, 8), (3, 4, 4)),
    (lambda: xpcnn.AvgPool2d(2), (3, 8, 8), (3, 4, 4)),
    (lambda: xpcnn.AdaptiveAvgPool2d(1), (3, 8, 8), (3, 1, 1)),
    (lambda: xpcnn.Flatten(), (3, 2, 2), (12,)),
    (lambda: xpcnn.Linear(12, 5), (12,), (5,)),
    (lambda: xpcnn.ReLU(), (3, 4, 4), (3, 4, 4)),
    (lambda: xpcnn.LeakyReLU(0.1), (3, 4, 4), (3, 4, 4)),
    (lambda: xpcnn.Sigmoid(), (6,), (6,)),
    (lambda: xpcnn.Tanh(), (6,), (6,)),
    (lambda: xpcnn.Dropout(0.5), (6,), (6,)),
]


@pytest.mark.parametrize("make, in_shape, out_shape", LAYERS, ids=lambda v: repr(v()) if callable(v) else None)
def test_layers_run_an_empty_batch(make, in_shape, out_shape, env):
    model = env.model(make(), seed=1)
    model.train()
    y = model.forward(np.zeros((0,) + in_shape))
    assert tuple(y.shape) == (0,) + out_shape
    dx = model.backward(env.put(np.zeros((0,) + out_shape)))
    assert tuple(dx.shape) == (0,) + in_shape
    for p in model.parameters():
        assert tuple(p.grad.shape) == tuple(p.data.shape) and np.all(env.get(p.grad) == 0)
    model.eval()
    assert tuple(model.forward(np.zeros((0,) + in_shape)).shape) == (0,) + out_shape


@pytest.mark.parametrize("cls,shape", [(xpcnn.BatchNorm2d, (0, 3, 4, 4)), (xpcnn.BatchNorm1d, (0, 3)),
                                       (xpcnn.BatchNorm1d, (0, 3, 5))])
@pytest.mark.parametrize("plan", ["cpu", "gpu"])
def test_batch_norm_takes_an_empty_batch(cls, shape, env, plan):
    """As PyTorch: in training an empty batch gives an empty output and zero gradients, leaves the running
    statistics as they are and counts the batch; one value per channel is refused. On both plans (tiled rows,
    the plain form)."""
    with xpcnn.using(plan=plan):
        _empty_batch_norm(cls, shape, env)


def _empty_batch_norm(cls, shape, env):
    model = env.model(cls(3, momentum=None))
    bn = model[0]
    warm = (2, 3) + (4,) * (len(shape) - 2)
    model.forward(np.arange(float(np.prod(warm))).reshape(warm) % 7)
    rm, rv = env.get(bn.running_mean), env.get(bn.running_var)
    y = model.forward(np.zeros(shape))
    assert tuple(y.shape) == shape
    assert np.array_equal(env.get(bn.running_mean), rm) and np.array_equal(env.get(bn.running_var), rv)
    assert int(xpcnn.to_numpy(bn.num_batches_tracked)) == 2
    model.zero_grad()
    assert tuple(model.backward(np.zeros(shape)).shape) == shape
    assert np.all(env.get(bn.weight.grad) == 0) and np.all(env.get(bn.bias.grad) == 0)
    model.eval()
    assert tuple(model.forward(np.zeros(shape)).shape) == shape
    model.train()
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        model.forward(np.zeros((1,) + shape[1:2] + (1,) * (len(shape) - 2)))


@pytest.mark.parametrize("threads", [1, 2])
def test_models_run_an_empty_batch(threads):
    """LeNet end to end, on one and two worker threads."""
    from xpcnn.models import build_model
    with xpcnn.using(num_threads=threads):
        model = build_model("lenet", 1, 10, 28, backend="numpy", dtype="float32", seed=0)
        y = model.forward(np.zeros((0, 1, 28, 28), np.float32))
        assert y.shape == (0, 10)
        assert model.backward(np.zeros((0, 10), np.float32)).shape == (0, 1, 28, 28)


def test_losses_of_an_empty_batch_are_nan_with_an_empty_gradient(env):
    """As PyTorch: the mean over no samples is NaN, and its gradient is empty (not a division by zero)."""
    ce = xpcnn.CrossEntropyLoss()
    with np.errstate(invalid="ignore"):
        loss = ce(env.put(np.zeros((0, 10))), np.zeros((0,), np.int64))
    assert np.isnan(env.get(loss))
    assert tuple(ce.backward().shape) == (0, 10)
    mse = xpcnn.MSELoss()
    with np.errstate(invalid="ignore"):
        loss = mse(env.put(np.zeros((0, 3))), env.put(np.zeros((0, 3))))
    assert np.isnan(env.get(loss))
    assert tuple(mse.backward().shape) == (0, 3)
