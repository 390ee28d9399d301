"""Fully connected layer ``y = x @ W.T + b`` and flattening."""
from __future__ import annotations

import math

from array_api_compat import array_namespace


def linear_forward(x, weight, bias=None):
    """``x (N, in) -> (N, out)`` with ``weight (out, in)`` as in PyTorch. Returns ``(y, ctx)``."""
    xp = array_namespace(x, weight)
    if x.ndim != 2:
        raise ValueError(f"linear expects a 2-D input (N, features), got shape {tuple(x.shape)}")
    if x.shape[1] != weight.shape[1]:
        raise ValueError(f"linear: input has {x.shape[1]} features, weight expects {weight.shape[1]}")
    y = x @ xp.matrix_transpose(weight)
    if bias is not None:
        y += bias
    return y, (x, weight, bias is not None)


def linear_backward(dy, ctx):
    """Gradients ``(dx, dweight, dbias)``."""
    x, weight, has_bias = ctx
    xp = array_namespace(dy, weight)
    dx = dy @ weight
    dw = xp.matrix_transpose(dy) @ x
    db = xp.sum(dy, axis=0) if has_bias else None
    return dx, dw, db


def linear_backward_params(dy, ctx):
    """``(dweight, dbias)`` only: :func:`linear_backward` without the input gradient."""
    x, weight, has_bias = ctx
    xp = array_namespace(dy, weight)
    return xp.matrix_transpose(dy) @ x, (xp.sum(dy, axis=0) if has_bias else None)


def linear(x, weight, bias=None):
    """Forward only."""
    return linear_forward(x, weight, bias)[0]


def flatten(x, start_dim: int = 1, end_dim: int = -1):
    """Collapse the axes ``start_dim`` to ``end_dim`` (both included; ``end_dim`` may count from the end) into
    one: ``(N, C, H, W) -> (N, C*H*W)`` by default."""
    xp = array_namespace(x)
    shape = tuple(x.shape)
    end = end_dim + max(1, len(shape)) if end_dim < 0 else end_dim
    # the collapsed size written out, not -1: ambiguous at N = 0
    return xp.reshape(x, shape[:start_dim] + (math.prod(shape[start_dim:end + 1]),) + shape[end + 1:])
