"""The weight gradient of a convolution: ``dW = col.T @ dY`` per chunk of recomputed (or kept) columns, in the
forward's layout, summed over chunks and shards, then ordered as the weight ``(F, C/G, kh, kw)``."""
from __future__ import annotations

from . import planner
from .geometry import span


def long_matmul(xp, a, b):
    """``a (K, P) @ b (P, F)``, on a CPU as a sum over blocks of :data:`~.planner.DW_BLOCK` rows of P: OpenBLAS
    runs these small-output, long-reduction products faster in pieces (``docs/measurements.md``)."""
    p, block = a.shape[1], planner.dw_blocks(a)
    if block is None or p <= block:
        return a @ b
    out = a[:, 0:block] @ b[0:block, :]
    for j in range(block, p, block):
        e = min(p, j + block)
        out += a[:, j:e] @ b[j:e, :]
    return out


def by_group(xp, dym, groups: int):
    """Channels-last rows of dY ``(P, F)`` seen by group, ``(G, P, F/G)``."""
    p, f = dym.shape
    return xp.permute_dims(xp.reshape(dym, (p, groups, f // groups)), (1, 0, 2))


def chunk_part(xp, cm, dym, dyg, dy_chunk, ctx, tensordot: bool):
    """One chunk's weight gradient from its columns ``cm`` and its dY: ``dy_chunk`` (NCHW, with ``tensordot``:
    ``(F, kh, kw, C)`` from the 6-D columns), else the channels-last rows ``dym`` (``dyg`` by group): ``(K, F)``,
    ``(kh*span*C, B*F)`` for width-blocked columns, ``(G, K, F/G)`` for groups."""
    f, cg, kh, kw = ctx.weight.shape
    p = dym.shape[0] if dym is not None else 0
    if tensordot:
        return xp.tensordot(dy_chunk, cm, axes=((0, 2, 3), (0, 1, 2)))
    if ctx.layout == "im2col_blocked":
        return long_matmul(xp, xp.matrix_transpose(cm), xp.reshape(dym, (p // ctx.block, ctx.block * f)))
    if ctx.layout == "im2col_nhwc":
        return long_matmul(xp, xp.matrix_transpose(cm), dym)
    if ctx.groups == 1:
        return long_matmul(xp, xp.reshape(cm, (cg * kh * kw, p)), dym)
    return xp.matmul(xp.reshape(cm, (ctx.groups, cg * kh * kw, p)), dyg)


def _unblock(xp, dwb, w_shape, block: int, stride, dilation):
    """Adjoint of :func:`~.columns.weight_blocked`: ``(kh*span*C, B*F)`` -> ``(kh*kw*C, F)``, summing the B
    outputs."""
    f, c, kh, kw = w_shape
    s, d = stride[1], dilation[1]
    d5 = xp.reshape(dwb, (kh, span(kw, block, s, d), c, block, f))
    out = None
    for b in range(block):
        part = d5[:, b * s:b * s + d * (kw - 1) + 1:d, :, b, :]
        out = part if out is None else out + part
    return xp.reshape(out, (kh * kw * c, f))


def as_weight(xp, dwk, ctx, tensordot: bool):
    """The summed chunk gradients ordered as the weight ``(F, C/G, kh, kw)``."""
    f, cg, kh, kw = ctx.weight.shape
    g = ctx.groups
    if ctx.layout == "im2col_blocked":
        dwk = _unblock(xp, dwk, ctx.weight.shape, ctx.block, ctx.stride, ctx.dilation)
    if tensordot:
        return xp.permute_dims(dwk, (0, 3, 1, 2))
    if g == 1:
        return xp.permute_dims(xp.reshape(dwk, (kh, kw, cg, f)), (3, 2, 0, 1))
    return xp.reshape(xp.permute_dims(xp.reshape(dwk, (g, kh, kw, cg, f // g)), (0, 4, 3, 1, 2)), (f, cg, kh, kw))
