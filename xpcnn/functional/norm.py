"""Batch normalisation over (N,) or (N, H, W), as in PyTorch.

Training normalises with the biased batch variance and updates the running
variance with the unbiased one; evaluation uses the running statistics.
"""
from __future__ import annotations

import math

from array_api_compat import array_namespace


def _axes(x):
    if x.ndim == 2:
        return (0,), (1, x.shape[1])
    if x.ndim == 4:
        return (0, 2, 3), (1, x.shape[1], 1, 1)
    raise ValueError(f"batch_norm expects a 2-D (N, C) or 4-D (N, C, H, W) input, got shape {tuple(x.shape)}")


def batch_norm_forward(x, weight, bias, running_mean, running_var, training: bool = True,
                       momentum: float = 0.1, eps: float = 1e-5):
    """Returns ``(y, new_running_mean, new_running_var, ctx)``; running stats are new arrays.

    Centred variance (numerically safe); ``y = centered * scale + bias`` with the per-channel
    ``scale = weight / sqrt(var + eps)``: four passes over ``x``. Backward keeps ``centered`` (the size of
    ``x``, which nothing else holds) instead of ``xhat``.
    """
    xp = array_namespace(x)
    axes, shape = _axes(x)
    count = math.prod(x.shape) // x.shape[1]
    if training:
        if count < 2:
            raise ValueError(f"batch_norm in training needs more than 1 value per channel, got input shape {tuple(x.shape)}")
        mean = xp.mean(x, axis=axes)
        centered = x - xp.reshape(mean, shape)
        var = xp.mean(centered * centered, axis=axes)
        if running_mean is not None:
            running_mean = (1 - momentum) * running_mean + momentum * mean
            running_var = (1 - momentum) * running_var + momentum * (var * (count / (count - 1)))
    else:
        mean, var = running_mean, running_var
        centered = x - xp.reshape(mean, shape)
    inv_std = 1.0 / xp.sqrt(var + eps)
    scale = inv_std if weight is None else weight * inv_std
    y = centered * xp.reshape(scale, shape)
    if bias is not None:
        y += xp.reshape(bias, shape)
    return y, running_mean, running_var, (centered, inv_std, weight, training)


def batch_norm_backward(dy, ctx):
    """Gradients ``(dx, dweight, dbias)`` of :func:`batch_norm_forward`.

    Training: ``dx = (dy - mean(dy)) * scale - centered * (scale * inv_std**2 * mean(dy * centered))``,
    per-channel coefficients, so dx is one fused expression over the activations.
    """
    centered, inv_std, weight, training = ctx
    xp = array_namespace(dy)
    axes, shape = _axes(dy)
    count = math.prod(dy.shape) // dy.shape[1]
    dbias = xp.sum(dy, axis=axes)
    dc = xp.sum(dy * centered, axis=axes)  # sum(dy * xhat) = inv_std * dc
    dweight = dc * inv_std
    scale = inv_std if weight is None else weight * inv_std
    if training:
        k_c = scale * inv_std * dweight / count
        dx = dy - xp.reshape(dbias / count, shape)
        dx *= xp.reshape(scale, shape)
        dx -= centered * xp.reshape(k_c, shape)
    else:
        dx = dy * xp.reshape(scale, shape)
    return dx, (dweight if weight is not None else None), (dbias if weight is not None else None)


def batch_norm(x, weight, bias, running_mean, running_var, training=True, momentum=0.1, eps=1e-5):
    """Forward only (returns just ``y``)."""
    return batch_norm_forward(x, weight, bias, running_mean, running_var, training, momentum, eps)[0]
