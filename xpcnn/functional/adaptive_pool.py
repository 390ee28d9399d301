"""Adaptive average and max pooling over NCHW arrays, forward and backward: PyTorch's bins
``[floor(i*size/out), ceil((i+1)*size/out))``, one slice per output position (``(1, 1)`` is one reduction)."""
from __future__ import annotations

from typing import Any

from array_api_compat import array_namespace, device

from ._util import empty_nchw, where_zero


def adaptive_output_size(output_size: Any) -> tuple[int | None, int | None]:
    """``3 -> (3, 3)``, ``(2, None) -> (2, None)`` (a None entry keeps that input size, as PyTorch; a bare None
    is an error there too); anything else is a clear error."""
    pair_ = tuple(output_size) if isinstance(output_size, (tuple, list)) else (output_size, output_size)
    if len(pair_) != 2 or output_size is None or any(
            v is not None and (isinstance(v, bool) or not isinstance(v, int)) for v in pair_):
        raise TypeError(f"output_size must be an int or a pair of ints or None, got {output_size!r}")
    for v in pair_:
        if v is not None and v < 1:
            raise ValueError(f"output_size must be >= 1 (or None), got {output_size!r}")
    return pair_


def adaptive_bins(size: int, out: int) -> list[tuple[int, int]]:
    """PyTorch's adaptive pooling bins: ``[floor(i*size/out), ceil((i+1)*size/out))``."""
    return [(i * size // out, -(-(i + 1) * size // out)) for i in range(out)]


def _geometry(x, output_size):
    if x.ndim != 4:
        raise ValueError(f"adaptive pooling expects a 4-D input (N, C, H, W), got shape {tuple(x.shape)}")
    oh, ow = adaptive_output_size(output_size)
    h, w = x.shape[2], x.shape[3]
    oh, ow = h if oh is None else oh, w if ow is None else ow
    if min(h, w) < 1:
        raise ValueError(f"adaptive pooling needs a non-empty input plane, got shape {tuple(x.shape)}")
    return oh, ow


def adaptive_avg_pool2d_forward(x, output_size: Any = 1):
    """Adaptive average pooling to ``output_size`` (``1`` is global average pooling)."""
    xp = array_namespace(x)
    oh, ow = _geometry(x, output_size)
    n, c, h, w = x.shape
    if (oh, ow) == (1, 1):
        y = xp.mean(x, axis=(2, 3), keepdims=True)
    else:
        y = empty_nchw(xp, (n, c, oh, ow), x.dtype, device(x))
        for a, (h0, h1) in enumerate(adaptive_bins(h, oh)):
            for b, (w0, w1) in enumerate(adaptive_bins(w, ow)):
                y[:, :, a, b] = xp.mean(x[:, :, h0:h1, w0:w1], axis=(2, 3))
    return y, x.shape


def adaptive_avg_pool2d_backward(dy, ctx):
    """Gradient w.r.t. the input of :func:`adaptive_avg_pool2d_forward`."""
    xp = array_namespace(dy)
    n, c, h, w = ctx
    oh, ow = dy.shape[2], dy.shape[3]
    if (oh, ow) == (1, 1):
        dx = empty_nchw(xp, (n, c, h, w), dy.dtype, device(dy))
        dx[...] = xp.broadcast_to(dy / (h * w), (n, c, h, w))
        return dx
    dx = empty_nchw(xp, (n, c, h, w), dy.dtype, device(dy), 0)
    for a, (h0, h1) in enumerate(adaptive_bins(h, oh)):
        for b, (w0, w1) in enumerate(adaptive_bins(w, ow)):
            area = (h1 - h0) * (w1 - w0)
            dx[:, :, h0:h1, w0:w1] += xp.reshape(dy[:, :, a, b], (n, c, 1, 1)) / area
    return dx


def _bin_max(xp, v):
    """Max over the last axis of ``v (N, C, L)`` and its position: the first maximum, or the last NaN where there
    is one (as PyTorch's loop ``val > max or isnan(val)``)."""
    length = v.shape[-1]
    pos = xp.arange(length, dtype=xp.int64, device=device(v))
    m = xp.max(v, axis=-1, keepdims=True)  # NaN where the bin holds one
    nan = xp.isnan(v)
    big, none = (xp.asarray(k, dtype=xp.int64, device=device(v)) for k in (length, -1))
    first = xp.min(xp.where(v == m, pos, big), axis=-1)
    last_nan = xp.max(xp.where(nan, pos, none), axis=-1)
    return m[..., 0], xp.where(xp.any(nan, axis=-1), last_nan, first)


def adaptive_max_pool2d_forward(x, output_size: Any = 1):
    """Adaptive max pooling. Returns ``(y, ctx)``; ``ctx[0]`` holds PyTorch's indices (flat ``row * W + col`` in
    the input plane, int64), :func:`adaptive_max_pool2d_indices`."""
    xp = array_namespace(x)
    oh, ow = _geometry(x, output_size)
    n, c, h, w = x.shape
    y = empty_nchw(xp, (n, c, oh, ow), x.dtype, device(x))
    idx = empty_nchw(xp, (n, c, oh, ow), xp.int64, device(x))
    for a, (h0, h1) in enumerate(adaptive_bins(h, oh)):
        for b, (w0, w1) in enumerate(adaptive_bins(w, ow)):
            bw = w1 - w0
            m, k = _bin_max(xp, xp.reshape(x[:, :, h0:h1, w0:w1], (n, c, (h1 - h0) * bw)))
            y[:, :, a, b] = m
            idx[:, :, a, b] = (h0 + k // bw) * w + w0 + k % bw
    return y, (idx, x.shape)


def adaptive_max_pool2d_indices(ctx):
    """PyTorch's ``return_indices`` of :func:`adaptive_max_pool2d_forward`."""
    return ctx[0]


def adaptive_max_pool2d_backward(dy, ctx):
    """Gradient w.r.t. the input of :func:`adaptive_max_pool2d_forward`: each output's gradient goes to its
    maximum, summed where bins overlap (one masked add per bin, no scatter)."""
    idx, (n, c, h, w) = ctx
    xp = array_namespace(dy)
    oh, ow = dy.shape[2], dy.shape[3]
    dev = device(dy)
    dx = empty_nchw(xp, (n, c, h, w), dy.dtype, dev, 0)
    for a, (h0, h1) in enumerate(adaptive_bins(h, oh)):
        rows = xp.reshape(xp.arange(h0, h1, dtype=xp.int64, device=dev), (1, 1, h1 - h0, 1))
        for b, (w0, w1) in enumerate(adaptive_bins(w, ow)):
            flat = rows * w + xp.reshape(xp.arange(w0, w1, dtype=xp.int64, device=dev), (1, 1, 1, w1 - w0))
            hit = flat == xp.reshape(idx[:, :, a, b], (n, c, 1, 1))
            g = xp.broadcast_to(xp.reshape(dy[:, :, a, b], (n, c, 1, 1)), tuple(hit.shape))
            dx[:, :, h0:h1, w0:w1] += where_zero(hit, g)
    return dx


def adaptive_avg_pool2d(x, output_size=1):
    """Forward only."""
    return adaptive_avg_pool2d_forward(x, output_size)[0]


def adaptive_max_pool2d(x, output_size=1, return_indices=False):
    """Forward only; ``(y, indices)`` with ``return_indices`` (PyTorch's ``F.adaptive_max_pool2d``)."""
    y, ctx = adaptive_max_pool2d_forward(x, output_size)
    return (y, ctx[0]) if return_indices else y
