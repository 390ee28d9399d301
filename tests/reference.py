"""Slow, obviously-correct loop references in plain NumPy float64.

These are the classic tutorial loops (batch, output channel, output row,
output column), written independently of ``xpcnn`` (no im2col, no strided
slicing tricks), so the library can be checked against them. Every function
takes and returns NumPy float64 arrays. Padding is ``(top, bottom, left, right)``.
"""
from __future__ import annotations

import numpy as np


def pads_of(padding, kernel, dilation, stride=(1, 1)):
    """Resolve a Conv2d-style padding (int, pair, "same", "valid") to (top, bottom, left, right), as PyTorch."""
    if padding == "valid":
        return (0, 0, 0, 0)
    if padding == "same":
        assert stride == (1, 1)
        th, tw = dilation[0] * (kernel[0] - 1), dilation[1] * (kernel[1] - 1)
        return (th // 2, th - th // 2, tw // 2, tw - tw // 2)  # PyTorch puts the odd extra bottom/right
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    return (ph, ph, pw, pw)


def _pad(x, pads, value=0.0):
    t, b, l, r = pads
    n, c, h, w = x.shape
    out = np.full((n, c, h + t + b, w + l + r), value, dtype=np.float64)
    out[:, :, t:t + h, l:l + w] = x
    return out


def _out(size, k, s, pad_total, d=1):
    return (size + pad_total - d * (k - 1) - 1) // s + 1


def conv2d_forward(x, w, b=None, stride=(1, 1), pads=(0, 0, 0, 0), dilation=(1, 1), groups=1):
    """Cross-correlation, NCHW, weight (F, C/groups, kh, kw)."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    n, c, h, wd = x.shape
    f, cg, kh, kw = w.shape
    sh, sw = stride
    dh, dw = dilation
    xp = _pad(x, pads)
    oh = _out(h, kh, sh, pads[0] + pads[1], dh)
    ow = _out(wd, kw, sw, pads[2] + pads[3], dw)
    fg = f // groups
    y = np.zeros((n, f, oh, ow))
    for i in range(n):
        for o in range(f):
            g = o // fg
            for r in range(oh):
                for s in range(ow):
                    acc = 0.0
                    for ci in range(cg):
                        for p in range(kh):
                            for q in range(kw):
                                acc += w[o, ci, p, q] * xp[i, g * cg + ci, r * sh + p * dh, s * sw + q * dw]
                    y[i, o, r, s] = acc + (0.0 if b is None else b[o])
    return y


def conv2d_backward(dy, x, w, stride=(1, 1), pads=(0, 0, 0, 0), dilation=(1, 1), groups=1):
    """``(dx, dw, db)`` of :func:`conv2d_forward` for upstream gradient ``dy``."""
    dy, x, w = (np.asarray(a, np.float64) for a in (dy, x, w))
    n, c, h, wd = x.shape
    f, cg, kh, kw = w.shape
    sh, sw = stride
    dh, dwl = dilation
    xp = _pad(x, pads)
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(w)
    oh, ow = dy.shape[2], dy.shape[3]
    fg = f // groups
    for i in range(n):
        for o in range(f):
            g = o // fg
            for r in range(oh):
                for s in range(ow):
                    gout = dy[i, o, r, s]
                    for ci in range(cg):
                        for p in range(kh):
                            for q in range(kw):
                                hh, ww = r * sh + p * dh, s * sw + q * dwl
                                dw[o, ci, p, q] += gout * xp[i, g * cg + ci, hh, ww]
                                dxp[i, g * cg + ci, hh, ww] += gout * w[o, ci, p, q]
    t, _, l, _ = pads
    dx = dxp[:, :, t:t + h, l:l + wd]
    db = dy.sum(axis=(0, 2, 3))
    return dx, dw, db


def max_pool2d_forward(x, kernel, stride=None, padding=(0, 0)):
    """Max pooling with -inf padding; returns ``(y, argmax)`` where argmax holds the padded (row, col) of the
    FIRST maximum of each window in row-major window order (PyTorch's choice)."""
    x = np.asarray(x, np.float64)
    stride = kernel if stride is None else stride
    kh, kw = kernel
    sh, sw = stride
    ph, pw = padding
    n, c, h, w = x.shape
    xp = _pad(x, (ph, ph, pw, pw), -np.inf)
    oh, ow = _out(h, kh, sh, 2 * ph), _out(w, kw, sw, 2 * pw)
    y = np.zeros((n, c, oh, ow))
    arg = np.zeros((n, c, oh, ow, 2), dtype=np.int64)
    for i in range(n):
        for ch in range(c):
            for r in range(oh):
                for s in range(ow):
                    best, where = -np.inf, None
                    for p in range(kh):
                        for q in range(kw):
                            v = xp[i, ch, r * sh + p, s * sw + q]
                            if where is None or v > best:
                                best, where = v, (r * sh + p, s * sw + q)
                    y[i, ch, r, s] = best
                    arg[i, ch, r, s] = where
    return y, arg


def max_pool2d_backward(dy, x, kernel, stride=None, padding=(0, 0)):
    """Route each output gradient to the first maximum of its window; sum where windows overlap."""
    x = np.asarray(x, np.float64)
    _, arg = max_pool2d_forward(x, kernel, stride, padding)
    ph, pw = padding
    n, c, h, w = x.shape
    dxp = np.zeros((n, c, h + 2 * ph, w + 2 * pw))
    for i in range(n):
        for ch in range(c):
            for r in range(dy.shape[2]):
                for s in range(dy.shape[3]):
                    hh, ww = arg[i, ch, r, s]
                    dxp[i, ch, hh, ww] += dy[i, ch, r, s]
    return dxp[:, :, ph:ph + h, pw:pw + w]


def avg_pool2d_forward(x, kernel, stride=None, padding=(0, 0)):
    """Average pooling with zero padding counted in the divisor (PyTorch's count_include_pad=True)."""
    x = np.asarray(x, np.float64)
    stride = kernel if stride is None else stride
    kh, kw = kernel
    sh, sw = stride
    ph, pw = padding
    n, c, h, w = x.shape
    xp = _pad(x, (ph, ph, pw, pw))
    oh, ow = _out(h, kh, sh, 2 * ph), _out(w, kw, sw, 2 * pw)
    y = np.zeros((n, c, oh, ow))
    for i in range(n):
        for ch in range(c):
            for r in range(oh):
                for s in range(ow):
                    acc = 0.0
                    for p in range(kh):
                        for q in range(kw):
                            acc += xp[i, ch, r * sh + p, s * sw + q]
                    y[i, ch, r, s] = acc / (kh * kw)
    return y


def avg_pool2d_backward(dy, x_shape, kernel, stride=None, padding=(0, 0)):
    stride = kernel if stride is None else stride
    kh, kw = kernel
    sh, sw = stride
    ph, pw = padding
    n, c, h, w = x_shape
    dxp = np.zeros((n, c, h + 2 * ph, w + 2 * pw))
    for i in range(n):
        for ch in range(c):
            for r in range(dy.shape[2]):
                for s in range(dy.shape[3]):
                    for p in range(kh):
                        for q in range(kw):
                            dxp[i, ch, r * sh + p, s * sw + q] += dy[i, ch, r, s] / (kh * kw)
    return dxp[:, :, ph:ph + h, pw:pw + w]


def _bins(size, out):
    # PyTorch: start = floor(i * size / out), end = ceil((i + 1) * size / out)
    return [(int(np.floor(i * size / out)), int(np.ceil((i + 1) * size / out))) for i in range(out)]


def adaptive_avg_pool2d_forward(x, output_size):
    x = np.asarray(x, np.float64)
    n, c, h, w = x.shape
    oh, ow = output_size
    y = np.zeros((n, c, oh, ow))
    for a, (h0, h1) in enumerate(_bins(h, oh)):
        for b, (w0, w1) in enumerate(_bins(w, ow)):
            for i in range(n):
                for ch in range(c):
                    y[i, ch, a, b] = sum(x[i, ch, r, s] for r in range(h0, h1) for s in range(w0, w1)) / (
                        (h1 - h0) * (w1 - w0))
    return y


def adaptive_avg_pool2d_backward(dy, x_shape):
    n, c, h, w = x_shape
    oh, ow = dy.shape[2], dy.shape[3]
    dx = np.zeros(x_shape)
    for a, (h0, h1) in enumerate(_bins(h, oh)):
        for b, (w0, w1) in enumerate(_bins(w, ow)):
            area = (h1 - h0) * (w1 - w0)
            for r in range(h0, h1):
                for s in range(w0, w1):
                    dx[:, :, r, s] += dy[:, :, a, b] / area
    return dx


def batch_norm_train(x, gamma, beta, running_mean, running_var, momentum=0.1, eps=1e-5):
    """PyTorch's training-mode batch norm, written out per channel: ``(y, new_rm, new_rv)``."""
    x = np.asarray(x, np.float64)
    c = x.shape[1]
    y = np.empty_like(x)
    rm, rv = np.array(running_mean, np.float64), np.array(running_var, np.float64)
    for ch in range(c):
        v = x[:, ch].ravel()
        m = v.sum() / v.size
        var_b = ((v - m) ** 2).sum() / v.size
        var_u = ((v - m) ** 2).sum() / (v.size - 1)
        y[:, ch] = (x[:, ch] - m) / np.sqrt(var_b + eps) * gamma[ch] + beta[ch]
        rm[ch] = (1 - momentum) * rm[ch] + momentum * m
        rv[ch] = (1 - momentum) * rv[ch] + momentum * var_u
    return y, rm, rv


def batch_norm_eval(x, gamma, beta, running_mean, running_var, eps=1e-5):
    x = np.asarray(x, np.float64)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return ((x - running_mean.reshape(shape)) / np.sqrt(running_var.reshape(shape) + eps) * gamma.reshape(shape)
            + beta.reshape(shape))
