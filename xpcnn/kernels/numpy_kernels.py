"""NumPy-only kernels (selected by :func:`xpcnn.kernels.get` when the arrays are NumPy arrays).

Each does what a portable function in ``xpcnn.functional`` does (the reference, which the tests compare it
with), faster. The element-wise ones (ReLU, batch norm, max pooling) write into their outputs (``out=``)
instead of allocating temporaries, split the batch (or rows) over the :mod:`xpcnn.threads` workers, and
within a shard work in blocks of ~256 KiB, so that a temporary stays in cache. The im2col ones copy every
window at once through one ``as_strided`` view instead of one slice per kernel offset.
"""
from __future__ import annotations

import numpy as np
from array_api_compat import numpy as xnp
from numpy.lib.stride_tricks import as_strided

from .. import threads
from ..functional._util import empty_nchw, window

BLOCK_BYTES = 256 * 2 ** 10


def _sample_bytes(a: np.ndarray) -> int:
    """Bytes of one sample (entry of the first axis) of ``a``; 0 in an empty batch."""
    return a.nbytes // max(1, a.shape[0])


def _sharded(fn, a: np.ndarray) -> list:
    """``fn(i, j)`` over the worker shards of the first axis of ``a``; results in shard order."""
    return threads.run(fn, threads.ranges(a.shape[0], _sample_bytes(a)))


def _block_rows(row_bytes: int) -> int:
    """Rows per block: ``BLOCK_BYTES`` of them on one worker, twice that on two, ...: with worker threads,
    fewer and longer NumPy calls collide less often on the GIL (measured: docs/measurements.md)."""
    return max(1, BLOCK_BYTES * threads.workers() // max(1, row_bytes))


def _blocks(a: int, b: int, row_bytes: int):
    step = _block_rows(row_bytes)
    return ((r, min(b, r + step)) for r in range(a, b, step))


def _sum(parts: list) -> np.ndarray:
    out = parts[0]
    for p in parts[1:]:
        out = out + p
    return out


def accumulate(dst: np.ndarray, key, src) -> None:
    """``dst[key] += src`` with a single write.

    NumPy runs ``dst[key] += src`` as getitem, in-place add on the view, then setitem copying the
    view onto itself: a second full pass. Adding into the view is enough.
    """
    view = dst[key]
    np.add(view, src, out=view)


def _bits(a: np.ndarray) -> np.ndarray | None:
    """``a`` seen as unsigned integers of its width (a view, any strides), or None for a width NumPy has none of."""
    return a.view(f"u{a.itemsize}") if a.itemsize in (1, 2, 4, 8) else None


def _masked_copy(a: np.ndarray, mask_of) -> np.ndarray | None:
    """``where(mask, a, 0)`` exactly, over the worker shards (``mask_of(i, j)``: the shard's mask): the bits of
    ``a`` times the mask (0 or 1) as unsigned integers, so that inf, NaN and -0.0 pass unchanged where the mask
    holds and +0.0 lands elsewhere, in one multiply (a float multiply gives NaN for 0 * inf: it needed a check
    pass and a fall back to ``where``; docs/measurements.md). None for an item width without unsigned integers
    (the caller runs ``where``)."""
    out = np.empty_like(a)
    src, dst = _bits(a), _bits(out)
    if src is None:
        return None
    _sharded(lambda i, j: np.multiply(src[i:j], mask_of(i, j), out=dst[i:j]), a)
    return out


def _elementwise(kernel):
    """``kernel`` of arrays of one shape, sharded along the first axis, also for 0-d arrays (seen as ``(1,)``)."""
    def run(*arrays):
        if arrays[0].ndim:
            return kernel(*arrays)
        return kernel(*(np.reshape(a, (1,)) for a in arrays)).reshape(())
    run.__doc__ = kernel.__doc__
    return run


@_elementwise
def where_zero(mask: np.ndarray, a: np.ndarray) -> np.ndarray:
    """``where(mask, a, 0)`` exactly, faster (:func:`_masked_copy`): NumPy's ``where`` (and every masked copy)
    runs at a fraction of the speed of a plain multiply (docs/measurements.md). The result keeps the inputs'
    memory layout.
    """
    out = _masked_copy(a, lambda i, j: mask[i:j])
    return out if out is not None else np.where(mask, a, np.zeros((), dtype=a.dtype))


@_elementwise
def relu(x: np.ndarray) -> np.ndarray:
    """``maximum(x, 0)`` into a new array of ``x``'s memory layout, over the worker shards."""
    out = np.empty_like(x)
    zero = np.zeros((), dtype=x.dtype)
    _sharded(lambda i, j: np.maximum(x[i:j], zero, out=out[i:j]), x)
    return out


@_elementwise
def relu_backward(dy: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``where(y > 0, dy, 0)``, as :func:`where_zero` with the mask made shard by shard."""
    out = _masked_copy(dy, lambda i, j: y[i:j] > 0)
    return out if out is not None else np.where(y > 0, dy, np.zeros((), dtype=dy.dtype))


def _row_blocks(m: np.ndarray, *vectors):
    """``(rows, tiles)``: rows per block of ``m (R, K)`` (:func:`_block_rows`) and each ``(K,)`` vector repeated
    that many times, block-shaped operands: NumPy runs one contiguous loop a block, where a row-broadcast vector
    takes one loop a row and ran about half as fast (docs/measurements.md)."""
    rows = max(1, min(m.shape[0], _block_rows(m.shape[1] * m.itemsize)))
    return rows, [np.tile(v, (rows, 1)) for v in vectors]


def bn_center(m: np.ndarray, g: int, mean_of):
    """Batch norm statistics of rows ``m (R, g*C)``: ``(mean (C,), centered, column sums of centered**2)``
    (the last folded to C by the caller), ``mean = mean_of(per-channel sums)``. Two passes over ``m`` and one
    over ``centered``, no temporaries."""
    total = _sum(_sharded(lambda a, b: np.add.reduce(m[a:b], axis=0), m))
    mean_c = mean_of(np.sum(total.reshape(g, -1), axis=0))
    mean = np.tile(mean_c, g).astype(m.dtype)
    centered = np.empty(m.shape, dtype=m.dtype)

    def center(a, b):
        c = centered[a:b]
        np.subtract(m[a:b], mean, out=c)
        return np.einsum("ij,ij->j", c, c)  # one pass, no temporary (as fast as a plain sum)
    return mean_c, centered, _sum(_sharded(center, m))


def bn_affine(m: np.ndarray, scale: np.ndarray, shift: np.ndarray | None) -> np.ndarray:
    """``m * scale + shift`` (shift may be None) into a new array, row-broadcast vectors."""
    out = np.empty(m.shape, dtype=m.dtype)

    def shard(a, b):
        np.multiply(m[a:b], scale, out=out[a:b])
        if shift is not None:
            out[a:b] += shift
    _sharded(shard, m)
    return out


def bn_grad_sums(d: np.ndarray, centered: np.ndarray):
    """Column sums of ``d`` and of ``d * centered`` (one pass each, no temporary)."""
    parts = _sharded(lambda a, b: (np.add.reduce(d[a:b], axis=0), np.einsum("ij,ij->j", d[a:b], centered[a:b])), d)
    return _sum([p[0] for p in parts]), _sum([p[1] for p in parts])


def bn_input_grad(d, centered, scale, k, shift) -> np.ndarray:
    """``d * scale - centered * k - shift`` (row-broadcast vectors, :func:`_row_blocks`) into a new array, block by
    block."""
    out = np.empty(d.shape, dtype=d.dtype)
    rows, (scale_rows, k_rows, shift_rows) = _row_blocks(d, scale, k, shift)

    def shard(a, b):
        tmp = np.empty((min(b - a, rows), d.shape[1]), dtype=d.dtype)
        for r0, r1 in _blocks(a, b, d.shape[1] * d.itemsize):
            n = r1 - r0
            o, t = out[r0:r1], tmp[:n]
            np.multiply(d[r0:r1], scale_rows[:n], out=o)
            np.multiply(centered[r0:r1], k_rows[:n], out=t)
            o -= t
            o -= shift_rows[:n]
    _sharded(shard, d)
    return out


def im2col_nhwc(xh: np.ndarray, n0: int, n1: int, pbuf: np.ndarray, col: np.ndarray, pads, stride, dilation):
    """Channels-innermost columns of samples ``n0:n1`` of the channels-last ``xh (N, H, W, C)``, as the rows
    ``(m*oh*ow, kh*kw*C)``: the chunk is copied into the zero-bordered ``pbuf (nb, Hp, Wp, C)``, then every
    window at once through one strided view (``as_strided``) into ``col (nb, oh, ow, kh, kw, C)``. Two copies
    instead of kh*kw: faster, most on several threads, where the portable path's many short copies contend for
    the GIL (docs/measurements.md)."""
    s = pbuf.strides
    return _copy_windows(xh, n0, n1, pbuf, col, pads, (s[0], s[1] * stride[0], s[2] * stride[1],
                                                      s[1] * dilation[0], s[2] * dilation[1], s[3]))


def im2col_blocked(xh: np.ndarray, n0: int, n1: int, pbuf: np.ndarray, col: np.ndarray, pads, stride, dilation,
                   block: int):
    """:func:`xpcnn.functional.conv.columns.im2col_blocked` (width-blocked columns
    ``(nb, oh, ow/B, kh, span, C)``) as one copy through a strided view, as :func:`im2col_nhwc`."""
    s = pbuf.strides
    return _copy_windows(xh, n0, n1, pbuf, col, pads, (s[0], s[1] * stride[0], s[2] * stride[1] * block,
                                                      s[1] * dilation[0], s[2], s[3]))


def _copy_windows(xh, n0: int, n1: int, pbuf, col, pads, strides) -> np.ndarray:
    """Samples ``n0:n1`` of ``xh`` into the interior of ``pbuf``, then the view of ``pbuf`` with ``strides`` into
    ``col``; returns the filled part of ``col`` as rows ``(m*col.shape[1]*col.shape[2], -1)``."""
    m = n1 - n0
    h, w = xh.shape[1], xh.shape[2]
    pbuf[:m, pads[0]:pads[0] + h, pads[2]:pads[2] + w, :] = xh[n0:n1]
    np.copyto(col[:m], as_strided(pbuf, shape=(m,) + col.shape[1:], strides=strides, writeable=False))
    return col[:m].reshape(m * col.shape[1] * col.shape[2], -1)


def im2col_kmajor(xpad: np.ndarray, col: np.ndarray, stride, dilation) -> np.ndarray:
    """:func:`xpcnn.functional.conv.columns.im2col_kmajor` (ow-innermost columns ``(G, kh, kw, C/G, m, oh, ow)``
    of the padded NCHW chunk ``xpad (m, C, Hp, Wp)``, contiguous) as one copy through a strided view of every
    window, instead of kh*kw copies."""
    g, kh, kw, cg, _, oh, ow = col.shape
    m = xpad.shape[0]
    xpad = np.ascontiguousarray(xpad)
    sn, sc, sh, sw = xpad.strides
    windows = as_strided(xpad, shape=(g, kh, kw, cg, m, oh, ow), writeable=False,
                         strides=(sc * cg, sh * dilation[0], sw * dilation[1], sc, sn, sh * stride[0], sw * stride[1]))
    out = col if m == col.shape[4] else col[:, :, :, :, 0:m, :, :]
    np.copyto(out, windows)
    return out


def max_pool2d(x: np.ndarray, kernel, stride, oh: int, ow: int, idx_dtype):
    """``(y, idx)`` of max pooling over the (already padded) ``x``, as the portable loop computes them (first
    maximum, NaN wins), every pass written into preallocated blocks of ~256 KiB (faster than allocating each
    pass's result: docs/measurements.md)."""
    n, c = x.shape[0], x.shape[1]
    y, idx = empty_nchw(xnp, (n, c, oh, ow), x.dtype, None), empty_nchw(xnp, (n, c, oh, ow), idx_dtype, None)
    sample_bytes = _sample_bytes(y)

    def shard(a, b):  # blocks of ~256 KiB of output: the passes run on output-sized arrays
        rows = min(b - a, _block_rows(sample_bytes))
        better, nan, k_or_0 = (empty_nchw(xnp, (rows, c, oh, ow), t, None) for t in (bool, bool, idx_dtype))
        for r0, r1 in _blocks(a, b, sample_bytes):
            m = r1 - r0
            block = (x[r0:r1], y[r0:r1], idx[r0:r1], better[:m], nan[:m], k_or_0[:m])
            _max_pool_block(*block, kernel, stride, oh, ow, nan_aware=False)
            if np.isnan(y[r0:r1]).any():  # a NaN in some window (maximum propagated it): redo, NaN wins
                _max_pool_block(*block, kernel, stride, oh, ow, nan_aware=True)
    _sharded(shard, x)
    return y, idx


def _max_pool_block(x, y, idx, better, nan, k_or_0, kernel, stride, oh: int, ow: int, nan_aware: bool) -> None:
    """One block of :func:`max_pool2d`. Without NaN in the windows ``isnan`` is all False, so the NaN-unaware
    pass (two passes fewer per offset) gives the same result; the caller checks."""
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            s = window(x, i, j, stride, (1, 1), oh, ow)
            if i == j == 0:
                np.copyto(y, s)
                idx[...] = 0
                continue
            np.greater(s, y, out=better)
            if nan_aware:
                np.logical_or(better, np.isnan(s, out=nan), out=better)
            np.maximum(y, s, out=y)
            np.multiply(better, idx.dtype.type(i * kernel[1] + j), out=k_or_0)
            np.maximum(idx, k_or_0, out=idx)


def max_pool2d_backward(dy: np.ndarray, idx: np.ndarray, padded_shape, kernel, stride) -> np.ndarray | None:
    """Input gradient of max pooling on the padded grid ``padded_shape``: each window offset puts
    ``where(idx == k, dy, 0)`` into its strided window of ``dx`` (written where windows are disjoint, else added),
    block by block, by the exact bit multiply of :func:`_masked_copy` (inf and NaN in ``dy`` as the portable path
    has them, with no check pass; docs/measurements.md). None for an item width without unsigned integers: the
    caller then runs the portable code."""
    n, c, h, w = padded_shape
    oh, ow = dy.shape[2], dy.shape[3]
    disjoint = stride[0] >= kernel[0] and stride[1] >= kernel[1]
    dx = empty_nchw(xnp, padded_shape, dy.dtype, None)
    dy_bits, dx_bits = _bits(dy), _bits(dx)
    if dy_bits is None:
        return None
    if not disjoint or (oh * stride[0], ow * stride[1]) != (h, w) or tuple(stride) != tuple(kernel):
        dx[...] = 0  # sums of overlapping windows, or positions no window covers
    sample_bytes = _sample_bytes(dy)

    def shard(a, b):
        rows = min(b - a, _block_rows(sample_bytes))
        eq, prod = empty_nchw(xnp, (rows, c, oh, ow), bool, None), empty_nchw(xnp, (rows, c, oh, ow), dy.dtype, None)
        for r0, r1 in _blocks(a, b, sample_bytes):
            e, t = eq[:r1 - r0], prod[:r1 - r0]
            for i in range(kernel[0]):
                for j in range(kernel[1]):
                    np.equal(idx[r0:r1], idx.dtype.type(i * kernel[1] + j), out=e)
                    if disjoint:
                        np.multiply(dy_bits[r0:r1], e, out=window(dx_bits[r0:r1], i, j, stride, (1, 1), oh, ow))
                    else:
                        np.multiply(dy_bits[r0:r1], e, out=_bits(t))
                        win = window(dx[r0:r1], i, j, stride, (1, 1), oh, ow)
                        win += t
    _sharded(shard, dx)
    return dx


KERNELS = {
    "accumulate": accumulate, "where_zero": where_zero, "relu": relu, "relu_backward": relu_backward,
    "bn_center": bn_center, "bn_affine": bn_affine, "bn_grad_sums": bn_grad_sums, "bn_input_grad": bn_input_grad,
    "im2col_nhwc": im2col_nhwc, "im2col_blocked": im2col_blocked, "im2col_kmajor": im2col_kmajor,
    "max_pool2d": max_pool2d, "max_pool2d_backward": max_pool2d_backward,
}
