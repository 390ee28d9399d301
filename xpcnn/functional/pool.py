"""Max and average pooling over NCHW arrays, forward and backward, with PyTorch's options.

Each is a loop over the kh*kw window offsets, one strided slice per offset.
Max pooling records, per output, the offset of the first maximum (as PyTorch
does); its backward routes the gradient there and sums where windows overlap.
On the GPU plan, where the windows tile the input (:func:`tiles`), max pooling
reduces a 6-D view instead: a few operations a layer, not a few per offset
(on a CPU the loop is faster: docs/measurements.md).
In ceil mode the padded grid grows on the bottom/right so that the last window
fits (:func:`pool_geometry`); average pooling's divisor leaves that growth out.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

from array_api_compat import array_namespace, device

from .. import config, kernels, threads
from ._util import constant, empty_nchw, itemsize, pad2d, pair, unpad2d, where_zero, window, window_key


def pool_out_size(size: int, kernel: int, stride: int, pad: int, dilation: int = 1, ceil_mode: bool = False) -> int:
    """PyTorch's pooling output length: floor (or ceil) of the sliding count; in ceil mode a last window that
    would start in the right padding is dropped (every window starts inside the input or the left padding)."""
    span = size + 2 * pad - dilation * (kernel - 1) - 1
    out = (span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def pool_geometry(x_shape, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """Check shapes and options; return ``(kernel, stride, dilation, pads, oh, ow)``.

    ``pads`` (top, bottom, left, right) is the grid the windows read: the padding, plus in ceil mode the rows
    and columns a last window reads past it (``pad2d`` fills them as padding).
    """
    if len(x_shape) != 4:
        raise ValueError(f"pooling expects a 4-D input (N, C, H, W), got shape {tuple(x_shape)}")
    kernel = pair(kernel_size, "kernel_size")
    stride = kernel if stride is None else pair(stride, "stride")
    ph, pw = pair(padding, "padding")
    dilation = pair(dilation, "dilation")
    if min(kernel) < 1 or min(stride) < 1 or min(dilation) < 1 or min(ph, pw) < 0:
        raise ValueError(f"pooling needs kernel_size, stride, dilation >= 1 and padding >= 0, got {kernel}, "
                         f"{stride}, {dilation}, {(ph, pw)}")
    if ph > kernel[0] // 2 or pw > kernel[1] // 2:
        raise ValueError(f"pooling padding {(ph, pw)} must be at most half the kernel size {kernel}")
    h, w = x_shape[2], x_shape[3]
    oh = pool_out_size(h, kernel[0], stride[0], ph, dilation[0], ceil_mode)
    ow = pool_out_size(w, kernel[1], stride[1], pw, dilation[1], ceil_mode)
    if oh < 1 or ow < 1:
        raise ValueError(f"pooling: input of spatial size {h}x{w} (padding {(ph, pw)}) is smaller than the kernel "
                         f"{kernel}" + (f" dilated by {dilation}" if dilation != (1, 1) else ""))
    bottom = max(ph, (oh - 1) * stride[0] + dilation[0] * (kernel[0] - 1) + 1 - h - ph)
    right = max(pw, (ow - 1) * stride[1] + dilation[1] * (kernel[1] - 1) + 1 - w - pw)
    return kernel, stride, dilation, (ph, bottom, pw, right), oh, ow


def _copy_nchw(xp, a):
    """A channels-last copy of the NCHW array ``a`` (the layout every op allocates)."""
    out = empty_nchw(xp, a.shape, a.dtype, device(a))
    out[...] = a
    return out


def max_pool2d_forward(x, kernel_size: Any, stride: Any = None, padding: Any = 0, dilation: Any = 1,
                       ceil_mode: bool = False):
    """Max pooling (PyTorch's options). Returns ``(y, ctx)``; padding never wins (it is the dtype's lowest finite
    value). :func:`max_pool2d_indices` gives PyTorch's ``return_indices`` from ``ctx``.

    Per window offset: ``y = maximum(y, s)`` (NaN propagates) and the offset of the first maximum (the last
    NaN where there is one, as PyTorch) as ``idx = maximum(idx, k * better)``: offsets only grow, so no
    ``where`` is needed (NumPy's is several times slower than these element-wise ops). Batch shards run on the
    :mod:`~xpcnn.threads` workers.
    """
    xp = array_namespace(x)
    kernel, stride, dilation, pads, oh, ow = pool_geometry(x.shape, kernel_size, stride, padding, dilation,
                                                           ceil_mode)
    idx_dtype = xp.uint8 if kernel[0] * kernel[1] <= 255 else xp.int32
    n, c, h, w = x.shape
    padded_shape = (n, c, h + pads[0] + pads[1], w + pads[2] + pads[3])
    fast = kernels.get("max_pool2d", xp) if dilation == (1, 1) else None
    if config.gpu_plan(x) and tiles(x.shape, kernel, stride, dilation, pads, oh, ow):
        return _max_pool_tiled(xp, x, kernel)
    parts = [] if fast is not None else threads.ranges(n, c * h * w * itemsize(xp, x.dtype))
    if fast is not None:
        y, idx = fast(pad2d(x, pads, float(xp.finfo(x.dtype).min)), kernel, stride, oh, ow, idx_dtype)
    elif len(parts) == 1:
        y, idx = _max_pool_shard(xp, x, kernel, stride, dilation, pads, oh, ow, idx_dtype)
    else:
        y = empty_nchw(xp, (n, c, oh, ow), x.dtype, device(x))
        idx = empty_nchw(xp, (n, c, oh, ow), idx_dtype, device(x))

        def shard(a: int, b: int) -> None:
            y[a:b, ...], idx[a:b, ...] = _max_pool_shard(xp, x[a:b, ...], kernel, stride, dilation, pads, oh, ow,
                                                         idx_dtype)
        threads.run(shard, parts)
    return y, (idx, x.shape, padded_shape, kernel, stride, pads, dilation)


def _max_pool_shard(xp, x, kernel, stride, dilation, pads, oh, ow, idx_dtype):
    """``(y, idx)`` of :func:`max_pool2d_forward` for the samples of ``x``."""
    xpad = pad2d(x, pads, float(xp.finfo(x.dtype).min))
    y = idx = None
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            s = window(xpad, i, j, stride, dilation, oh, ow)
            if y is None:
                y = _copy_nchw(xp, s)
                idx = empty_nchw(xp, y.shape, idx_dtype, device(x), 0)
            else:
                # strict: ties keep the first maximum; NaN wins and propagates (as in PyTorch), never hidden
                better = (s > y) | xp.isnan(s)
                y = xp.maximum(y, s)
                idx = xp.maximum(idx, xp.astype(better, idx_dtype) * (i * kernel[1] + j))
    return y, idx


def tiles(x_shape, kernel, stride, dilation, pads, oh: int, ow: int) -> bool:
    """Whether the pooling windows tile the input exactly (kernel = stride, no padding nor ceil-mode overhang,
    dilation 1, sizes divisible by the kernel): every pool of the named models."""
    return (tuple(stride) == tuple(kernel) and tuple(dilation) == (1, 1) and not any(pads)
            and (oh * kernel[0], ow * kernel[1]) == tuple(x_shape[2:]))


class TiledPool(NamedTuple):
    """The context of :func:`_max_pool_tiled`: the input as ``(N, H/kh, kh, W/kw, kw, C)`` (a view) and each
    window's maximum ``(N, H/kh, 1, W/kw, 1, C)``."""
    windows: Any
    maxima: Any


def _max_pool_tiled(xp, x, kernel):
    """Max pooling of windows that tile ``x``: one ``max`` over the window axes of the channels-last view
    ``(N, H/kh, kh, W/kw, kw, C)`` (NaN propagates, as in the loop); the output is channels-last."""
    n, c, h, w = x.shape
    v = xp.reshape(xp.permute_dims(x, (0, 2, 3, 1)), (n, h // kernel[0], kernel[0], w // kernel[1], kernel[1], c))
    m = xp.max(v, axis=(2, 4), keepdims=True)
    y = xp.permute_dims(xp.reshape(m, (n, v.shape[1], v.shape[3], c)), (0, 3, 1, 2))
    return y, TiledPool(v, m)


def _tiled_choice(xp, ctx: TiledPool):
    """The position each window's output came from, as a mask of the windows' shape: the loop's rule (the
    first maximum, or the last NaN where the window holds one). Each position gets a key, ``kh*kw - offset``
    at a maximum or ``1 + offset`` at a NaN (a window has one kind or the other), else 0; the largest wins."""
    v, m = ctx
    kh, kw, dev = v.shape[2], v.shape[4], device(v)
    key_dtype = xp.uint8 if kh * kw <= 255 else xp.int32  # a byte a position: a quarter of float32's traffic
    first = constant(xp, _per_offset(kh, kw, lambda k: kh * kw - k), key_dtype, dev)
    last = constant(xp, _per_offset(kh, kw, lambda k: 1 + k), key_dtype, dev)
    zero = constant(xp, 0, key_dtype, dev)
    key = xp.where(v == m, first, xp.where(xp.isnan(v), last, zero))
    return key == xp.max(key, axis=(2, 4), keepdims=True)


def _per_offset(kh: int, kw: int, f) -> tuple:
    """``f(offset)`` per window offset ``i * kw + j``, nested as ``(kh, 1, kw, 1)``: against ``(kh, W/kw, kw, C)``."""
    return tuple((tuple((f(i * kw + j),) for j in range(kw)),) for i in range(kh))


def _max_pool_tiled_backward(dy, ctx: TiledPool):
    """Gradient of :func:`_max_pool_tiled`: ``dy`` at each window's chosen position, 0 elsewhere."""
    xp = array_namespace(dy)
    n, oh, kh, ow, kw, c = ctx.windows.shape
    g = xp.reshape(xp.permute_dims(dy, (0, 2, 3, 1)), (n, oh, 1, ow, 1, c))
    dx = xp.where(_tiled_choice(xp, ctx), g, constant(xp, 0, dy.dtype, device(dy)))
    return xp.permute_dims(xp.reshape(dx, (n, oh * kh, ow * kw, c)), (0, 3, 1, 2))


def max_pool2d_indices(ctx):
    """PyTorch's ``return_indices`` of :func:`max_pool2d_forward`: the flat index ``row * W + col`` in its input
    plane of each output's maximum, int64 (computed only when asked for)."""
    if isinstance(ctx, TiledPool):
        return _tiled_indices(ctx)
    idx, x_shape, _, kernel, stride, pads, dilation = ctx
    xp = array_namespace(idx)
    return _flat_indices(xp, xp.astype(idx, xp.int64), x_shape, kernel, stride, pads, dilation)


def _tiled_indices(ctx: TiledPool):
    """:func:`max_pool2d_indices` of the tiled path: each window's chosen offset, from :func:`_tiled_choice`."""
    v = ctx.windows
    xp = array_namespace(v)
    n, oh, kh, ow, kw, c = v.shape
    offsets = constant(xp, _per_offset(kh, kw, lambda k: k), xp.int64, device(v))
    k = xp.sum(xp.where(_tiled_choice(xp, ctx), offsets, constant(xp, 0, xp.int64, device(v))), axis=(2, 4))
    return _flat_indices(xp, xp.permute_dims(k, (0, 3, 1, 2)), (n, c, oh * kh, ow * kw), (kh, kw), (kh, kw),
                         (0, 0, 0, 0), (1, 1))


def _flat_indices(xp, k, x_shape, kernel, stride, pads, dilation):
    """The flat input-plane index of window offset ``k (N, C, oh, ow)``, int64."""
    oh, ow, dev = k.shape[2], k.shape[3], device(k)
    rows = xp.reshape(xp.arange(oh, dtype=xp.int64, device=dev) * stride[0] - pads[0], (oh, 1))
    cols = xp.reshape(xp.arange(ow, dtype=xp.int64, device=dev) * stride[1] - pads[2], (1, ow))
    return (rows + (k // kernel[1]) * dilation[0]) * x_shape[3] + cols + (k % kernel[1]) * dilation[1]


def max_pool2d_backward(dy, ctx):
    """Gradient w.r.t. the input of :func:`max_pool2d_forward`.

    Disjoint windows (stride >= dilated kernel) are written, not accumulated. Batch shards run on the workers,
    each writing its own samples of ``dx``."""
    if isinstance(ctx, TiledPool):
        return _max_pool_tiled_backward(dy, ctx)
    idx, x_shape, padded_shape, kernel, stride, pads, dilation = ctx
    xp = array_namespace(dy)
    oh, ow = dy.shape[2], dy.shape[3]
    disjoint = all(s >= d * (k - 1) + 1 for s, d, k in zip(stride, dilation, kernel))
    fast = kernels.get("max_pool2d_backward", xp) if dilation == (1, 1) else None
    dx = None if fast is None else fast(dy, idx, padded_shape, kernel, stride)
    if dx is not None:
        return unpad2d(dx, pads)
    dx = empty_nchw(xp, padded_shape, dy.dtype, device(dy), 0)

    def shard(a: int, b: int) -> None:
        dxs, dys, ids = (dx, dy, idx) if (a, b) == (0, dy.shape[0]) else (dx[a:b, ...], dy[a:b, ...], idx[a:b, ...])
        for i in range(kernel[0]):
            for j in range(kernel[1]):
                g = where_zero(ids == i * kernel[1] + j, dys)
                key = window_key(i, j, stride, dilation, oh, ow)
                if disjoint:
                    dxs[key] = g
                else:
                    dxs[key] += g
    threads.run(shard, threads.ranges(dy.shape[0], math.prod(padded_shape[1:]) * itemsize(xp, dy.dtype)))
    return unpad2d(dx, pads)


def _axis_divisors(size: int, kernel: int, stride: int, pad: int, out: int, count_include_pad: bool) -> list[int]:
    """Per output position along one axis, PyTorch's average-pooling divisor: the window clipped to the padded
    input (``count_include_pad``) or to the input itself."""
    counts = []
    for o in range(out):
        start = o * stride - pad
        end = min(start + kernel, size + pad)
        counts.append(end - start if count_include_pad else min(end, size) - max(start, 0))
    return counts


def _avg_divisor(xp, x, kernel, stride, pads, oh, ow, count_include_pad, divisor_override):
    """The divisor of every window: an int where all are equal (the default options), else an ``(oh, ow)``
    array (rows times columns: each factor is a per-axis count)."""
    if divisor_override is not None:
        return divisor_override
    if count_include_pad and (pads[1], pads[3]) == (pads[0], pads[2]):  # no ceil-mode growth: whole windows
        return kernel[0] * kernel[1]
    h, w = x.shape[2], x.shape[3]
    rows = _axis_divisors(h, kernel[0], stride[0], pads[0], oh, count_include_pad)
    cols = _axis_divisors(w, kernel[1], stride[1], pads[2], ow, count_include_pad)
    if len(set(rows)) == 1 and len(set(cols)) == 1:
        return rows[0] * cols[0]
    dev = device(x)
    rows_a = xp.reshape(xp.asarray(rows, dtype=x.dtype, device=dev), (oh, 1))
    return rows_a * xp.reshape(xp.asarray(cols, dtype=x.dtype, device=dev), (1, ow))


def avg_pool2d_forward(x, kernel_size: Any, stride: Any = None, padding: Any = 0, ceil_mode: bool = False,
                       count_include_pad: bool = True, divisor_override: int | None = None):
    """Average pooling (PyTorch's options): the window sum over the zero-padded input, divided by
    ``divisor_override``, or by the window's size clipped to the padded input (``count_include_pad``, the default)
    or to the input."""
    xp = array_namespace(x)
    check_divisor(divisor_override)
    kernel, stride, _, pads, oh, ow = pool_geometry(x.shape, kernel_size, stride, padding, 1, ceil_mode)
    xpad = pad2d(x, pads)
    y = None
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            s = window(xpad, i, j, stride, (1, 1), oh, ow)
            y = _copy_nchw(xp, s) if y is None else y + s
    divisor = _avg_divisor(xp, x, kernel, stride, pads, oh, ow, count_include_pad, divisor_override)
    y = y / divisor
    return y, (x.shape, xpad.shape, kernel, stride, pads, divisor)


def check_divisor(divisor_override) -> None:
    """``divisor_override``: None or a non-zero int (as PyTorch)."""
    if divisor_override is None:
        return
    if isinstance(divisor_override, bool) or not isinstance(divisor_override, int):
        raise TypeError(f"divisor_override must be None or an int, got {divisor_override!r}")
    if divisor_override == 0:
        raise ValueError("divisor_override must not be zero")


def avg_pool2d_backward(dy, ctx):
    """Gradient w.r.t. the input of :func:`avg_pool2d_forward`."""
    x_shape, padded_shape, kernel, stride, pads, divisor = ctx
    xp = array_namespace(dy)
    oh, ow = dy.shape[2], dy.shape[3]
    g = dy / divisor
    dx = empty_nchw(xp, padded_shape, dy.dtype, device(dy), 0)
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            dx[window_key(i, j, stride, (1, 1), oh, ow)] += g
    return unpad2d(dx, pads)


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """Forward only; ``(y, indices)`` with ``return_indices`` (PyTorch's ``F.max_pool2d``)."""
    y, ctx = max_pool2d_forward(x, kernel_size, stride, padding, dilation, ceil_mode)
    return (y, max_pool2d_indices(ctx)) if return_indices else y


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    """Forward only (PyTorch's ``F.avg_pool2d``)."""
    return avg_pool2d_forward(x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)[0]
