"""The backward convolution: per batch chunk, the columns (recomputed, or the ones the forward kept), the weight
gradient ``dW += col.T @ dY`` and, where the plan says so, the chunk's input gradient (col2im); banded rows after
each shard's chunks, or forward convolutions of ``dY`` after them all ("transposed", "polyphase")."""
from __future__ import annotations

from array_api_compat import array_namespace, device

from ... import threads
from .._util import empty_nchw, rows_sum
from . import banded, planner
from .columns import chunks, column_builder, weight_kf
from .input_grad import col2im_buffer, col2im_chunk, convolution_dx
from .weight_grad import as_weight, by_group, chunk_part


def conv2d_backward(dy, ctx):
    """Gradients ``(dx, dweight, dbias)`` of :func:`~.forward.conv2d_forward` (dbias is None without bias)."""
    return conv2d_backward_params(dy, ctx, input_grad=True)


def _empty_batch(xp, dy, ctx, input_grad: bool):
    """The gradients of an empty batch: zero weight and bias gradients, an empty input gradient."""
    dev = device(dy)
    dw = xp.zeros(ctx.weight.shape, dtype=dy.dtype, device=dev)
    db = xp.zeros((ctx.weight.shape[0],), dtype=dy.dtype, device=dev) if ctx.has_bias else None
    return (empty_nchw(xp, ctx.x.shape, dy.dtype, dev) if input_grad else None), dw, db


def conv2d_backward_params(dy, ctx, input_grad: bool = False):
    """As :func:`conv2d_backward`; with ``input_grad=False`` dx is None and its GEMM and col2im are skipped
    (the first layer of a training step: nothing consumes the input gradient). What runs is the
    :class:`~.planner.BackwardPlan` of ``ctx`` under the settings in force."""
    xp = array_namespace(dy, ctx.weight)
    x, weight = ctx.x, ctx.weight
    n, f = x.shape[0], weight.shape[0]
    oh, ow = ctx.oh, ctx.ow
    if n == 0:  # an empty batch: no gradient to sum
        return _empty_batch(xp, dy, ctx, input_grad)
    plan = planner.plan_backward(xp, ctx, input_grad)
    dev = device(dy)
    split = plan.tensordot  # 6-D columns, tensordot with dY itself
    rows = not split or plan.dcol  # dY as channels-last rows
    if rows:
        dyh = xp.reshape(xp.permute_dims(dy, (0, 2, 3, 1)), (n * oh * ow, f))
    if ctx.has_bias:
        db = xp.sum(dy, axis=(0, 2, 3)) if split else rows_sum(xp, dyh, ow)
    else:
        db = None
    dx = wk = wkt = None
    if plan.input_grad == "banded":  # banded rows write every sample's gradient, straight into channels-last
        dx = xp.empty((n, x.shape[2], x.shape[3], x.shape[1]), dtype=dy.dtype, device=dev)
        blocks, sub = banded.bands(xp, weight, -(-n // len(plan.shards)), ctx.pads, ctx.dilation, oh, ow, x)
    elif plan.input_grad == "col2im":
        dx = col2im_buffer(xp, ctx, plan, dy.dtype, dev)
        # the weight as (K, F) rows: after width-blocked columns (dcol unblocked) or tensordot (none kept)
        wk = weight_kf(xp, weight, 1) if ctx.layout == "im2col_blocked" or split else ctx.wk
        wkt = xp.matrix_transpose(wk)

    def shard(a: int, b: int):
        """dW of samples ``a:b`` (and their dx, written into ``dx``), chunk by chunk."""
        if ctx.cols is None:
            columns = column_builder(xp, x[a:b, ...], weight.shape, ctx.layout, ctx.pads, ctx.stride,
                                     ctx.dilation, ctx.groups, oh, ow, ctx.nb, ctx.block, split,
                                     separable=plan.separable)
        dwk = None
        for n0, n1 in chunks(a, b, ctx.nb):
            cm = columns(n0 - a, n1 - a) if ctx.cols is None else ctx.cols
            dym = dyh[n0 * oh * ow:n1 * oh * ow, :] if rows else None
            dyg = by_group(xp, dym, ctx.groups) if ctx.groups > 1 else None
            dy_chunk = (dy if n1 - n0 == n else dy[n0:n1, ...]) if split else None
            part = chunk_part(xp, cm, dym, dyg, dy_chunk, ctx, split)
            dwk = part if dwk is None else dwk + part
            if plan.input_grad == "col2im":
                col2im_chunk(xp, dym, dyg, wk, wkt, dx, n0, ctx, plan)
        if plan.input_grad == "banded":  # the whole shard at once, after its weight gradient
            banded.banded_dx(xp, blocks, weight.shape[2], dyh[a * oh * ow:b * oh * ow, :], dx, a, ctx.pads,
                             ctx.dilation, oh, ow, sub)
        return dwk

    partials = threads.run(shard, plan.shards)
    dwk = partials[0]
    for part in partials[1:]:
        dwk = dwk + part
    dw = as_weight(xp, dwk, ctx, split)
    if plan.by_convolution:
        return convolution_dx(xp, dy, ctx, flipped=plan.flipped and plan.input_grad == "transposed"), dw, db
    if dx is None:
        return dx, dw, db
    if plan.channels_last or plan.input_grad == "banded":
        return xp.permute_dims(dx, (0, 3, 1, 2)), dw, db
    out = empty_nchw(xp, dx.shape, dx.dtype, dev)  # the library's one layout: channels-last memory
    out[...] = dx
    return out, dw, db
