"""Against PyTorch (optional: skipped without torch): layers forward/backward via to_torch, optimizers, losses."""
from __future__ import annotations

import numpy as np
import pytest

import xpcnn
from gradcheck import assert_close

torch = pytest.importorskip("torch")
from xpcnn.tools.torch_compat import to_torch  # noqa: E402


def _t(a):
    return torch.from_numpy(np.array(a, dtype=np.float64))


def conv_stack():
    # (no bias directly before a batch norm in training: its gradient is exactly 0 up to rounding noise)
    return [xpcnn.Conv2d(3, 4, (2, 2), padding="same", dilation=(2, 1)), xpcnn.ReLU(), xpcnn.BatchNorm2d(4),
            xpcnn.MaxPool2d(3, stride=2, padding=1),
            xpcnn.Conv2d(4, 6, (3, 2), stride=(1, 2), padding=(1, 2), groups=2), xpcnn.LeakyReLU(0.1),
            xpcnn.AvgPool2d((2, 3), stride=1, padding=1),
            xpcnn.Conv2d(6, 6, 1, groups=6, bias=False), xpcnn.Sigmoid(),
            xpcnn.AdaptiveAvgPool2d((2, 3)), xpcnn.Flatten(), xpcnn.Linear(36, 7), xpcnn.Tanh(),
            xpcnn.BatchNorm1d(7), xpcnn.Dropout(0.0), xpcnn.Linear(7, 4)]


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_model_forward_backward_matches_torch(mode, rng):
    model = xpcnn.Sequential(*conv_stack(), backend="numpy", dtype="float64", seed=11)
    net = to_torch(model)
    if mode == "eval":  # non-trivial running statistics first
        warm = rng.standard_normal((4, 3, 9, 8))
        model.forward(warm)
        with torch.no_grad():
            net(_t(warm))
        model.eval()
        net.eval()
    x = rng.standard_normal((3, 3, 9, 8))
    xt = _t(x).requires_grad_(True)
    yt = net(xt)
    y = model.forward(x)
    assert_close(y, yt.detach().numpy(), 1e-7, "forward")
    dy = rng.standard_normal(y.shape)
    yt.backward(_t(dy))
    model.zero_grad()
    dx = model.backward(dy)
    assert_close(dx, xt.grad.numpy(), 1e-7, "dx")
    tparams = dict(net.named_parameters())
    for name, p in model.named_parameters():
        assert_close(p.grad, tparams[name].grad.numpy(), 1e-7, f"{name}.grad")
    tstate = net.state_dict()
    for name, v in model.state_dict().items():
        if "num_batches_tracked" in name:
            assert int(v) == int(tstate[name])
        else:
            assert_close(v, tstate[name].numpy(), 1e-7, name)


def test_max_pool_ties_like_torch():
    x = np.ones((1, 2, 5, 5))
    x[0, 1, 2, 2] = 3.0
    x[0, 1, 1, 3] = 3.0
    model = xpcnn.Sequential(xpcnn.MaxPool2d(3, stride=1, padding=1), backend="numpy", dtype="float64")
    xt = _t(x).requires_grad_(True)
    torch.nn.functional.max_pool2d(xt, 3, 1, 1).backward(_t(np.arange(50.0).reshape(1, 2, 5, 5)))
    model.forward(x)
    dx = model.backward(np.arange(50.0).reshape(1, 2, 5, 5))
    np.testing.assert_array_equal(dx, xt.grad.numpy())


OPTIMS = [
    ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.2, weight_decay=0.01)),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("Adam", dict(lr=0.01, betas=(0.8, 0.95), weight_decay=0.1)),
    ("AdamW", dict(lr=0.01, weight_decay=0.2)),
]


@pytest.mark.parametrize("name,kw", OPTIMS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(OPTIMS)])
def test_optimizers_match_torch(name, kw, rng):
    p0 = rng.standard_normal((3, 4))
    grads = [rng.standard_normal((3, 4)) for _ in range(6)]
    p = xpcnn.Parameter(p0.copy(), np.zeros_like(p0))
    opt = getattr(xpcnn.optim, name)([p], **kw)
    pt = torch.nn.Parameter(_t(p0))
    topt = getattr(torch.optim, name)([pt], **kw)
    for g in grads:
        opt.zero_grad()
        p.grad += g
        opt.step()
        pt.grad = _t(g)
        topt.step()
    assert_close(p.data - p0, pt.detach().numpy() - p0, 1e-7, f"{name} update")


def test_losses_match_torch(rng):
    logits = rng.standard_normal((5, 4)) * 10
    logits[0] = [1e300, -1e300, 0, 0]
    labels = np.array([0, 3, 1, 1, 2])
    ce = xpcnn.CrossEntropyLoss()
    lt = _t(logits).requires_grad_(True)
    ref = torch.nn.functional.cross_entropy(lt, torch.from_numpy(labels))
    ref.backward()
    with np.errstate(over="ignore"):
        loss = ce(logits, labels)
    assert_close(loss, ref.item(), 1e-7, "cross-entropy")
    assert_close(ce.backward(), lt.grad.numpy(), 1e-7, "cross-entropy grad")
    pred, target = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    pt = _t(pred).requires_grad_(True)
    ref = torch.nn.functional.mse_loss(pt, _t(target))
    ref.backward()
    mse = xpcnn.MSELoss()
    assert_close(mse(pred, target), ref.item(), 1e-7, "mse")
    assert_close(mse.backward(), pt.grad.numpy(), 1e-7, "mse grad")


def test_init_distribution_like_torch():
    """Same bounds as torch's default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for conv and linear."""
    for layer, tlayer in [(xpcnn.Conv2d(6, 9, (3, 2), groups=3), torch.nn.Conv2d(6, 9, (3, 2), groups=3)),
                          (xpcnn.Linear(10, 5), torch.nn.Linear(10, 5))]:
        model = xpcnn.Sequential(layer, backend="numpy", dtype="float64", seed=0)
        for name, tp in tlayer.named_parameters():
            bound = max(abs(tp.detach().numpy()).max(), 1e-12)
            ours = abs(getattr(model[0], name).data).max()
            fan_in = tp.shape[1] * int(np.prod(tp.shape[2:])) if name == "weight" else tlayer.weight[0].numel()
            assert ours <= 1 / np.sqrt(fan_in) and bound <= 1 / np.sqrt(fan_in) + 1e-7
