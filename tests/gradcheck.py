"""Central-difference numerical gradients and the relative error used by every correctness test.

Use on small float64 NumPy tensors only: each element costs two forward passes.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np


def rel_err(actual, expected) -> float:
    """``max|actual - expected| / max|expected|`` (infinity-norm relative error; 0 when both are 0)."""
    a, e = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert a.shape == e.shape, f"shape {a.shape} != expected {e.shape}"
    scale = float(np.max(np.abs(e))) if e.size else 0.0
    diff = float(np.max(np.abs(a - e))) if e.size else 0.0
    if scale == 0.0:
        return diff
    return diff / scale


def assert_close(actual, expected, tol: float = 1e-7, what: str = "") -> None:
    err = rel_err(actual, expected)
    assert err < tol, f"{what}: relative error {err:.3e} >= {tol:.1e}"


def numerical_grad(f: Callable[[], float], x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """d f / d x by central differences; ``x`` (float64) is perturbed in place and restored."""
    assert x.dtype == np.float64, "numerical gradients need float64"
    g = np.zeros_like(x)
    flat, gflat = x.reshape(-1), g.reshape(-1)
    assert np.shares_memory(flat, x)
    for k in range(flat.size):
        old = flat[k]
        flat[k] = old + eps
        fp = float(f())
        flat[k] = old - eps
        fm = float(f())
        flat[k] = old
        gflat[k] = (fp - fm) / (2 * eps)
    return g


def check_grads(forward: Callable[..., np.ndarray], inputs: Sequence[np.ndarray], analytic: Sequence[np.ndarray],
                dy: np.ndarray, tol: float = 1e-7, eps: float = 1e-6, names: Sequence[str] | None = None) -> None:
    """Compare ``analytic[k]`` with the numerical gradient of ``sum(forward(*inputs) * dy)`` w.r.t. ``inputs[k]``.

    ``forward`` must read the arrays in ``inputs`` afresh at every call (they are perturbed in place).
    """
    def f():
        return float(np.sum(np.asarray(forward(*inputs), np.float64) * dy))

    for k, (x, a) in enumerate(zip(inputs, analytic)):
        if a is None:
            continue
        name = names[k] if names else f"input {k}"
        assert_close(a, numerical_grad(f, x, eps), tol, f"gradient w.r.t. {name}")


def assert_matches_torch(model, net, x: np.ndarray, rng: np.random.Generator, tol: float) -> None:
    """One forward and backward of ``model`` (xpcnn, float64) and its torch twin ``net`` on ``x``: the outputs,
    the input gradients and every parameter's gradient agree to ``tol``."""
    import torch

    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    yt = net(xt)
    y = model(x)
    assert_close(y, yt.detach().numpy(), tol, "forward")
    dy = rng.standard_normal(y.shape)
    yt.backward(torch.from_numpy(dy))
    model.zero_grad()
    assert_close(model.backward(dy), xt.grad.numpy(), tol, "input gradient")
    tparams = dict(net.named_parameters())
    for name, p in model.named_parameters():
        assert_close(p.grad, tparams[name].grad.numpy(), tol, f"{name}.grad")
