"""Max, average and adaptive average pooling over NCHW arrays, forward and backward.

Each is a loop over the kh*kw window offsets, one strided slice per offset.
Max pooling records, per output, the offset of the first maximum (as PyTorch
does); its backward routes the gradient there and sums where windows overlap.
"""
from __future__ import annotations

import math
from typing import Any

from array_api_compat import array_namespace, device

from .. import kernels, parallel
from ._util import empty_nchw, itemsize, out_size, pad2d, pair, unpad2d, where_zero, window, window_key


def pool_geometry(x_shape, kernel_size, stride=None, padding=0):
    """Check shapes and options; return ``(kernel, stride, pads, oh, ow)``."""
    if len(x_shape) != 4:
        raise ValueError(f"pooling expects a 4-D input (N, C, H, W), got shape {tuple(x_shape)}")
    kernel = pair(kernel_size, "kernel_size")
    stride = kernel if stride is None else pair(stride, "stride")
    ph, pw = pair(padding, "padding")
    if min(kernel) < 1 or min(stride) < 1 or min(ph, pw) < 0:
        raise ValueError(f"pooling needs kernel_size, stride >= 1 and padding >= 0, got {kernel}, {stride}, {(ph, pw)}")
    if ph > kernel[0] // 2 or pw > kernel[1] // 2:
        raise ValueError(f"pooling padding {(ph, pw)} must be at most half the kernel size {kernel}")
    h, w = x_shape[2], x_shape[3]
    oh, ow = out_size(h, kernel[0], stride[0], 2 * ph), out_size(w, kernel[1], stride[1], 2 * pw)
    if oh < 1 or ow < 1:
        raise ValueError(f"pooling: input of spatial size {h}x{w} (padding {(ph, pw)}) is smaller than the kernel {kernel}")
    return kernel, stride, (ph, ph, pw, pw), oh, ow


def _copy_nchw(xp, a):
    """A channels-last copy of the NCHW array ``a`` (the layout every op allocates)."""
    out = empty_nchw(xp, a.shape, a.dtype, device(a))
    out[...] = a
    return out


def max_pool2d_forward(x, kernel_size: Any, stride: Any = None, padding: Any = 0):
    """Max pooling. Returns ``(y, ctx)``; padding never wins (it is the dtype's lowest finite value).

    Per window offset: ``y = maximum(y, s)`` (NaN propagates) and the offset of the first maximum (the last
    NaN where there is one, as PyTorch) as ``idx = maximum(idx, k * better)``: offsets only grow, so no
    ``where`` is needed (NumPy's is several times slower than these element-wise ops). Batch shards run on the
    :mod:`~xpcnn.parallel` workers.
    """
    xp = array_namespace(x)
    kernel, stride, pads, oh, ow = pool_geometry(x.shape, kernel_size, stride, padding)
    idx_dtype = xp.uint8 if kernel[0] * kernel[1] <= 255 else xp.int32
    n, c, h, w = x.shape
    padded_shape = (n, c, h + pads[0] + pads[1], w + pads[2] + pads[3])
    fast = kernels.get("max_pool2d", xp)
    parts = [] if fast is not None else parallel.ranges(n, c * h * w * itemsize(xp, x.dtype))
    if fast is not None:
        y, idx = fast(pad2d(x, pads, float(xp.finfo(x.dtype).min)), kernel, stride, oh, ow, idx_dtype)
    elif len(parts) == 1:
        y, idx = _max_pool_shard(xp, x, kernel, stride, pads, oh, ow, idx_dtype)
    else:
        y = empty_nchw(xp, (n, c, oh, ow), x.dtype, device(x))
        idx = empty_nchw(xp, (n, c, oh, ow), idx_dtype, device(x))

        def shard(a: int, b: int) -> None:
            y[a:b, ...], idx[a:b, ...] = _max_pool_shard(xp, x[a:b, ...], kernel, stride, pads, oh, ow, idx_dtype)
        parallel.run(shard, parts)
    return y, (idx, x.shape, padded_shape, kernel, stride, pads)


def _max_pool_shard(xp, x, kernel, stride, pads, oh, ow, idx_dtype):
    """``(y, idx)`` of :func:`max_pool2d_forward` for the samples of ``x``."""
    xpad = pad2d(x, pads, float(xp.finfo(x.dtype).min))
    y = idx = None
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            s = window(xpad, i, j, stride, (1, 1), oh, ow)
            if y is None:
                y = _copy_nchw(xp, s)
                idx = empty_nchw(xp, y.shape, idx_dtype, device(x), 0)
            else:
                # strict: ties keep the first maximum; NaN wins and propagates (as in PyTorch), never hidden
                better = (s > y) | xp.isnan(s)
                y = xp.maximum(y, s)
                idx = xp.maximum(idx, xp.astype(better, idx_dtype) * (i * kernel[1] + j))
    return y, idx


def max_pool2d_backward(dy, ctx):
    """Gradient w.r.t. the input of :func:`max_pool2d_forward`.

    Disjoint windows (stride >= kernel) are written, not accumulated. Batch shards run on the workers, each
    writing its own samples of ``dx``."""
    idx, x_shape, padded_shape, kernel, stride, pads = ctx
    xp = array_namespace(dy)
    oh, ow = dy.shape[2], dy.shape[3]
    disjoint = stride[0] >= kernel[0] and stride[1] >= kernel[1]
    fast = kernels.get("max_pool2d_backward", xp)
    dx = None if fast is None else fast(dy, idx, padded_shape, kernel, stride)
    if dx is not None:
        return unpad2d(dx, pads)
    dx = empty_nchw(xp, padded_shape, dy.dtype, device(dy), 0)

    def shard(a: int, b: int) -> None:
        dxs, dys, ids = (dx, dy, idx) if (a, b) == (0, dy.shape[0]) else (dx[a:b, ...], dy[a:b, ...], idx[a:b, ...])
        for i in range(kernel[0]):
            for j in range(kernel[1]):
                g = where_zero(ids == i * kernel[1] + j, dys)
                key = window_key(i, j, stride, (1, 1), oh, ow)
                if disjoint:
                    dxs[key] = g
                else:
                    dxs[key] += g
    parallel.run(shard, parallel.ranges(dy.shape[0], math.prod(padded_shape[1:]) * itemsize(xp, dy.dtype)))
    return unpad2d(dx, pads)


def avg_pool2d_forward(x, kernel_size: Any, stride: Any = None, padding: Any = 0):
    """Average pooling; zero padding counts in the divisor (PyTorch's ``count_include_pad=True``)."""
    xp = array_namespace(x)
    kernel, stride, pads, oh, ow = pool_geometry(x.shape, kernel_size, stride, padding)
    xpad = pad2d(x, pads)
    y = None
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            s = window(xpad, i, j, stride, (1, 1), oh, ow)
            y = _copy_nchw(xp, s) if y is None else y + s
    y = y / (kernel[0] * kernel[1])
    return y, (x.shape, xpad.shape, kernel, stride, pads)


def avg_pool2d_backward(dy, ctx):
    """Gradient w.r.t. the input of :func:`avg_pool2d_forward`."""
    x_shape, padded_shape, kernel, stride, pads = ctx
    xp = array_namespace(dy)
    oh, ow = dy.shape[2], dy.shape[3]
    g = dy / (kernel[0] * kernel[1])
    dx = empty_nchw(xp, padded_shape, dy.dtype, device(dy), 0)
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            dx[window_key(i, j, stride, (1, 1), oh, ow)] += g
    return unpad2d(dx, pads)


def adaptive_bins(size: int, out: int) -> list[tuple[int, int]]:
    """PyTorch's adaptive pooling bins: ``[floor(i*size/out), ceil((i+1)*size/out))``."""
    return [(i * size // out, -(-(i + 1) * size // out)) for i in range(out)]


def adaptive_avg_pool2d_forward(x, output_size: Any = 1):
    """Adaptive average pooling to ``output_size`` (``1`` is global average pooling)."""
    xp = array_namespace(x)
    if x.ndim != 4:
        raise ValueError(f"adaptive pooling expects a 4-D input (N, C, H, W), got shape {tuple(x.shape)}")
    oh, ow = pair(output_size, "output_size")
    n, c, h, w = x.shape
    if oh < 1 or ow < 1:
        raise ValueError(f"output_size must be >= 1, got {(oh, ow)}")
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


def max_pool2d(x, kernel_size, stride=None, padding=0):
    """Forward only."""
    return max_pool2d_forward(x, kernel_size, stride, padding)[0]


def avg_pool2d(x, kernel_size, stride=None, padding=0):
    """Forward only."""
    return avg_pool2d_forward(x, kernel_size, stride, padding)[0]


def adaptive_avg_pool2d(x, output_size=1):
    """Forward only."""
    return adaptive_avg_pool2d_forward(x, output_size)[0]


