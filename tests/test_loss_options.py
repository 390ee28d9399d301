"""CrossEntropyLoss's and MSELoss's PyTorch options: reductions, class weights, ignore_index, label smoothing,
class-probability targets, per-position and unbatched inputs; values and gradients against a loop reference and
numerical gradients (float64), on every backend, and against PyTorch where installed."""
from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest

import xpcnn
from conftest import HAVE_TORCH
from gradcheck import assert_close, check_grads


def ce_ref(logits, target, weight=None, ignore_index=-100, label_smoothing=0.0, reduction="mean"):
    """PyTorch's cross-entropy, one position at a time: logits ``(N, C, *d)`` or ``(C,)``."""
    logits = np.asarray(logits, np.float64)
    single = logits.ndim == 1
    if single:
        logits, target = logits[None], np.asarray(target)[None]
    n, c = logits.shape[:2]
    soft = np.asarray(target).dtype.kind == "f"
    w = np.ones(c) if weight is None else np.asarray(weight, np.float64)
    eps = label_smoothing
    per = np.zeros((n,) + logits.shape[2:])
    total_weight = 0.0
    for i in range(n):
        for pos in itertools.product(*[range(d) for d in logits.shape[2:]]):
            z = [logits[(i, k) + pos] for k in range(c)]
            m = max(z)
            lse = m + math.log(sum(math.exp(v - m) for v in z))
            logp = [v - lse for v in z]
            if soft:
                t = [target[(i, k) + pos] * (1 - eps) + eps / c for k in range(c)]
                per[(i,) + pos] = -sum(w[k] * t[k] * logp[k] for k in range(c))
                total_weight += 1.0
            else:
                y = int(target[(i,) + pos])
                if y == ignore_index:
                    continue
                per[(i,) + pos] = -(1 - eps) * w[y] * logp[y] - eps / c * sum(w[k] * logp[k] for k in range(c))
                total_weight += w[y]
    if reduction == "none":
        return per[0] if single else per
    return per.sum() / total_weight if reduction == "mean" else per.sum()


# (logits shape, target kind, options): indices "idx" (with some ignored where the options say), probabilities "prob"
CASES = [
    ((5, 4), "idx", dict(weight=[0.5, 2.0, 1.0, 3.0])),
    ((6, 4), "idx", dict(weight=[0.5, 2.0, 1.0, 3.0], ignore_index=-100, reduction="mean")),  # -100 labels inside
    ((6, 3), "idx", dict(weight=[1.5, 0.2, 1.0], ignore_index=1, label_smoothing=0.2, reduction="sum")),
    ((2, 3, 3, 2), "idx", dict(label_smoothing=0.1)),
    ((3, 4, 5), "idx", dict(weight=[1.0, 2.0, 0.5, 1.5], ignore_index=2, reduction="none", label_smoothing=0.3)),
    ((5, 4), "prob", dict(weight=[0.5, 2.0, 1.0, 3.0], label_smoothing=0.3)),
    ((2, 3, 4), "prob", dict(reduction="none")),
    ((2, 3, 2, 2), "prob", dict(reduction="sum", weight=[1.0, 0.1, 2.0])),
    ((4,), "idx", dict(reduction="none", label_smoothing=0.2, weight=[1.0, 2.0, 3.0, 4.0])),
    ((4,), "prob", dict()),
    ((5, 3), "idx", dict(ignore_index=-1, reduction="none")),
]


def _target(shape, kind, opts, rng):
    c = shape[0] if len(shape) == 1 else shape[1]
    if kind == "prob":
        t = rng.uniform(0, 1, shape)
        return t / t.sum(axis=0 if len(shape) == 1 else 1, keepdims=True)
    t = rng.integers(0, c, () if len(shape) == 1 else (shape[0],) + shape[2:])
    if t.ndim and "ignore_index" in opts:
        t.reshape(-1)[::3] = opts["ignore_index"]
    return t


def _loss(opts, **kw):
    o = dict(opts)
    if "weight" in o:
        o["weight"] = np.array(o["weight"])
    return xpcnn.CrossEntropyLoss(**o, **kw)


@pytest.mark.parametrize("check_range", [None, False], ids=["checked", "unchecked"])
@pytest.mark.parametrize("shape,kind,opts", CASES, ids=[f"{s}-{k}-{sorted(o)}" for s, k, o in CASES])
def test_cross_entropy_options(shape, kind, opts, check_range, env, rng):
    logits = env.ref_input(rng.standard_normal(shape) * 2)
    target = _target(shape, kind, opts, rng)
    if kind == "prob":
        target = env.ref_input(target)
    ref_opts = dict(opts)
    expected = ce_ref(logits, target, **ref_opts)
    fn = _loss(opts, check_range=check_range)
    loss = fn(env.put(logits), target)
    assert tuple(loss.shape) == np.shape(expected)
    assert_close(env.get(loss), expected, env.tol, "loss")
    dy = rng.standard_normal(np.shape(expected)) if opts.get("reduction") == "none" else np.array(1.5)
    dy = env.ref_input(dy)
    grad = env.get(fn.backward(env.put(dy) if dy.ndim else float(dy)))
    assert grad.shape == logits.shape
    if env.dtype_name == "float64":
        check_grads(lambda z: ce_ref(z, target, **ref_opts), [logits.copy()], [grad], dy, names=["logits"])


@pytest.mark.skipif(not HAVE_TORCH, reason="torch not installed (optional)")
@pytest.mark.parametrize("shape,kind,opts", CASES, ids=[f"{s}-{k}-{sorted(o)}" for s, k, o in CASES])
def test_cross_entropy_options_match_torch(shape, kind, opts, rng):
    import torch
    logits = rng.standard_normal(shape) * 2
    target = _target(shape, kind, opts, rng)
    topts = dict(opts)
    if "weight" in topts:
        topts["weight"] = torch.tensor(topts["weight"], dtype=torch.float64)
    lt = torch.tensor(logits, requires_grad=True)
    ref = torch.nn.CrossEntropyLoss(**topts)(lt, torch.from_numpy(np.asarray(target)))
    dy = rng.standard_normal(tuple(ref.shape))
    ref.backward(torch.from_numpy(dy))
    fn = _loss(opts)
    assert_close(fn(logits, target), ref.detach().numpy(), 1e-12, "loss")
    assert_close(fn.backward(dy), lt.grad.numpy(), 1e-12, "gradient")


def test_cross_entropy_all_ignored_and_empty(env):
    """The mean over no counted target is NaN (as PyTorch), with finite zero gradients where nothing counts."""
    fn = xpcnn.CrossEntropyLoss()
    with np.errstate(invalid="ignore", divide="ignore"):
        loss = fn(env.put(np.zeros((3, 4))), np.array([-100, -100, -100]))
    assert np.isnan(env.get(loss))
    assert np.all(env.get(fn.backward()) == 0)  # as PyTorch: nothing counts, nothing moves
    with np.errstate(invalid="ignore", divide="ignore"):
        assert np.isnan(env.get(xpcnn.CrossEntropyLoss(label_smoothing=0.1)(
            env.put(np.zeros((0, 4, 2))), np.zeros((0, 2), np.int64))))
        assert np.isnan(env.get(xpcnn.CrossEntropyLoss()(env.put(np.zeros((0, 4))), env.put(np.zeros((0, 4))))))
    for red in ("sum", "none"):
        fn = xpcnn.CrossEntropyLoss(reduction=red)
        loss = fn(env.put(np.zeros((3, 4))), np.array([-100, 1, -100]))
        assert_close(env.get(loss), np.array([0, math.log(4), 0]) if red == "none" else math.log(4), 1e-6, red)
        g = env.get(fn.backward())
        assert np.all(g[[0, 2]] == 0) and np.all(np.isfinite(g))


def test_cross_entropy_errors():
    logits = np.zeros((3, 4))
    with pytest.raises(ValueError, match="reduction must be one of"):
        xpcnn.CrossEntropyLoss(reduction="avg")
    with pytest.raises(ValueError, match="label_smoothing must be between"):
        xpcnn.CrossEntropyLoss(label_smoothing=1.5)
    with pytest.raises(TypeError, match="ignore_index must be an int"):
        xpcnn.CrossEntropyLoss(ignore_index=1.0)
    with pytest.raises(ValueError, match="weight must be a 1-D array"):
        xpcnn.CrossEntropyLoss(weight=np.ones((2, 2)))
    with pytest.raises(ValueError, match="weight has 3 entries for 4 classes"):
        xpcnn.CrossEntropyLoss(weight=[1.0, 2.0, 3.0])(logits, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\].*ignore_index=-100.*\[-1, 2\]"):
        xpcnn.CrossEntropyLoss()(logits, np.array([0, -1, 2]))
    with pytest.raises(ValueError, match="not supported for class probabilities"):
        xpcnn.CrossEntropyLoss(ignore_index=0)(logits, np.full((3, 4), 0.25))
    with pytest.raises(ValueError, match=r"expected labels \(class indices\) of shape \(3, 5\)"):
        xpcnn.CrossEntropyLoss()(np.zeros((3, 4, 5)), np.zeros((3, 4), np.int64))
    with pytest.raises(ValueError, match=r"expected class probabilities of shape \(3, 4\)"):
        xpcnn.CrossEntropyLoss()(logits, np.zeros((3, 5)))
    with pytest.raises(TypeError, match="integer class indices or floating class probabilities"):
        xpcnn.CrossEntropyLoss()(logits, np.array([True, False, True]))
    with pytest.raises(TypeError, match="labels must be an array"):
        xpcnn.CrossEntropyLoss()(logits, None)
    xpcnn.CrossEntropyLoss(None, None, -100, None, "mean", 0.0)  # every default, passed in PyTorch's order


@pytest.mark.parametrize("size_average,reduce,expected", [(None, False, "none"), (False, None, "sum"),
                                                          (True, True, "mean"), (False, False, "none")])
def test_deprecated_size_average_and_reduce_map_as_torch(size_average, reduce, expected):
    for cls in (xpcnn.CrossEntropyLoss, xpcnn.MSELoss):
        with pytest.warns(UserWarning, match="deprecated"):
            fn = cls(size_average=size_average, reduce=reduce)
        assert fn.reduction == expected
    if HAVE_TORCH:
        import torch
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert torch.nn.CrossEntropyLoss(size_average=size_average, reduce=reduce).reduction == expected


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_mse_reductions(reduction, env, rng):
    pred = env.ref_input(rng.standard_normal((3, 2, 2)))
    target = env.ref_input(rng.standard_normal((3, 2, 2)))
    fn = xpcnn.MSELoss(reduction=reduction)
    sq = (pred - target) ** 2
    expected = {"mean": sq.mean(), "sum": sq.sum(), "none": sq}[reduction]
    loss = fn(env.put(pred), target)
    assert_close(env.get(loss), expected, env.tol, "mse")
    dy = env.ref_input(rng.standard_normal(sq.shape)) if reduction == "none" else np.array(0.7)
    d = env.get(fn.backward(env.put(dy) if dy.ndim else float(dy)))
    if env.dtype_name == "float64":
        red = {"mean": np.mean, "sum": np.sum, "none": lambda a: a}[reduction]
        check_grads(lambda p: red((p - target) ** 2), [pred.copy()], [d], dy)
    assert_close(d, 2 * (pred - target) * dy / (sq.size if reduction == "mean" else 1), env.tol, "mse grad")
    if HAVE_TORCH:
        import torch
        pt = torch.tensor(pred, requires_grad=True)
        ref = torch.nn.MSELoss(None, None, reduction)(pt, torch.tensor(target))
        ref.backward(torch.tensor(dy))
        if env.dtype_name == "float64":
            assert_close(env.get(loss), ref.detach().numpy(), 1e-12, "mse vs torch")
            assert_close(d, pt.grad.numpy(), 1e-12, "mse grad vs torch")


def test_loss_backward_checks_dloss_and_targets():
    for fn, args in ((xpcnn.CrossEntropyLoss(reduction="none"), (np.zeros((3, 4)), np.array([0, 1, 2]))),
                     (xpcnn.MSELoss(reduction="none"), (np.zeros((3,)), np.zeros((3,))))):
        fn(*args)
        with pytest.raises(ValueError, match=r"backward: dloss of shape \(5,\) does not match the loss \(3,\)"):
            fn.backward(np.ones(5))
        assert fn.backward(2.0).shape == args[0].shape  # a number scales every position's loss
    with pytest.raises(TypeError, match="MSELoss: the target must be an array, got NoneType"):
        xpcnn.MSELoss()(np.zeros(3), None)
