"""The forward convolution: columns (in the planner's layout) times the weight, chunk by chunk, on the worker
threads; the result channels-last ``(N, oh, ow, F)``, seen NCHW."""
from __future__ import annotations

from typing import Any, NamedTuple

from array_api_compat import array_namespace, device

from ... import threads
from .._util import add_rows_bias
from . import planner
from .columns import chunks, column_builder, weight_blocked, weight_kf
from .geometry import conv2d_geometry


class ConvContext(NamedTuple):
    """What :func:`conv2d_forward` keeps for the backward pass (read by field name)."""
    x: Any
    weight: Any
    wk: Any                 # the weight ordered as the columns: (K, F) rows, (G, K, F/G), blocked; None: tensordot
    layout: str             # the forward's column layout: "im2col", "im2col_nhwc" or "im2col_blocked"
    cols: Any               # the forward's columns when column caching kept them, else None
    pads: tuple
    stride: tuple
    dilation: tuple
    groups: int
    oh: int
    ow: int
    nb: int                 # samples per chunk
    has_bias: bool
    block: int = 1          # outputs per row of "im2col_blocked" columns

    @property
    def algorithm(self) -> str:
        """The layout's name of before the settings split (``layout``)."""
        return self.layout


def gemm(xp, cm, wk, layout: str, groups: int, f: int, weight=None, channel_axis: int = 1):
    """The columns ``cm`` of one chunk (as :func:`~.columns.column_builder` gives them) times the weight ``wk`` in
    the same layout: the convolution as channels-last rows ``(m*oh*ow, F)``. ``wk`` None (the plan's tensordot):
    columns ``(m, oh, ow, kh, kw, C)`` contracted with the weight ``(F, C, kh, kw)`` as it lies (no reordered
    copy of the weight per step), ``(m, oh, ow, F)`` (``channel_axis`` 0: the weight ``(C, F, kh, kw)``, the
    transposed convolution's)."""
    if wk is None:
        return xp.tensordot(cm, weight, axes=((3, 4, 5), (2, 3, channel_axis)))
    if layout == "im2col":
        return _gemm_kmajor(xp, cm, wk, groups)
    y = cm @ wk
    return y if layout == "im2col_nhwc" else xp.reshape(y, (y.shape[0] * (y.shape[1] // f), f))


def _gemm_kmajor(xp, col, wk, groups: int):
    """Columns ``(G, kh, kw, C/G, m, oh, ow)`` times the weight ``wk`` -> ``(m*oh*ow, F)`` (channels-last rows)."""
    g, kh, kw, cg, m, oh, ow = col.shape
    p, k = m * oh * ow, kh * kw * cg
    if groups == 1:
        return xp.matrix_transpose(xp.reshape(col, (k, p))) @ wk
    y = xp.matmul(xp.matrix_transpose(xp.reshape(col, (g, k, p))), wk)  # (G, P, F/G)
    return xp.reshape(xp.permute_dims(y, (1, 0, 2)), (p, g * wk.shape[2]))


def forward_rows(xp, x, weight, pads, stride, dilation, groups: int, oh: int, ow: int, flipped: bool = False):
    """The convolution as channels-last rows ``(N*oh*ow, F)`` (``(N, oh, ow, F)`` by tensordot), without bias;
    returns ``(rows, wk, plan, cols)``: the weight as ordered for the columns, the :class:`~.planner.ForwardPlan`
    and the columns of the batch where the plan keeps them and one chunk holds it (else None). Batch shards run
    on the :mod:`~xpcnn.threads` workers, each with its own column buffer. ``flipped`` (the plain path's
    tensordot, groups 1): convolve with ``weight (C, F, kh, kw)`` flipped in space and its channel axes swapped,
    by columns in reversed offset order (no flipped copy of the weight)."""
    n = x.shape[0]
    f, cg, kh, kw = weight.shape
    if flipped:
        f, cg = cg, f
    plan = planner.plan_forward(xp, x, f, (kh, kw), (pads, stride, dilation, oh, ow), groups)
    layout, block, split = plan.layout, plan.block, plan.tensordot
    if flipped and not (split and groups == 1):
        raise ValueError("flipped weights need the plain path's tensordot")
    w_shape, axis = (f, cg, kh, kw), 0 if flipped else 1
    if split:
        wk = None
    elif layout == "im2col_blocked":
        wk = weight_blocked(xp, weight, block, stride, dilation)
    else:
        wk = weight_kf(xp, weight, groups)
    if n == 0:  # an empty batch (as PyTorch allows): an empty result
        return xp.empty((0, f), dtype=x.dtype, device=device(x)), wk, plan, None

    def columns_of(part):
        return column_builder(xp, part, w_shape, layout, pads, stride, dilation, groups, oh, ow, plan.nb, block,
                              split, flipped, plan.separable)
    if plan.nb >= n and len(plan.shards) == 1:  # one chunk: the GEMM writes the result, no copy
        cm = columns_of(x)(0, n)
        return gemm(xp, cm, wk, layout, groups, f, weight, axis), wk, plan, (cm if plan.keep_columns else None)
    y = xp.empty((n, oh, ow, f) if split else (n * oh * ow, f), dtype=x.dtype, device=device(x))

    def shard(a: int, b: int) -> None:
        columns = columns_of(x[a:b, ...])
        for n0, n1 in chunks(a, b, plan.nb):
            rows = (slice(n0, n1), Ellipsis) if split else (slice(n0 * oh * ow, n1 * oh * ow), slice(None))
            y[rows] = gemm(xp, columns(n0 - a, n1 - a), wk, layout, groups, f, weight, axis)
    threads.run(shard, plan.shards)
    return y, wk, plan, None


def conv2d_forward(x, weight, bias=None, stride: Any = 1, padding: Any = 0, dilation: Any = 1, groups: int = 1):
    """Convolution (cross-correlation, as in PyTorch). Returns ``(y, ctx)`` for
    :func:`~.backward.conv2d_backward`.

    Columns in the layout the planner picks, times the weight ``(kh*kw*C, F)``, give the output channels-last
    ``(N, oh, ow, F)``; ``y`` is its NCHW view (no copy). The batch is processed in chunks whose column buffer
    fits the workspace limit; backward recomputes the columns from ``x`` (unless the plan kept them).
    """
    xp = array_namespace(x, weight)
    stride, dilation, pads, oh, ow = conv2d_geometry(x.shape, weight.shape, stride, padding, dilation, groups)
    n, f = x.shape[0], weight.shape[0]
    y, wk, plan, cached = forward_rows(xp, x, weight, pads, stride, dilation, groups, oh, ow)
    if bias is not None and y.ndim == 4:  # (N, oh, ow, F) from tensordot: one broadcast add
        y += bias
    elif bias is not None:
        y = add_rows_bias(xp, y, bias, ow)
    if y.ndim != 4:
        y = xp.reshape(y, (n, oh, ow, f))
    ctx = ConvContext(x=x, weight=weight, wk=wk, layout=plan.layout, cols=cached, pads=pads, stride=stride,
                      dilation=dilation, groups=groups, oh=oh, ow=ow, nb=plan.nb, has_bias=bias is not None,
                      block=plan.block)
    return xp.permute_dims(y, (0, 3, 1, 2)), ctx


def conv2d(x, weight, bias=None, stride: Any = 1, padding: Any = 0, dilation: Any = 1, groups: int = 1):
    """Forward only."""
    return conv2d_forward(x, weight, bias, stride, padding, dilation, groups)[0]
