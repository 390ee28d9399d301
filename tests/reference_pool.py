"""Slow loop references (plain NumPy float64) for PyTorch's pooling options and Conv2d's padding modes.

Written as PyTorch's CPU kernels read: per output, the window's start ``o*stride - pad`` and its taps, skipping
those outside the input; nothing shared with ``xpcnn``. Indices are flat ``row * W + col`` in the input plane.
"""
from __future__ import annotations

import math

import numpy as np

from reference import _bins  # PyTorch's adaptive bins


def pool_out(size, k, s, p, d=1, ceil_mode=False):
    """PyTorch's ``pooling_output_shape``."""
    num = size + 2 * p - d * (k - 1) - 1
    out = (math.ceil(num / s) if ceil_mode else math.floor(num / s)) + 1
    if ceil_mode and (out - 1) * s >= size + p:  # the last window must start inside the input or left padding
        out -= 1
    return out


def _first_max(plane, taps):
    """``(value, flat index)`` of the first maximum of ``plane`` over ``taps`` (row, col), in their order; a NaN
    wins (the last one), as PyTorch's kernels compare."""
    best, where = -np.inf, None
    for r, s in taps:
        v = plane[r, s]
        if where is None or v > best or np.isnan(v):
            best, where = v, r * plane.shape[1] + s
    return best, where


def max_pool2d(x, kernel, stride, padding, dilation=(1, 1), ceil_mode=False):
    """``(y, indices)``: the first maximum over the window's taps inside the input (a NaN wins, the last one)."""
    x = np.asarray(x, np.float64)
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    oh, ow = pool_out(h, kh, sh, ph, dh, ceil_mode), pool_out(w, kw, sw, pw, dw, ceil_mode)
    y = np.zeros((n, c, oh, ow))
    idx = np.zeros((n, c, oh, ow), dtype=np.int64)
    for i in range(n):
        for ch in range(c):
            for r in range(oh):
                for s in range(ow):
                    taps = [(r * sh - ph + p * dh, s * sw - pw + q * dw) for p in range(kh) for q in range(kw)]
                    y[i, ch, r, s], idx[i, ch, r, s] = _first_max(
                        x[i, ch], [(hh, ww) for hh, ww in taps if 0 <= hh < h and 0 <= ww < w])
    return y, idx


def max_pool2d_backward(dy, x_shape, indices):
    """Each output's gradient added at its index."""
    n, c, h, w = x_shape
    dx = np.zeros((n, c, h * w))
    for i in range(n):
        for ch in range(c):
            for k, g in zip(indices[i, ch].ravel(), dy[i, ch].ravel()):
                dx[i, ch, k] += g
    return dx.reshape(x_shape)


def _avg_windows(x_shape, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override):
    """Per output ``(r, s)``: the input rows, columns and divisor of its window (PyTorch's avg_pool2d)."""
    n, c, h, w = x_shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    oh, ow = pool_out(h, kh, sh, ph, 1, ceil_mode), pool_out(w, kw, sw, pw, 1, ceil_mode)
    out = {}
    for r in range(oh):
        for s in range(ow):
            h0, w0 = r * sh - ph, s * sw - pw
            h1, w1 = min(h0 + kh, h + ph), min(w0 + kw, w + pw)
            pool_size = (h1 - h0) * (w1 - w0)
            h0, w0, h1, w1 = max(h0, 0), max(w0, 0), min(h1, h), min(w1, w)
            if divisor_override is not None:
                div = divisor_override
            else:
                div = pool_size if count_include_pad else (h1 - h0) * (w1 - w0)
            out[r, s] = (range(h0, h1), range(w0, w1), div)
    return (oh, ow), out


def avg_pool2d(x, kernel, stride, padding, ceil_mode=False, count_include_pad=True, divisor_override=None):
    x = np.asarray(x, np.float64)
    n, c = x.shape[:2]
    (oh, ow), windows = _avg_windows(x.shape, kernel, stride, padding, ceil_mode, count_include_pad,
                                     divisor_override)
    y = np.zeros((n, c, oh, ow))
    for (r, s), (rows, cols, div) in windows.items():
        for i in range(n):
            for ch in range(c):
                y[i, ch, r, s] = sum(x[i, ch, a, b] for a in rows for b in cols) / div
    return y


def avg_pool2d_backward(dy, x_shape, kernel, stride, padding, ceil_mode=False, count_include_pad=True,
                        divisor_override=None):
    _, windows = _avg_windows(x_shape, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override)
    dx = np.zeros(x_shape)
    for (r, s), (rows, cols, div) in windows.items():
        for a in rows:
            for b in cols:
                dx[:, :, a, b] += dy[:, :, r, s] / div
    return dx


def adaptive_max_pool2d(x, output_size):
    """``(y, indices)`` over PyTorch's adaptive bins (first maximum, a NaN wins)."""
    x = np.asarray(x, np.float64)
    n, c, h, w = x.shape
    oh, ow = output_size
    y = np.zeros((n, c, oh, ow))
    idx = np.zeros((n, c, oh, ow), dtype=np.int64)
    for a, (h0, h1) in enumerate(_bins(h, oh)):
        for b, (w0, w1) in enumerate(_bins(w, ow)):
            for i in range(n):
                for ch in range(c):
                    y[i, ch, a, b], idx[i, ch, a, b] = _first_max(
                        x[i, ch], [(r, s) for r in range(h0, h1) for s in range(w0, w1)])
    return y, idx


def pad_mode(x, pads, mode):
    """``torch.nn.functional.pad`` of the last two axes, one output element at a time: ``pads`` is
    (top, bottom, left, right); mode "reflect" (mirror without the edge), "replicate" (the edge) or "circular"
    (wrap around)."""
    x = np.asarray(x, np.float64)
    t, b, l, r = pads
    n, c, h, w = x.shape

    def src(i, size):
        if mode == "reflect":
            return -i if i < 0 else (2 * (size - 1) - i if i >= size else i)
        if mode == "replicate":
            return min(max(i, 0), size - 1)
        return i % size  # circular

    out = np.zeros((n, c, h + t + b, w + l + r))
    for p in range(h + t + b):
        for q in range(w + l + r):
            out[:, :, p, q] = x[:, :, src(p - t, h), src(q - l, w)]
    return out


def pad_mode_backward(g, x_shape, pads, mode):
    """The adjoint of :func:`pad_mode`: each padded element's gradient added to the input element it copies
    (found by padding the map of flat input indices)."""
    n, c, h, w = x_shape
    source = pad_mode(np.arange(h * w, dtype=np.float64).reshape(1, 1, h, w), pads, mode)[0, 0].astype(int)
    dx = np.zeros(x_shape)
    for (p, q), k in np.ndenumerate(source):
        dx[:, :, k // w, k % w] += g[:, :, p, q]
    return dx
