"""Batch normalisation over (N,), (N, L) or (N, H, W), as in PyTorch.

Training normalises with the biased batch variance and updates the running
variance with the unbiased one; evaluation uses the running statistics.

The work runs on the channels-last rows of the input: ``(N*H*W, C)``, a view for the
library's layout (:func:`~xpcnn.functional._util.empty_nchw`; one copy for another), grouped
``W`` rows at a time into ``(N*H, W*C)`` with the per-channel vectors tiled ``W`` times.
Broadcasting a ``(1, C, 1, 1)`` vector instead gives NumPy inner loops of C (32 here), several
times slower (docs/measurements.md). Elsewhere (:func:`_plain`: the GPU plan, where every call is a launch)
the plain form runs: sums over the non-channel axes against ``(1, C, 1, 1)`` vectors, no views, tiles nor grouping.
"""
from __future__ import annotations

import math

from array_api_compat import array_namespace, device

from .. import config, distributed, kernels
from ._util import rows_sum


def _rows(xp, x):
    """``(rows (R/g, g*C), g)``: ``x`` as channels-last rows grouped ``g`` at a time (g = W for 4-D, L for 3-D, 1 for
    2-D)."""
    if x.ndim == 2:
        return x, 1
    if x.ndim == 3:
        n, c, length = x.shape
        return xp.reshape(xp.permute_dims(x, (0, 2, 1)), (n, length * c)), length
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
    if x.ndim not in (2, 3, 4):
        raise ValueError(f"batch_norm expects a 2-D (N, C), 3-D (N, C, L) or 4-D (N, C, H, W) input, got shape "
                         f"{tuple(x.shape)}")
    xp = array_namespace(x)
    if _plain(x):
        return _plain_forward(xp, x, weight, bias, running_mean, running_var, training, momentum, eps)
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
    if isinstance(ctx, _PlainContext):
        return _plain_backward(dy, ctx)
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


def _plain(x) -> bool:
    """Whether ``x`` takes the plain form (:func:`_plain_forward`): on the GPU plan (fewest array operations,
    each a launch there). The CPU plan keeps the tiled rows on every namespace: faster there on NumPy, torch
    and array_api_strict alike (docs/measurements.md)."""
    return config.gpu_plan(x)


class _PlainContext:
    """What :func:`_plain_backward` needs: ``xhat`` (the normalised input, kept), ``inv_std`` and the weight
    (None without affine) shaped to broadcast against it, and whether the batch statistics were used."""
    __slots__ = ("xhat", "inv_std", "weight", "batch_stats")

    def __init__(self, xhat, inv_std, weight, batch_stats: bool):
        self.xhat, self.inv_std, self.weight, self.batch_stats = xhat, inv_std, weight, batch_stats


def _axes(x) -> tuple[tuple[int, ...], bool]:
    """The axes reduced (all but the channels') and whether sums keep them: ``(C,)`` vectors broadcast against
    ``(N, C)`` as they are, against ``(N, C, ...)`` as ``(1, C, 1, ...)``."""
    return (0,) + tuple(range(2, x.ndim)), x.ndim > 2


def _plain_forward(xp, x, weight, bias, running_mean, running_var, training, momentum, eps):
    """:func:`batch_norm_forward` in the plain form: mean (sum, divide), centred variance (subtract, square, sum,
    divide), ``xhat = centered * (var + eps) ** -0.5`` in place, ``y = xhat * weight + bias``; running statistics
    in 3 operations each. About 20 operations, 5 passes over ``x``; ``xhat`` is kept for the backward."""
    c = x.shape[1]
    axes, keep = _axes(x)
    shape = (1, c) + (1,) * (x.ndim - 2) if keep else (c,)  # per-channel values, broadcasting against x
    col = (lambda v: xp.reshape(v, shape)) if keep else (lambda v: v)
    vec = (lambda v: xp.reshape(v, (c,))) if keep else (lambda v: v)
    count = math.prod(x.shape) // c
    batch_stats = training and count > 0
    if batch_stats:
        total, count = distributed.batch_sum(xp.sum(x, axis=axes, keepdims=keep), count)  # the global batch's
        if count < 2:
            raise ValueError(f"batch_norm in training needs more than 1 value per channel, got input shape "
                             f"{tuple(x.shape)}")
        mean = total / count
        xhat = x - mean
        sumsq, _ = distributed.batch_sum(xp.sum(xhat * xhat, axis=axes, keepdims=keep), count)
        inv_std = (sumsq / count + eps) ** -0.5
        xhat *= inv_std
        if running_mean is not None:
            kept = 1 - momentum  # an operation where momentum is a 0-d array (the cumulative average)
            running_mean = running_mean * kept + vec(mean) * momentum
            running_var = running_var * kept + vec(sumsq) * (momentum / (count - 1))  # unbiased
    elif training:  # an empty batch (as PyTorch): an empty output, running statistics as they are
        xhat, inv_std = x, xp.ones(shape, dtype=x.dtype, device=device(x))
    else:
        inv_std = (col(running_var) + eps) ** -0.5
        xhat = x - col(running_mean)
        xhat *= inv_std
    w = None if weight is None else col(weight)
    if w is not None:
        y = xhat * w
        if bias is not None:
            y += col(bias)
    elif bias is not None:
        y = xhat + col(bias)
    else:  # a new array: the output may be written to, xhat is the backward's
        y = xp.asarray(xhat, copy=True)
    return y, running_mean, running_var, _PlainContext(xhat, inv_std, w, batch_stats)


def _plain_backward(dy, ctx: _PlainContext):
    """:func:`batch_norm_backward` in the plain form: ``sum(dy)``, ``sum(dy * xhat)``, and
    ``dx = scale * (dy - mean(dy) - xhat * mean(dy * xhat))`` in 4 passes (batch statistics; else
    ``dx = scale * dy``). About 12 operations."""
    xp = array_namespace(dy)
    axes, keep = _axes(dy)
    c = dy.shape[1]
    xhat, inv_std, w = ctx.xhat, ctx.inv_std, ctx.weight
    scale = inv_std if w is None else w * inv_std
    if not ctx.batch_stats and w is None:
        return dy * scale, None, None
    dbias = xp.sum(dy, axis=axes, keepdims=keep)
    dweight = xp.sum(dy * xhat, axis=axes, keepdims=keep)  # this shard's part (the gradient allreduce adds them)
    if ctx.batch_stats:
        sum_dy, sum_dyx, count = _grad_sums(xp, dbias, dweight, math.prod(dy.shape) // c)
        dx = dy - sum_dy / count
        dx -= xhat * (sum_dyx / count)
        dx *= scale
    else:
        dx = dy * scale
    if w is None:
        return dx, None, None
    if keep:
        dweight, dbias = xp.reshape(dweight, (c,)), xp.reshape(dbias, (c,))
    return dx, dweight, dbias


def _grad_sums(xp, sum_dy, sum_dyx, count: int):
    """``(sum_dy, sum_dyx, count)`` of the global batch in this rank's scale (``distributed.batch_sum``): one
    allreduce of both, concatenated only inside a sharded batch."""
    if not distributed.batch_sharded():
        return sum_dy, sum_dyx, count
    axis = min(1, sum_dy.ndim - 1)  # the channels' axis
    both, count = distributed.batch_sum(xp.concat([sum_dy, sum_dyx], axis=axis), count, gradient=True)
    c = sum_dy.shape[axis]
    head = (slice(None),) * axis
    return both[head + (slice(0, c), ...)], both[head + (slice(c, 2 * c), ...)], count
