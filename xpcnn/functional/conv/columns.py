"""im2col: the columns of a convolution, so that it is one GEMM.

Read :func:`im2col` and :func:`col2im` first: the reference, kh*kw strided-slice copies out of a padded input and
kh*kw adds back (``y = W(F, C*kh*kw) @ col``). The library's layouts below are the same copies into other
orders, built per batch chunk (:func:`chunks`) into buffers reused from chunk to chunk:

- "im2col" ``(G, kh, kw, C/G, m, oh, ow)``, ow innermost (:func:`im2col_kmajor`): few channels, groups;
- "im2col_nhwc" ``(m, oh, ow, kh, kw, C)``, channels innermost, from the channels-last input without a padded copy
  (:func:`im2col_nhwc`; in kh + kw passes, :func:`im2col_separable`), the rows ``(m*oh*ow, kh*kw*C)``;
- "im2col_blocked" (:func:`im2col_blocked`): each row the window of B adjacent outputs along the width,
  ``(m*oh*ow/B, kh*span*C)``, times the banded weight of :func:`weight_blocked`.

On NumPy one copy through a strided view of every window replaces the kh*kw copies (``kernels.numpy_kernels``).
Which layout runs is the planner's decision (:mod:`.planner`).
"""
from __future__ import annotations

import collections
from typing import Any

from array_api_compat import array_namespace, device

from ... import kernels, threads
from .._util import window, window_key
from . import planner
from .geometry import clip, fold_offsets, input_rows, span


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
            out[window_key(i, j, stride, dilation, oh, ow)] += xp.permute_dims(col[:, i, j, :, :, :], (1, 0, 2, 3))
    return out


def chunks(a: int, b: int, size: int) -> list:
    """``[a, b)`` as the fewest runs of at most ``size``, their lengths differing by at most one: no short tail
    chunk paying a whole chunk's fixed costs (LeNet conv2, batch 64 per worker in chunks of 58: 58 + 6)."""
    return threads.even_ranges(a, b, -(-(b - a) // size))


_workspaces: "collections.OrderedDict[tuple, Any]" = collections.OrderedDict()


def workspace(xp, role: str, shape, dtype, dev):
    """A zero-initialised buffer of ``shape`` kept for the next call that asks for the same ``role``, shape, dtype
    and device (no allocation nor zero fill per step: each is a launch on a GPU); the last
    :data:`~.planner.WORKSPACES` are kept. For buffers used only within one call, whose zero parts are never
    written (the border of a padded copy): the plain path runs on one thread, and one stream orders a GPU's
    uses."""
    key = (role, xp.__name__, str(dev), str(dtype), tuple(shape))
    buf = _workspaces.pop(key, None)
    if buf is None:
        buf = xp.zeros(shape, dtype=dtype, device=dev)
    _workspaces[key] = buf
    while len(_workspaces) > planner.WORKSPACES:
        _workspaces.popitem(last=False)
    return buf


def pad_chunk(x, n0: int, n1: int, pads, buf):
    """Samples ``n0:n1`` of ``x`` zero-padded into the NCHW buffer ``buf (nb, C, Hp, Wp)`` (whatever ``x``'s memory
    layout, the copy leaves them contiguous). The border of ``buf`` is zero from its allocation and never written.
    """
    top, _, left, _ = pads
    h, w = x.shape[2], x.shape[3]
    m = n1 - n0
    buf[0:m, :, top:top + h, left:left + w] = x[n0:n1, ...]
    return buf if m == buf.shape[0] else buf[0:m, ...]


def im2col_kmajor(xpad, col, stride, dilation):
    """im2col into ``col[..., :m, :, :]`` of shape ``(G, kh, kw, C/G, m, oh, ow)`` from ``xpad (m, C, Hp, Wp)``.

    kh*kw strided-slice copies whose innermost ow values are contiguous on both sides (faster than a
    channels-innermost layout for few channels). ``col`` viewed as ``(G, K, P)`` is the transposed column matrix;
    writes go to ``col`` itself, never through a view.
    """
    xp = array_namespace(xpad)
    g, kh, kw, cg, _, oh, ow = col.shape
    m = xpad.shape[0]
    xt = xp.permute_dims(xpad, (1, 0, 2, 3))  # (C, m, Hp, Wp): one permutation, not one per offset
    batch = slice(None) if m == col.shape[4] else slice(0, m)
    for i in range(kh):
        for j in range(kw):
            win = xt[window_key(i, j, stride, dilation, oh, ow)]  # (C, m, oh, ow)
            col[:, i, j, :, batch, :, :] = xp.reshape(win, (g, cg, m, oh, ow)) if g > 1 else win[None, ...]
    return col if m == col.shape[4] else col[:, :, :, :, 0:m, :, :]


def im2col_nhwc(xh, n0: int, m: int, col, offsets, split: bool = False):
    """im2col of samples ``n0:n0+m`` of the channels-last ``xh (N, H, W, C)`` into ``col (nb, oh, ow, kh, kw, C)``
    (channels innermost), returned as the rows ``(m*oh*ow, kh*kw*C)`` (``split``: as they lie, 6-D).

    No padded copy of the input: each kernel offset copies only the window that lies inside the input
    (:func:`~.geometry.fold_offsets`); the rest of ``col`` is padding, zero from its allocation and never written.
    """
    xp = array_namespace(xh)
    for i, j, rows, cols, in_rows, in_cols in offsets:
        col[0:m, rows, cols, i, j, :] = xh[n0:n0 + m, in_rows, in_cols, :]
    nb, oh, ow, kh, kw, c = col.shape
    out = col[0:m, ...] if m < nb else col
    return out if split else xp.reshape(out, (m * oh * ow, kh * kw * c))


def im2col_separable(xh, n0: int, m: int, rbuf, col, pads, stride, dilation, split: bool = False,
                     reverse: bool = False):
    """As :func:`im2col_nhwc`, in kh + kw copies: the kh row windows of samples ``n0:n0+m`` of ``xh (N, H, W, C)``
    into the zero-bordered ``rbuf (nb, oh, Wp, kh, C)`` (each the rows of the input it reaches: no padded copy;
    what falls in the padding is zero from the buffer's allocation and never written, so ``rbuf`` is kept per
    geometry), their kw column windows into ``col (nb, oh, ow, kh, kw, C)``; returned as the rows
    ``(m*oh*ow, kh*kw*C)`` (``split``: ``col`` as it lies, 6-D). ``reverse``: slot ``(i, j)`` holds the window
    of offset ``(kh-1-i, kw-1-j)`` (the spatially flipped kernel's columns)."""
    xp = array_namespace(xh)
    nb, oh, ow, kh, kw, c = col.shape
    h, w = xh.shape[1], xh.shape[2]
    b = slice(None) if m == nb else slice(0, m)
    src = slice(None) if n0 == 0 and m == xh.shape[0] else slice(n0, n0 + m)
    inside = slice(pads[2], pads[2] + w)
    for i in range(kh):
        lo, hi, r0 = clip(oh, (kh - 1 - i if reverse else i) * dilation[0], pads[0], stride[0], h)
        if hi > lo:
            rbuf[b, lo:hi, inside, i, :] = xh[src, r0:r0 + stride[0] * (hi - lo - 1) + 1:stride[0], :, :]
    for j in range(kw):
        c0 = (kw - 1 - j if reverse else j) * dilation[1]
        col[b, :, :, :, j, :] = rbuf[b, :, c0:c0 + stride[1] * (ow - 1) + 1:stride[1], :, :]
    out = col if m == nb else col[b, ...]
    return out if split else xp.reshape(out, (m * oh * ow, kh * kw * c))


def im2col_blocked(xh, n0: int, n1: int, pbuf, col, pads, stride, dilation, block: int):
    """Width-blocked columns of samples ``n0:n1`` of the channels-last ``xh (N, H, W, C)`` as the rows
    ``(m*oh*ow/B, kh*span*C)``: the chunk copied into the zero-bordered ``pbuf (nb, Hp, Wp, C)``, then one
    strided-slice copy per ``(i, u)`` into ``col (nb, oh, ow/B, kh, span, C)``."""
    xp = array_namespace(xh)
    m = n1 - n0
    h, w = xh.shape[1], xh.shape[2]
    pbuf[0:m, pads[0]:pads[0] + h, pads[2]:pads[2] + w, :] = xh[n0:n1, ...]
    nb, oh, owb, kh, sp, c = col.shape
    step = stride[1] * block
    for i in range(kh):
        rows = slice(i * dilation[0], i * dilation[0] + stride[0] * (oh - 1) + 1, stride[0])
        for u in range(sp):
            col[0:m, :, :, i, u, :] = pbuf[0:m, rows, u:u + step * (owb - 1) + 1:step, :]
    return xp.reshape(col[0:m, ...] if m < nb else col, (m * oh * owb, kh * sp * c))


def column_builder(xp, x, w_shape, layout: str, pads, stride, dilation, groups: int, oh: int, ow: int, nb: int,
                   block: int = 1, split: bool = False, reverse: bool = False, separable: bool = False):
    """``columns(n0, n1)``: the columns of samples ``n0:n1`` (at most ``nb``) in ``layout``, ``(m*oh*ow, K)``
    rows for "im2col_nhwc", ``(m*oh*ow/B, kh*span*C)`` for "im2col_blocked" (``block`` B),
    ``(G, kh, kw, C/G, m, oh, ow)`` for "im2col"; buffers are reused from one call to the next. ``split`` (the
    plan's tensordot): "im2col_nhwc" columns 6-D, ``(m, oh, ow, kh, kw, C)``; ``reverse`` (with ``split``):
    the kernel offsets in reverse order; ``separable``: in kh + kw copies (:func:`im2col_separable`)."""
    n, c, h, w = x.shape
    _, cg, kh, kw = w_shape
    dev = device(x)
    if layout == "im2col_nhwc" and input_rows((kh, kw), stride, pads):
        xh = xp.permute_dims(x, (0, 2, 3, 1))  # a view of channels-last memory: no copy at all
        if split:
            return lambda n0, n1: xp.reshape(xh if n1 - n0 == n else xh[n0:n1, ...], (n1 - n0, h, w, 1, 1, c))
        return lambda n0, n1: xp.reshape(xh[n0:n1, ...], ((n1 - n0) * h * w, c))
    if layout == "im2col_blocked":
        xh = xp.permute_dims(x, (0, 2, 3, 1))
        pbuf = xp.zeros((nb, h + pads[0] + pads[1], w + pads[2] + pads[3], c), dtype=x.dtype, device=dev)
        col = xp.empty((nb, oh, ow // block, kh, span(kw, block, stride[1], dilation[1]), c), dtype=x.dtype,
                       device=dev)
        fn = kernels.get("im2col_blocked", xp) or im2col_blocked
        return lambda n0, n1: fn(xh, n0, n1, pbuf, col, pads, stride, dilation, block)
    if layout == "im2col_nhwc":
        xh = xp.permute_dims(x, (0, 2, 3, 1))
        fast = kernels.get("im2col_nhwc", xp)
        if fast is not None:  # one strided-window copy per chunk from a padded copy (NumPy)
            pbuf = xp.zeros((nb, h + pads[0] + pads[1], w + pads[2] + pads[3], c), dtype=x.dtype, device=dev)
            col = xp.empty((nb, oh, ow, kh, kw, c), dtype=x.dtype, device=dev)
            return lambda n0, n1: fast(xh, n0, n1, pbuf, col, pads, stride, dilation)
        if separable:  # the row windows in a buffer kept from call to call (per geometry)
            rows = (nb, oh, w + pads[2] + pads[3], kh, c)
            rbuf = workspace(xp, f"rows {pads} {stride} {dilation} {reverse}", rows, x.dtype, dev)
            col = xp.empty((nb, oh, ow, kh, kw, c), dtype=x.dtype, device=dev)
            return lambda n0, n1: im2col_separable(xh, n0, n1 - n0, rbuf, col, pads, stride, dilation, split,
                                                   reverse)
        offsets = [(kh - 1 - o[0], kw - 1 - o[1]) + o[2:] if reverse else o
                   for o in fold_offsets(oh, ow, h, w, kh, kw, pads, stride, dilation)]
        col = xp.zeros((nb, oh, ow, kh, kw, c), dtype=x.dtype, device=dev)
        return lambda n0, n1: im2col_nhwc(xh, n0, n1 - n0, col, offsets, split)
    pbuf = xp.zeros((nb, c, h + pads[0] + pads[1], w + pads[2] + pads[3]), dtype=x.dtype, device=dev)
    col = xp.empty((groups, kh, kw, cg, nb, oh, ow), dtype=x.dtype, device=dev)
    fn = kernels.get("im2col_kmajor", xp) or im2col_kmajor
    return lambda n0, n1: fn(pad_chunk(x, n0, n1, pads, pbuf), col, stride, dilation)


def weight_kf(xp, weight, groups: int):
    """``(F, C/G, kh, kw)`` -> ``(K, F)`` (groups == 1) or ``(G, K, F/G)``, K ordered (kh, kw, C/G) as the columns."""
    f, cg, kh, kw = weight.shape
    if groups == 1:
        return xp.reshape(xp.permute_dims(weight, (2, 3, 1, 0)), (kh * kw * cg, f))
    wg = xp.reshape(weight, (groups, f // groups, cg, kh, kw))
    return xp.reshape(xp.permute_dims(wg, (0, 3, 4, 2, 1)), (groups, kh * kw * cg, f // groups))


def weight_blocked(xp, weight, block: int, stride, dilation):
    """``(F, C, kh, kw)`` -> ``(kh*span*C, B*F)``, rows ``(i, u, c)`` and columns ``(b, f)``: ``W[f, c, i, j]``
    where ``u = b*s + j*d`` (the input column of tap j for output b of the block), zero elsewhere."""
    f, c, kh, kw = weight.shape
    s, d = stride[1], dilation[1]
    sp = span(kw, block, s, d)
    wb = xp.zeros((kh, sp, c, block, f), dtype=weight.dtype, device=device(weight))
    wt = xp.permute_dims(weight, (2, 3, 1, 0))  # (kh, kw, C, F)
    for b in range(block):
        wb[:, b * s:b * s + d * (kw - 1) + 1:d, :, b, :] = wt
    return xp.reshape(wb, (kh * sp * c, block * f))
