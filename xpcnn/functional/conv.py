"""2-D convolution by im2col + one GEMM, and its backward by col2im.

Column layout ``(C, kh, kw, N, oh, ow)``: each of the kh*kw kernel offsets is one
strided-slice copy, and the three GEMMs of forward and backward are plain 2-D
products ``W(F, K) @ col(K, P)``, ``dY(F, P) @ col.T`` and ``W.T @ dY`` with
``K = C/groups*kh*kw`` and ``P = N*oh*ow`` (a batch over groups when groups > 1).
"""
from __future__ import annotations

from typing import Any

from array_api_compat import array_namespace, device

from ._util import conv_padding, out_size, pad2d, pair, unpad2d, window


def conv2d_geometry(x_shape, w_shape, stride=1, padding=0, dilation=1, groups=1):
    """Check shapes and options; return ``(stride, dilation, pads, oh, ow)``."""
    if len(x_shape) != 4:
        raise ValueError(f"conv2d expects a 4-D input (N, C, H, W), got shape {tuple(x_shape)}")
    if len(w_shape) != 4:
        raise ValueError(f"conv2d expects a 4-D weight (F, C/groups, kh, kw), got shape {tuple(w_shape)}")
    n, c, h, w = x_shape
    f, cg, kh, kw = w_shape
    if not isinstance(groups, int) or groups < 1 or c % groups or f % groups:
        raise ValueError(f"groups={groups!r} must be a positive int dividing in_channels={c} and out_channels={f}")
    if cg * groups != c:
        raise ValueError(f"conv2d: input has {c} channels, weight expects {cg * groups} (= {cg} x groups={groups})")
    stride, dilation = pair(stride, "stride"), pair(dilation, "dilation")
    if min(stride) < 1 or min(dilation) < 1:
        raise ValueError(f"stride and dilation must be >= 1, got stride={stride}, dilation={dilation}")
    pads = conv_padding(padding, (kh, kw), dilation, stride)
    oh = out_size(h, kh, stride[0], pads[0] + pads[1], dilation[0])
    ow = out_size(w, kw, stride[1], pads[2] + pads[3], dilation[1])
    if oh < 1 or ow < 1:
        raise ValueError(f"conv2d: input of spatial size {h}x{w} (padding {pads}) is smaller than the "
                         f"dilated kernel {dilation[0] * (kh - 1) + 1}x{dilation[1] * (kw - 1) + 1}")
    return stride, dilation, pads, oh, ow


def im2col(xpad, kh: int, kw: int, stride, dilation, oh: int, ow: int):
    """Unfold a padded NCHW array into columns of shape ``(C, kh, kw, N, oh, ow)``.

    kh*kw strided-slice copies into one preallocated buffer.
    """
    xp = array_namespace(xpad)
    n, c = xpad.shape[0], xpad.shape[1]
    col = xp.empty((c, kh, kw, n, oh, ow), dtype=xpad.dtype, device=device(xpad))
    for i in range(kh):
        for j in range(kw):
            col[:, i, j, :, :, :] = xp.permute_dims(window(xpad, i, j, stride, dilation, oh, ow), (1, 0, 2, 3))
    return col


def col2im(col, padded_shape, stride, dilation):
    """Fold columns ``(C, kh, kw, N, oh, ow)`` back, summing overlaps: the adjoint of :func:`im2col`."""
    xp = array_namespace(col)
    c, kh, kw, n, oh, ow = col.shape
    out = xp.zeros(padded_shape, dtype=col.dtype, device=device(col))
    for i in range(kh):
        for j in range(kw):
            hi, wj = i * dilation[0], j * dilation[1]
            out[:, :, hi:hi + stride[0] * (oh - 1) + 1:stride[0], wj:wj + stride[1] * (ow - 1) + 1:stride[1]] += \
                xp.permute_dims(col[:, i, j, :, :, :], (1, 0, 2, 3))
    return out


def conv2d_forward(x, weight, bias=None, stride: Any = 1, padding: Any = 0, dilation: Any = 1, groups: int = 1):
    """Convolution (cross-correlation, as in PyTorch). Returns ``(y, ctx)`` for :func:`conv2d_backward`."""
    xp = array_namespace(x, weight)
    stride, dilation, pads, oh, ow = conv2d_geometry(x.shape, weight.shape, stride, padding, dilation, groups)
    n = x.shape[0]
    f, cg, kh, kw = weight.shape
    xpad = pad2d(x, pads)
    col = im2col(xpad, kh, kw, stride, dilation, oh, ow)
    k, p = cg * kh * kw, n * oh * ow
    if groups == 1:
        y = xp.reshape(weight, (f, k)) @ xp.reshape(col, (k, p))
    else:
        y = xp.matmul(xp.reshape(weight, (groups, f // groups, k)), xp.reshape(col, (groups, k, p)))
    y = xp.reshape(y, (f, n, oh, ow))
    if bias is not None:
        y += xp.reshape(bias, (f, 1, 1, 1))
    ctx = (col, weight, x.shape, xpad.shape, pads, stride, dilation, groups, bias is not None)
    return xp.permute_dims(y, (1, 0, 2, 3)), ctx


def conv2d_backward(dy, ctx):
    """Gradients ``(dx, dweight, dbias)`` of :func:`conv2d_forward` (dbias is None without bias)."""
    col, weight, x_shape, padded_shape, pads, stride, dilation, groups, has_bias = ctx
    xp = array_namespace(dy, weight)
    f, cg, kh, kw = weight.shape
    k = cg * kh * kw
    n, _, oh, ow = dy.shape
    p = n * oh * ow
    dyt = xp.reshape(xp.permute_dims(dy, (1, 0, 2, 3)), (groups, f // groups, p))
    colg = xp.reshape(col, (groups, k, p))
    wg = xp.reshape(weight, (groups, f // groups, k))
    if groups == 1:
        dw = dyt[0, ...] @ xp.matrix_transpose(colg[0, ...])
        dcol = xp.matrix_transpose(wg[0, ...]) @ dyt[0, ...]
    else:
        dw = xp.matmul(dyt, xp.matrix_transpose(colg))
        dcol = xp.matmul(xp.matrix_transpose(wg), dyt)
    dcol = xp.reshape(dcol, col.shape)
    dx = unpad2d(col2im(dcol, padded_shape, stride, dilation), pads)
    db = xp.sum(dy, axis=(0, 2, 3)) if has_bias else None
    return dx, xp.reshape(dw, weight.shape), db


def conv2d(x, weight, bias=None, stride: Any = 1, padding: Any = 0, dilation: Any = 1, groups: int = 1):
    """Forward only."""
    return conv2d_forward(x, weight, bias, stride, padding, dilation, groups)[0]
