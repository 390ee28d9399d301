"""Batch normalisation: PyTorch's training/eval semantics and running statistics, forward and backward."""
from __future__ import annotations

import numpy as np
import pytest

import reference as ref
import xpcnn
import xpcnn.functional as F
from xpcnn import config
from xpcnn.functional import norm
from conftest import make_env
from gradcheck import assert_close, check_grads, numerical_grad

SHAPES = {"2d": (5, 3), "3d": (3, 3, 4), "4d": (2, 3, 4, 3)}


@pytest.fixture(params=["cpu", "gpu"])
def plan(request):
    """The test runs on both plans: the CPU's tiled rows, the GPU's plain form (``norm._plain``); restored after."""
    with xpcnn.using(plan=request.param):
        yield request.param


def _ref_grads(x, gamma, beta, dy, training, rm, rv, eps=1e-5):
    """Numerical gradients of the reference forward (independent of the library's backward)."""
    if training:
        fwd = lambda x_, g_, b_: ref.batch_norm_train(x_, g_, b_, rm, rv, eps=eps)[0]  # noqa: E731
    else:
        fwd = lambda x_, g_, b_: ref.batch_norm_eval(x_, g_, b_, rm, rv, eps)  # noqa: E731
    x, gamma, beta = x.copy(), gamma.copy(), beta.copy()
    out = []
    for k, a in enumerate((x, gamma, beta)):
        args = [x, gamma, beta]
        out.append(numerical_grad(lambda: float(np.sum(fwd(*args) * dy)), a))
    return out


@pytest.mark.parametrize("kind", ["2d", "3d", "4d"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batch_norm_functional_numpy(kind, training, plan, rng):
    shape = SHAPES[kind]
    x = rng.standard_normal(shape) * 3 + 1
    g, b = rng.standard_normal(3), rng.standard_normal(3)
    rm, rv = rng.standard_normal(3), rng.uniform(0.5, 2, 3)
    y, nrm, nrv, ctx = F.batch_norm_forward(x, g, b, rm, rv, training, 0.1, 1e-5)
    if training:
        y_ref, rm_ref, rv_ref = ref.batch_norm_train(x, g, b, rm, rv)
        assert_close(nrm, rm_ref, 1e-7, "running_mean")
        assert_close(nrv, rv_ref, 1e-7, "running_var (unbiased)")
    else:
        y_ref = ref.batch_norm_eval(x, g, b, rm, rv)
        assert nrm is rm and nrv is rv
    assert_close(y, y_ref, 1e-7, "batch_norm forward")
    dy = rng.standard_normal(shape)
    dx, dg, db = F.batch_norm_backward(dy, ctx)
    check_grads(lambda x_, g_, b_: F.batch_norm(x_, g_, b_, rm.copy(), rv.copy(), training), [x, g, b],
                [dx, dg, db], dy, names=["x", "weight", "bias"])


@pytest.mark.parametrize("cls,kind", [(xpcnn.BatchNorm2d, "4d"), (xpcnn.BatchNorm1d, "2d"), (xpcnn.BatchNorm1d, "3d")])
def test_batch_norm_layer_train_eval_running_stats(cls, kind, env, plan, rng):
    """Two training steps (running stats as PyTorch: momentum 0.1, eps 1e-5, unbiased running var),
    then eval uses them; gradients against numerical gradients of the reference."""
    shape = SHAPES[kind]
    model = env.model(cls(3))
    bn = model[0]
    gamma, beta = rng.standard_normal(3), rng.standard_normal(3)
    model.load_state_dict({"0.weight": gamma, "0.bias": beta, "0.running_mean": np.zeros(3),
                           "0.running_var": np.ones(3), "0.num_batches_tracked": np.zeros((), np.int64)})
    gamma, beta = env.ref_input(gamma), env.ref_input(beta)
    rm, rv = np.zeros(3), np.ones(3)
    for step in range(2):
        x = env.ref_input(rng.standard_normal(shape) * 2 + step)
        y = model.forward(env.put(x))
        y_ref, rm, rv = ref.batch_norm_train(x, gamma, beta, rm, rv)
        assert_close(env.get(y), y_ref, env.tol, f"train forward step {step}")
    assert_close(env.get(bn.running_mean), rm, env.tol, "running_mean")
    assert_close(env.get(bn.running_var), rv, env.tol, "running_var")
    assert int(xpcnn.to_numpy(bn.num_batches_tracked)) == 2
    dy = env.ref_input(rng.standard_normal(shape))
    model.zero_grad()
    dx = model.backward(env.put(dy))
    dx_ref, dg_ref, db_ref = _ref_grads(x, gamma, beta, dy, True, rm, rv)
    assert_close(env.get(dx), dx_ref, env.tol, "train dx")
    assert_close(env.get(bn.weight.grad), dg_ref, env.tol, "weight.grad")
    assert_close(env.get(bn.bias.grad), db_ref, env.tol, "bias.grad")

    model.eval()
    x = env.ref_input(rng.standard_normal(shape))
    y = model.forward(env.put(x))
    assert_close(env.get(y), ref.batch_norm_eval(x, gamma, beta, rm, rv), env.tol, "eval forward")
    assert_close(env.get(bn.running_mean), rm, env.tol, "eval leaves running_mean")
    assert int(xpcnn.to_numpy(bn.num_batches_tracked)) == 2
    model.zero_grad()
    dx = model.backward(env.put(dy))
    dx_ref, dg_ref, db_ref = _ref_grads(x, gamma, beta, dy, False, rm, rv)
    assert_close(env.get(dx), dx_ref, env.tol, "eval dx")
    assert_close(env.get(bn.weight.grad), dg_ref, env.tol, "eval weight.grad")


def test_batch_norm_no_affine_no_running_stats(plan, rng):
    model = xpcnn.Sequential(xpcnn.BatchNorm2d(3, affine=False, track_running_stats=False, eps=1e-3),
                             backend="numpy", dtype="float64")
    assert model.state_dict() == {} and model.parameters() == []
    x = rng.standard_normal((2, 3, 3, 4))
    ones, zeros = np.ones(3), np.zeros(3)
    y_ref = ref.batch_norm_train(x, ones, zeros, zeros, ones, eps=1e-3)[0]
    model.eval()  # without running stats, eval also normalises with the batch statistics (as PyTorch)
    assert_close(model.forward(x), y_ref, 1e-7, "forward")
    dy = rng.standard_normal(x.shape)
    dx = model.backward(dy)
    check_grads(lambda x_: model.forward(x_), [x], [dx], dy)


def test_batch_norm_custom_momentum(plan, rng):
    model = xpcnn.Sequential(xpcnn.BatchNorm1d(4, momentum=0.3), backend="numpy", dtype="float64")
    x = rng.standard_normal((6, 4))
    model.forward(x)
    _, rm, rv = ref.batch_norm_train(x, np.ones(4), np.zeros(4), np.zeros(4), np.ones(4), momentum=0.3)
    assert_close(model[0].running_mean, rm, 1e-7, "running_mean")
    assert_close(model[0].running_var, rv, 1e-7, "running_var")


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "no-affine"])
@pytest.mark.parametrize("track", [True, False], ids=["running", "no-running"])
@pytest.mark.parametrize("cls,kind", [(xpcnn.BatchNorm2d, "4d"), (xpcnn.BatchNorm1d, "3d")])
def test_batch_norm_options(cls, kind, affine, track, env, plan, rng):
    """affine=False: no weight or bias; track_running_stats=False: no buffers, batch statistics in eval too;
    momentum=None: the running statistics are the cumulative average of the batches' (num_batches_tracked)."""
    shape = SHAPES[kind]
    model = env.model(cls(3, 1e-3, None, affine, track))
    bn = model[0]
    keys = (["0.weight", "0.bias"] if affine else []) + (
        ["0.running_mean", "0.running_var", "0.num_batches_tracked"] if track else [])
    assert list(model.state_dict()) == keys
    ones, zeros = np.ones(3), np.zeros(3)
    means, variances = [], []
    for step in range(3):
        x = env.ref_input(rng.standard_normal(shape) * (step + 1) + step)
        y = model.forward(env.put(x))
        y_ref, rm, rv = ref.batch_norm_train(x, ones, zeros, zeros, zeros, momentum=1.0, eps=1e-3)
        assert_close(env.get(y), y_ref, env.tol, f"forward step {step}")
        means.append(rm)
        variances.append(rv)
    if track:
        assert_close(env.get(bn.running_mean), np.mean(means, axis=0), env.tol, "cumulative running_mean")
        assert_close(env.get(bn.running_var), np.mean(variances, axis=0), env.tol, "cumulative running_var")
        assert int(xpcnn.to_numpy(bn.num_batches_tracked)) == 3
    dy = env.ref_input(rng.standard_normal(shape))
    model.zero_grad()
    dx = model.backward(env.put(dy))
    dx_ref = _ref_grads(x, ones, zeros, dy, True, zeros, ones, eps=1e-3)[0]
    assert_close(env.get(dx), dx_ref, env.tol, "dx")
    model.eval()
    x = env.ref_input(rng.standard_normal(shape))
    y = model.forward(env.put(x))
    if track:
        y_ref = ref.batch_norm_eval(x, ones, zeros, np.mean(means, axis=0), np.mean(variances, axis=0), 1e-3)
    else:  # no running statistics: eval normalises with the batch's, as PyTorch
        y_ref = ref.batch_norm_train(x, ones, zeros, zeros, ones, eps=1e-3)[0]
    assert_close(env.get(y), y_ref, env.tol, "eval forward")
    dx = model.backward(env.put(dy))
    dx_ref = _ref_grads(x, ones, zeros, dy, not track, np.mean(means, axis=0), np.mean(variances, axis=0),
                        eps=1e-3)[0]
    assert_close(env.get(dx), dx_ref, env.tol, "eval dx")


@pytest.mark.parametrize("kwargs,match", [
    (dict(eps=-1), "eps must be a number > 0"), (dict(eps=0), "eps must be a number > 0"),
    (dict(eps="1e-5"), "eps must be a number > 0"), (dict(momentum=1.5), r"momentum must be a number in \[0, 1\]"),
    (dict(momentum=-0.1), "momentum must be"), (dict(momentum=True), "momentum must be"),
    (dict(device="cuda"), "device='cuda' per layer is not supported"),
    (dict(dtype="float64"), "dtype='float64' per layer is not supported")])
def test_batch_norm_refuses_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        xpcnn.BatchNorm2d(3, **kwargs)


def test_batch_norm_input_ranks():
    with pytest.raises(ValueError, match=r"expected a 4-D input \(N, C, H, W\), got shape \(3, 4, 4\)"):
        xpcnn.Sequential(xpcnn.BatchNorm2d(3), backend="numpy")(np.zeros((3, 4, 4)))  # unbatched: not in torch
    with pytest.raises(ValueError, match=r"expected a 2-D or 3-D input \(N, C\) or \(N, C, L\), got shape \(3,\)"):
        xpcnn.Sequential(xpcnn.BatchNorm1d(3), backend="numpy")(np.zeros(3))
    xpcnn.BatchNorm1d(np.int64(3), 1e-5, 0.1, True, True, None, None)  # every default, in PyTorch's order


@pytest.mark.parametrize("key", ["numpy", "strict", "strict-device1", "torch"])
@pytest.mark.parametrize("kind", ["2d", "3d", "4d"])
def test_gpu_plan_runs_the_plain_form_with_the_cpu_plans_results(kind, key, rng):
    """Every option of the functional form (affine or not, running statistics or not, momentum a number or a 0-d
    array, training or eval, an empty batch): the GPU plan runs the plain form, the CPU plan the tiled rows, and
    they agree in float64 (forward, running statistics, the three gradients); the inputs are left as they were."""
    if key == "torch":
        pytest.importorskip("torch", reason="torch not installed (optional)")
    env = make_env(key)
    shape = SHAPES[kind]
    x0, dy0 = rng.standard_normal(shape) * 2 + 1, rng.standard_normal(shape)
    g0, b0, rm0, rv0 = rng.standard_normal(3), rng.standard_normal(3), rng.standard_normal(3), rng.uniform(0.5, 2, 3)
    cases = [(affine, running, training, momentum, n) for affine in (True, False) for running in (True, False)
             for training in (True, False) for momentum in (0.1, "0-d") for n in (shape[0], 0)
             if (running or training) and (training or momentum == 0.1) and (n or training)]
    for affine, running, training, momentum, n in cases:
        results = {}
        for name in ("cpu", "gpu"):
            config.set_plan(name)
            x, dy = env.put(x0[:n]), env.put(dy0[:n])
            g, b = (env.put(g0), env.put(b0)) if affine else (None, None)
            rm, rv = (env.put(rm0), env.put(rv0)) if running else (None, None)
            m = env.xp.asarray(0.25, dtype=env.dtype, device=env.backend.device) if momentum == "0-d" else momentum
            y, nrm, nrv, ctx = F.batch_norm_forward(x, g, b, rm, rv, training, m, 1e-3)
            assert isinstance(ctx, norm._PlainContext) == (name == "gpu")  # the path that ran
            dx, dg, db = F.batch_norm_backward(dy, ctx)
            assert (dg is None) == (db is None) == (not affine)
            assert np.array_equal(env.get(x), x0[:n]) and np.array_equal(env.get(dy), dy0[:n])
            results[name] = [env.get(a) for a in (y, nrm, nrv, dx, dg, db) if a is not None]
        assert len(results["gpu"]) == len(results["cpu"]) == 2 + 2 * running + 2 * affine
        for k, (a, c) in enumerate(zip(results["gpu"], results["cpu"])):
            assert a.shape == c.shape
            assert_close(a, c, env.tol, f"{key} {kind} affine={affine} running={running} training={training} "
                                        f"momentum={momentum} n={n}: result {k}")
