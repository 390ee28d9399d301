"""Batch normalisation over (N,), (N, L) or (N, H, W), as in PyTorch.

Training normalises with the biased batch variance and updates the running
variance with the unbiased one; evaluation uses the running statistics.

The work runs on the channels-last rows of the input: ``(N*H*W, C)``, a view for the
library's layout (:func:`~xpcnn.functional._util.empty_nchw`; one copy for another), grouped
``W`` rows at a time into ``(N*H, W*C)`` with the per-channel vectors tiled ``W`` times.
Broadcasting a ``(1, C, 1, 1)`` vector instead gives NumPy inner loops of C (32 here) and runs
3-4x slower; the grouped rows take the same code path on every namespace.
"""
from __future__ import annotations

import math

from array_api_compat import array_namespace, device

from .. import distributed, kernels
from ._util import rows_sum


def _rows(xp, x):
    """``(rows (R/g, g*C), g)``: ``x`` as channels-last rows grouped ``g`` at a time (g = W for 4-D, L for 3-D, 1 for
    2-D)."""
    if x.ndim == 2:
        return x, 1
    if x.ndim == 3:
        n, c, length = x.shape
        return xp.reshape(xp.permute_dims(x, (0, 2, 1)), (n, length * c)), length
    if x.ndim != 4:
        raise ValueError(f"batch_norm expects a 2-D (N, C), 3-D (N, C, L) or 4-D (N, C, H, W) input, got shape "
                         f"{tuple(x.shape)}")
    n, c, h, w = x.shape
    return xp.reshape(xp.permute_dims(x, (0, 2, 3, 1)), (n * h, w * c)), w


def _unrows(xp, m, shape):
    """Inverse of :func:`_rows`: an array of ``shape`` (NCHW view of channels-last memory for 4-D)."""
    if len(shape) == 2:
        return m
    if len(shape) == 3:
        n, c, length = shape
        return xp.permute_dims(xp.reshape(m, (n, length, c)), (0, 2, 1))
    n, c, h, w = shape
    return xp.permute_dims(xp.reshape(m, (n, h, w, c)), (0, 3, 1, 2))


def _channel_sum(xp, m, g: int, c: int):
    """Per-channel sum of grouped rows ``(R/g, g*C)`` -> ``(C,)``."""
    return rows_sum(xp, xp.reshape(m, (m.shape[0] * g, c)), g)


def _tile(xp, v, g: int):
    return xp.tile(v, (g,)) if g > 1 else v


def _center(xp, m, g: int, c: int, count: int):
    """Batch statistics of grouped rows: ``(mean (C,), var (C,), centered, count)``, the variance of the centred
    values (numerically safe), three passes over ``m``. Sums and ``count`` are the whole batch's, over every
    rank's shard of a global batch under MPI (``distributed.batch_sum``)."""
    def mean_of(total):  # this shard's (C,) sums -> the whole batch's mean
        nonlocal count
        total, count = distributed.batch_sum(total, count)
        return total / count
    fast = kernels.get("bn_center", xp)
    if fast is not None:
        mean, centered, sumsq = fast(m, g, mean_of)
        sumsq = _fold(xp, sumsq, g, c)
    else:
        mean = mean_of(_channel_sum(xp, m, g, c))
        centered = m - _tile(xp, mean, g)
        sumsq = _channel_sum(xp, centered * centered, g, c)
    sumsq, _ = distributed.batch_sum(sumsq, count)
    return mean, sumsq / count, centered, count


def _affine(xp, m, scale, shift, g: int):
    """``m * tile(scale) + tile(shift)`` (shift may be None): a new array."""
    fast = kernels.get("bn_affine", xp)
    if fast is not None:
        return fast(m, _tile(xp, scale, g), None if shift is None else _tile(xp, shift, g))
    y = m * _tile(xp, scale, g)
    if shift is not None:
        y += _tile(xp, shift, g)
    return y


def _fold(xp, v, g: int, c: int):
    """A ``(g*C,)`` row sum folded to ``(C,)``."""
    return xp.sum(xp.reshape(v, (g, c)), axis=0) if g > 1 else v


def batch_norm_forward(x, weight, bias, running_mean, running_var, training: bool = True,
                       momentum: float = 0.1, eps: float = 1e-5):
    """Returns ``(y, new_running_mean, new_running_var, ctx)``; running stats are new arrays. ``momentum`` may be a
    0-d array (the cumulative average's ``1 / batches``). An empty batch in training leaves the running statistics
    as they are and gives an empty output (as PyTorch).

    Centred variance (numerically safe); ``y = centered * scale + bias`` with the per-channel
    ``scale = weight / sqrt(var + eps)``: four passes over ``x``. Backward keeps ``centered`` (the size of
    ``x``, which nothing else holds) instead of ``xhat``.
    """
    xp = array_namespace(x)
    m, g = _rows(xp, x)
    c = x.shape[1]
    count = math.prod(x.shape) // c
    if training:
        if count == 0:  # as PyTorch: an empty batch is fine (one value per channel is not, below)
            inv_std = xp.ones((c,), dtype=x.dtype, device=device(x))
            scale = inv_std if weight is None else weight * inv_std
            y = _affine(xp, m, scale, bias, g)
            return _unrows(xp, y, x.shape), running_mean, running_var, (m, inv_std, weight, False)
        mean, var, centered, count = _center(xp, m, g, c, count)  # count: the global batch's (under MPI)
        if count < 2:
            raise ValueError(f"batch_norm in training needs more than 1 value per channel, got input shape "
                             f"{tuple(x.shape)}")
        if running_mean is not None:
            running_mean = (1 - momentum) * running_mean + momentum * mean
            running_var = (1 - momentum) * running_var + momentum * (var * (count / (count - 1)))
    else:
        mean, var = running_mean, running_var
        centered = m - _tile(xp, mean, g)
    inv_std = 1.0 / xp.sqrt(var + eps)
    scale = inv_std if weight is None else weight * inv_std
    y = _affine(xp, centered, scale, bias, g)
    return _unrows(xp, y, x.shape), running_mean, running_var, (centered, inv_std, weight, training)


def batch_norm_backward(dy, ctx):
    """Gradients ``(dx, dweight, dbias)`` of :func:`batch_norm_forward`.

    Training: ``dx = dy * scale - centered * k - mean(dy) * scale`` with the per-channel
    ``k = scale * inv_std**2 * mean(dy * centered)``, so dx is one fused expression over the activations.
    """
    centered, inv_std, weight, training = ctx
    xp = array_namespace(dy)
    d, g = _rows(xp, dy)
    c = dy.shape[1]
    count = math.prod(dy.shape) // c
    fast = kernels.get("bn_grad_sums", xp)
    if fast is not None:
        dbias, dc = (_fold(xp, v, g, c) for v in fast(d, centered))
    else:
        dbias, dc = _channel_sum(xp, d, g, c), _channel_sum(xp, d * centered, g, c)  # sum(dy * xhat) = inv_std * dc
    dweight = dc * inv_std  # this shard's part (the gradient allreduce adds the ranks' parts)
    scale = inv_std if weight is None else weight * inv_std
    if training:
        sums, count = distributed.batch_sum(xp.concat([dbias, dc]), count, gradient=True)  # the global batch's
        k_c = scale * inv_std * (sums[c:] * inv_std) / count
        dx = _input_grad(xp, d, centered, scale, k_c, sums[:c] / count * scale, g)
    else:
        dx = _affine(xp, d, scale, None, g)
    dx = _unrows(xp, dx, dy.shape)
    return dx, (dweight if weight is not None else None), (dbias if weight is not None else None)


def _input_grad(xp, d, centered, scale, k, shift, g: int):
    """``d * tile(scale) - centered * tile(k) - tile(shift)``: a new array."""
    fast = kernels.get("bn_input_grad", xp)
    if fast is not None:
        return fast(d, centered, _tile(xp, scale, g), _tile(xp, k, g), _tile(xp, shift, g))
    dx = d * _tile(xp, scale, g)
    dx -= centered * _tile(xp, k, g)
    dx -= _tile(xp, shift, g)
    return dx


def batch_norm(x, weight, bias, running_mean, running_var, training=True, momentum=0.1, eps=1e-5):
    """Forward only (returns just ``y``)."""
    return batch_norm_forward(x, weight, bias, running_mean, running_var, training, momentum, eps)[0]
