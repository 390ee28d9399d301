"""The input gradient of a convolution, by the algorithms the planner picks between (:mod:`.planner`):

- col2im: ``dcol = dY @ W.T`` per chunk, folded back into the input's shape (:func:`col2im_chunk`), the column
  gradient channels-innermost or ow-innermost, or in kw + kh adds (:func:`col2im_separable`);
- by convolution (:func:`convolution_dx`): at stride 1 the forward convolution of ``dY`` with the flipped,
  channel-swapped weight ("transposed"); at stride s one such stride-1 convolution per phase of the stride
  ("polyphase"): the forward's fast GEMM (K = kh*kw*F) and no col2im;
- banded rows: :mod:`.banded`.
"""
from __future__ import annotations

from array_api_compat import array_namespace, device

from ... import kernels
from .forward import forward_rows
from .geometry import fold_offsets, phases


def adder(xp):
    """``add(dst, key, src)`` doing ``dst[key] += src``, with the namespace's single-write kernel if registered."""
    acc = kernels.get("accumulate", xp)
    if acc is not None:
        return acc

    def add(dst, key, src):
        dst[key] += src
    return add


def col2im_nhwc(dcol, dx, n0, pads, stride, dilation):
    """Adjoint of im2col for channels-innermost columns ``dcol (m, oh, ow, G, kh, kw, C/G)``, summed straight
    into samples ``n0:n0+m`` of the unpadded channels-last ``dx (N, H, W, C)``."""
    xp = array_namespace(dcol)
    m, oh, ow, g, kh, kw, cg = dcol.shape
    h, w, c = dx.shape[1], dx.shape[2], dx.shape[3]
    add = adder(xp)
    for i, j, rows, cols, in_rows, in_cols in fold_offsets(oh, ow, h, w, kh, kw, pads, stride, dilation):
        src = dcol[:, rows, cols, :, i, j, :]
        src = xp.reshape(src, (m, src.shape[1], src.shape[2], c)) if g > 1 else src[:, :, :, 0, :]
        add(dx, (slice(n0, n0 + m), in_rows, in_cols, slice(None)), src)
    return dx


def col2im_kmajor(dcol, dx, n0, pads, stride, dilation):
    """Adjoint of :func:`~.columns.im2col_kmajor`: ``dcol (G, kh, kw, C/G, m, oh, ow)`` summed into samples
    ``n0:n0+m`` of the unpadded NCHW ``dx (N, C, H, W)`` (ow innermost: the layout for few channels)."""
    xp = array_namespace(dcol)
    g, kh, kw, cg, m, oh, ow = dcol.shape
    c, h, w = dx.shape[1], dx.shape[2], dx.shape[3]
    add = adder(xp)
    for i, j, rows, cols, in_rows, in_cols in fold_offsets(oh, ow, h, w, kh, kw, pads, stride, dilation):
        src = xp.permute_dims(dcol[:, i, j, :, :, rows, cols], (2, 0, 1, 3, 4))  # (m, G, C/G, ., .)
        src = xp.reshape(src, (m, c, src.shape[3], src.shape[4]))
        add(dx, (slice(n0, n0 + m), slice(None), in_rows, in_cols), src)
    return dx


def col2im_separable(dcol, dx, n0, pads, stride, dilation):
    """Adjoint of :func:`~.columns.im2col_separable`: ``dcol (m, oh, ow, kh, kw, C)`` summed into samples
    ``n0:n0+m`` of the channels-last ``dx (N, H, W, C)`` in kw + kh adds (through zero-bordered buffers) and one
    copy."""
    xp = array_namespace(dcol)
    m, oh, ow, kh, kw, c = dcol.shape
    h, w = dx.shape[1], dx.shape[2]
    hp, wp = h + pads[0] + pads[1], w + pads[2] + pads[3]
    rows = xp.zeros((m, oh, wp, kh, c), dtype=dcol.dtype, device=device(dcol))
    for j in range(kw):
        c0 = j * dilation[1]
        rows[:, :, c0:c0 + stride[1] * (ow - 1) + 1:stride[1], :, :] += dcol[:, :, :, :, j, :]
    full = xp.zeros((m, hp, wp, c), dtype=dcol.dtype, device=device(dcol))
    for i in range(kh):
        r0 = i * dilation[0]
        full[:, r0:r0 + stride[0] * (oh - 1) + 1:stride[0], :, :] += rows[:, :, :, i, :]
    dx[n0:n0 + m, ...] = full[:, pads[0]:pads[0] + h, pads[2]:pads[2] + w, :]
    return dx


def col2im_buffer(xp, ctx, plan, dtype, dev):
    """The gradient buffer col2im sums into: channels-last ``(N, H, W, C)`` (uninitialised where the separable
    col2im writes every sample, else zeros) or, for an ow-innermost column gradient, NCHW zeros."""
    n, c, h, w = ctx.x.shape
    if ctx.groups == 1 and plan.channels_last and plan.separable:
        return xp.empty((n, h, w, c), dtype=dtype, device=dev)
    return xp.zeros((n, h, w, c) if plan.channels_last else (n, c, h, w), dtype=dtype, device=dev)


def col2im_chunk(xp, dym, dyg, wk, wkt, dx, n0: int, ctx, plan) -> None:
    """The column gradient of one chunk (``dym``: its channels-last rows of dY, ``dyg`` the same by group
    ``(G, P, F/G)``) times the weight ``wk (K, F)`` / ``(G, K, F/G)`` (``wkt`` its transpose), folded into
    ``dx`` at samples ``n0:``."""
    f, cg, kh, kw = ctx.weight.shape
    g, oh, ow = ctx.groups, ctx.oh, ctx.ow
    m = dym.shape[0] // (oh * ow)
    clast = plan.channels_last
    if g == 1:
        dcol = dym @ wkt if clast else wk @ xp.matrix_transpose(dym)  # (P, K) or (K, P)
    else:
        dcol = (xp.permute_dims(xp.matmul(dyg, wkt), (1, 0, 2)) if clast  # (P, G, K)
                else xp.matmul(wk, xp.matrix_transpose(dyg)))  # (G, K, P)
    geometry = (ctx.pads, ctx.stride, ctx.dilation)
    if clast and g == 1 and plan.separable:
        col2im_separable(xp.reshape(dcol, (m, oh, ow, kh, kw, cg)), dx, n0, *geometry)
    elif clast:
        col2im_nhwc(xp.reshape(dcol, (m, oh, ow, g, kh, kw, cg)), dx, n0, *geometry)
    else:
        col2im_kmajor(xp.reshape(dcol, (g, kh, kw, cg, m, oh, ow)), dx, n0, *geometry)


def convolution_dx(xp, dy, ctx, flipped: bool = False):
    """``dX`` of an ungrouped convolution as forward convolutions of ``dY``, one per phase of the stride: the
    input positions ``(r, c) + stride*(q, p)`` receive only the taps ``i`` with ``d*i = r + pad (mod s)``, so
    their gradient is a stride-1 convolution of ``dY`` with that sub-kernel, flipped in space and with its
    channel axes swapped (:func:`~.geometry.phases`). Channels-last ``(N, C, H, W)`` view.

    At stride 1 with the padding within the dilated kernel there is one phase reading all of ``dY``: the
    transposed convolution, ``W'[c, f, i, j] = W[f, c, kh-1-i, kw-1-j]`` padded ``d*(k-1) - p``, whose result
    is the gradient itself (no slices, no copy); ``flipped`` (the plain path): the flip and the swap in the
    columns' order and the contraction's axes, no flipped weight."""
    n, c, h, w = ctx.x.shape
    oh, ow = dy.shape[2], dy.shape[3]
    (sh, sw), (dh, dw) = ctx.stride, ctx.dilation
    rows_h = phases(h, oh, ctx.weight.shape[2], sh, dh, ctx.pads[0])
    rows_w = phases(w, ow, ctx.weight.shape[3], sw, dw, ctx.pads[2])
    # a phase no tap reaches, or whose taps all land in the padding, has a zero gradient
    live = [(rh, qh, sub_h, rw, qw, sub_w) for rh, qh, sub_h in rows_h for rw, qw, sub_w in rows_w
            if sub_h is not None and sub_w is not None
            and oh - sum(sub_h[2]) >= 1 and ow - sum(sub_w[2]) >= 1]
    if (sh, sw) == (1, 1) and len(live) == 1 and not any(live[0][2][2] + live[0][5][2]):  # transposed
        pads = live[0][2][3] + live[0][5][3]
        if flipped:
            rows = forward_rows(xp, dy, ctx.weight, pads, (1, 1), ctx.dilation, 1, h, w, flipped=True)[0]
        else:
            wt = xp.permute_dims(xp.flip(ctx.weight, axis=(2, 3)), (1, 0, 2, 3))
            rows = forward_rows(xp, dy, wt, pads, (1, 1), ctx.dilation, 1, h, w)[0]
        return xp.permute_dims(rows if rows.ndim == 4 else xp.reshape(rows, (n, h, w, c)), (0, 3, 1, 2))
    every = len(live) == len(rows_h) * len(rows_w)  # every position written: no zero fill needed
    dx = (xp.empty if every else xp.zeros)((n, h, w, c), dtype=dy.dtype, device=device(dy))
    wt = xp.permute_dims(ctx.weight, (1, 0, 2, 3))  # (C, F, kh, kw): dY's F channels in, C out
    for rh, qh, (taps_h, dil_h, (ct, cb), pads_h), rw, qw, (taps_w, dil_w, (cl, cr), pads_w) in live:
        sub = xp.flip(wt[:, :, taps_h, taps_w], axis=(2, 3))  # no negative-step slices: torch has none
        rows = forward_rows(xp, dy[:, :, ct:oh - cb, cl:ow - cr], sub, pads_h + pads_w, (1, 1),
                            (dil_h, dil_w), 1, qh, qw)[0]
        dx[:, rh:rh + sh * (qh - 1) + 1:sh, rw:rw + sw * (qw - 1) + 1:sw, :] = xp.reshape(rows, (n, qh, qw, c))
    return xp.permute_dims(dx, (0, 3, 1, 2))
