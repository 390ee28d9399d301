"""The convolution planner: the one place that decides, from shapes, settings and device, which path runs.

Settings are read here only (:func:`xpcnn.config.settings`: ``conv_layout``, ``conv_input_grad``, ``plan``,
``workspace_limit``, ``cache_columns``), and every tuned constant is named here once; the measurements behind
them are in ``docs/measurements.md`` ("Convolution"), these tables also in ``docs/convolution.md``.
:func:`plan_forward` is asked at the forward, :func:`plan_backward` at the backward (with the settings then in
force).

Forward columns (``conv_layout``; C = input channels, F = filters, G = groups):

======================================  ==================  ===================================================
shape / setting / device                layout              why
======================================  ==================  ===================================================
GPU plan, both settings "auto", G = 1   im2col_nhwc, plain  fewest array operations (each a launch): tensordot
                                                            with the weight as it lies, columns in kh + kw
                                                            copies (kernel >= 2x2), kept for the backward
                                                            where one chunk holds the batch
GPU plan, both "auto", G > 1            im2col              no channels-innermost grouped columns
conv_layout forced                      that layout, G = 1  tests cover every path; G > 1: im2col;
                                                            im2col_blocked: smallest divisor of ow <= MAX_BLOCK
G = 1, C >= CHANNELS_LAST_MIN           im2col_nhwc         contiguous runs of C values, one GEMM K = kh*kw*C
G = 1, C < CHANNELS_LAST_MIN,           im2col_blocked      B outputs a row: windows copied once, not B times;
F < BLOCK_MIN_COLUMNS, a divisor                            the GEMM gets B*F >= BLOCK_MIN_COLUMNS columns
B <= MAX_BLOCK of ow with B*F >= it
otherwise                               im2col              ow innermost: copies of 1-15 channels per position
                                                            would be far slower
======================================  ==================  ===================================================

Input gradient (``conv_input_grad``; the first row that applies; "plain" as above):

===========  ===========================================================  =====================================
algorithm    where                                                        why
===========  ===========================================================  =====================================
transposed   stride 1, G = 1, padding within the dilated kernel; forced,   the forward's fast GEMM (K = kh*kw*F)
             or "auto" after im2col_nhwc columns (the plain path too)     in place of a short one, no col2im
polyphase    G = 1, not plain; forced (any stride), or "auto": stride     s_h*s_w stride-1 convolutions, no
             > 1 after im2col_nhwc, windows overlapping, F <= C           col2im; slower with F > C
banded       stride 1, G = 1, not plain; forced, or "auto" after          dY's rows times a banded weight, kh
             im2col / im2col_blocked columns                              row-shifted adds: no col2im
col2im       otherwise (also where a forced one does not apply)           dcol = dY @ W.T folded back: channels
                                                                          innermost after im2col_nhwc or where
                                                                          C/G >= CHANNELS_LAST_MIN, else ow
                                                                          innermost; plain: kw + kh adds
===========  ===========================================================  =====================================

Forcing either setting turns the GPU plan's plain path off (the other setting then follows the CPU's rows), as
``set_conv_algorithm`` did with one name. Sizes: a batch chunk's columns fit the workspace limit shared by the
worker shards and, on a CPU (:func:`cache_sized`), :data:`CHUNK_TARGET` (not with column caching, which needs
the whole batch in one chunk); a shard gets at least ``threads.MIN_SHARD_BYTES`` of columns; on a CPU the weight
gradient's reduction runs in blocks of :data:`DW_BLOCK` rows and the banded gradient in sub-chunks of
:data:`BAND_BYTES`, its width in the blocks :func:`band_count`'s cost model picks.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

from ... import config, threads
from .._util import itemsize
from .geometry import band_blocks, column_values, transposed_pads

CHANNELS_LAST_MIN = 16  # C/G from which columns and the column gradient are channels-innermost
# bytes of columns per batch chunk on a CPU, by layout (cache-resident between the copies and the GEMMs)
CHUNK_TARGET = {"im2col_nhwc": 2 ** 20, "im2col": 2 * 2 ** 20, "im2col_blocked": 2 * 2 ** 20}
BLOCK_MIN_COLUMNS = 24  # B*F from which the width-blocked GEMM runs near full speed
MAX_BLOCK = 8  # the widest width block B
DW_BLOCK = 1024  # rows of the weight gradient's reduction per GEMM on a CPU
BAND_BYTES = 2 ** 20  # banded GEMM results per sub-chunk on a CPU
# cost model of the banded input gradient (fitted to its time over 24 shapes, 1 thread; see band_count): GEMM
# rate, cost per run of the row adds, per call; GEMM outputs narrower than BAND_NARROW run proportionally slower
BAND_GEMM_RATE, BAND_RUN_COST, BAND_CALL_COST = 150e9, 12e-9, 1.5e-6
BAND_NARROW = 32
BAND_MAX_BLOCKS = 32  # the most width blocks band_count considers
WORKSPACES = 16  # buffers kept by columns.workspace (least recently used dropped)


class ForwardPlan(NamedTuple):
    """How :func:`~xpcnn.functional.conv.forward.forward_rows` runs one convolution."""
    layout: str         # columns: "im2col", "im2col_nhwc" or "im2col_blocked"
    block: int          # outputs per row of "im2col_blocked" columns (else 1)
    tensordot: bool     # the plain path's GEMM: 6-D columns contracted with the weight as it lies
    separable: bool     # channels-innermost columns in kh + kw copies (the plain path, kernel >= 2x2)
    keep_columns: bool  # keep the columns for the backward where one chunk holds the batch
    shards: list        # batch ranges for the worker threads (empty for an empty batch)
    nb: int             # samples per chunk


class BackwardPlan(NamedTuple):
    """What :func:`~xpcnn.functional.conv.backward.conv2d_backward_params` computes, and how."""
    input_grad: str | None  # None (not wanted), "col2im", "transposed", "polyphase" or "banded"
    name: str               # backward_algorithm's name of the input gradient
    tensordot: bool         # the weight gradient by tensordot of dY with the forward's 6-D columns
    channels_last: bool     # col2im: the column gradient channels-innermost (else ow-innermost)
    separable: bool         # columns (recomputed) and col2im in kh + kw passes (the plain path, kernel >= 2x2)
    flipped: bool           # transposed: the plain path's tensordot with the weight as it lies, flipped
    shards: list            # batch ranges for the worker threads

    @property
    def by_convolution(self) -> bool:
        """The input gradient as forward convolutions of dY, after the weight gradient."""
        return self.input_grad in ("transposed", "polyphase")

    @property
    def dcol(self) -> bool:
        """The input gradient from the chunks of dY (col2im or banded rows), beside the weight gradient."""
        return self.input_grad in ("col2im", "banded")


def cache_sized(a) -> bool:
    """Whether work on ``a`` runs in cache-sized pieces (batch chunks of :data:`CHUNK_TARGET`, sub-chunks of
    :data:`BAND_BYTES`, reduction blocks of :data:`DW_BLOCK`): on a CPU, where they keep data in cache between
    passes; not on a GPU, where each piece would be one more round of kernel launches and a smaller GEMM
    (there the workspace limit alone bounds a chunk)."""
    return not config.gpu_plan(a)


def _plain(s, a) -> bool:
    """The plain convolution in place of the CPU-fitted choices: the GPU plan with neither setting forced."""
    return s.conv_layout == "auto" and s.conv_input_grad == "auto" and config.gpu_plan(a)


def width_block(f: int, ow: int, forced: bool = False) -> int:
    """Outputs per row of width-blocked columns: the smallest divisor B of ``ow`` (at most :data:`MAX_BLOCK`) with
    ``B*F >= BLOCK_MIN_COLUMNS``, or 1 (no blocking) where ``F`` reaches it or no divisor fits; ``forced``: else
    the smallest divisor."""
    if f >= BLOCK_MIN_COLUMNS and not forced:
        return 1
    divisors = [b for b in range(2, min(MAX_BLOCK, ow) + 1) if ow % b == 0]
    good = [b for b in divisors if b * f >= BLOCK_MIN_COLUMNS]
    return (good or (divisors if forced else []) or [1])[0]


def _layout(s, c: int, f: int, ow: int, groups: int, plain: bool) -> tuple[str, int]:
    """The forward's columns and width block (the first table of the module docstring)."""
    forced = s.conv_layout
    if plain:
        layout = "im2col_nhwc" if groups == 1 else "im2col"
    elif forced != "auto":
        layout = forced if groups == 1 else "im2col"
    elif groups == 1 and c >= CHANNELS_LAST_MIN:
        layout = "im2col_nhwc"
    else:
        layout = "im2col_blocked" if groups == 1 and width_block(f, ow) > 1 else "im2col"
    return layout, (width_block(f, ow, forced=forced == layout) if layout == "im2col_blocked" else 1)


def batch_chunk(n: int, sample_values: int, value_bytes: int, layout: str = "im2col", shards: int = 1,
                cache: bool = True) -> int:
    """Samples per chunk so that the column buffers of ``shards`` workers fit the workspace limit together (at
    least 1 sample), and, with ``cache`` (:func:`cache_sized`: a CPU), :data:`CHUNK_TARGET` of ``layout`` unless
    columns are cached (which needs the whole batch in one chunk). Without ``cache`` (a GPU), the GPU's
    workspace limit."""
    limit = config.get_workspace_limit(gpu=not cache) // max(1, shards)
    if cache and not config.settings().cache_columns:
        limit = min(limit, CHUNK_TARGET[layout])
    return max(1, min(n, limit // max(1, sample_values * value_bytes)))


def shards(xp, x, sample_values: int) -> list:
    """A convolution's batch shards of ``x`` for the worker threads (forward and backward): one per worker where
    each gets at least :data:`xpcnn.threads.MIN_SHARD_BYTES` of columns (``sample_values`` a sample; of input
    where the input rows are the columns and ``sample_values`` is 0), else the whole batch here."""
    values = sample_values or math.prod(x.shape[1:])
    return threads.ranges(x.shape[0], values * itemsize(xp, x.dtype))


def plan_forward(xp, x, f: int, kernel, geometry, groups: int) -> ForwardPlan:
    """The forward's plan for ``x`` and ``f`` filters of ``kernel``; ``geometry`` is ``(pads, stride, dilation,
    oh, ow)``."""
    s = config.settings()
    pads, stride, dilation, oh, ow = geometry
    n, c = x.shape[0], x.shape[1]
    plain = _plain(s, x)
    layout, block = _layout(s, c, f, ow, groups, plain)
    tensordot = layout == "im2col_nhwc" and plain
    separable = kernel[0] > 1 and kernel[1] > 1 and plain
    keep = s.cache_columns or plain
    if n == 0:
        return ForwardPlan(layout, block, tensordot, separable, keep, [], 1)
    values = column_values(layout, c, kernel, oh, ow, stride, dilation, block, pads)
    parts = shards(xp, x, values)
    nb = batch_chunk(n, values, itemsize(xp, x.dtype), layout, len(parts), cache_sized(x))
    return ForwardPlan(layout, block, tensordot, separable, keep, parts, nb)


def _input_grad(s, ctx, plain: bool) -> str:
    """The input gradient's algorithm for ``ctx`` (the second table of the module docstring)."""
    forced = s.conv_input_grad
    f, c, kh, kw = ctx.weight.shape
    ungrouped = ctx.groups == 1
    stride1 = ctx.stride == (1, 1)
    nhwc = ctx.layout == "im2col_nhwc"
    if (forced in ("auto", "transposed") and ungrouped and stride1
            and transposed_pads(ctx.pads, (kh, kw), ctx.dilation) is not None
            and (forced == "transposed" or nhwc)):
        return "transposed"
    if ungrouped and forced in ("auto", "polyphase") and not plain:
        (sh, sw), (dh, dw) = ctx.stride, ctx.dilation
        overlap = dh * (kh - 1) + 1 > sh or dw * (kw - 1) + 1 > sw
        if forced == "polyphase" or (not stride1 and nhwc and overlap and f <= c):
            return "polyphase"
    if (ungrouped and stride1 and forced in ("auto", "banded") and not plain
            and (forced == "banded" or ctx.layout in ("im2col", "im2col_blocked"))):
        return "banded"
    return "col2im"


def _name(input_grad: str, ctx) -> str:
    """:func:`backward_algorithm`'s name: the algorithm, col2im named by the forward's layout ("im2col" or
    "im2col_nhwc" after width-blocked columns, by channel count)."""
    if input_grad != "col2im":
        return input_grad
    if ctx.layout == "im2col_blocked":  # col2im of unblocked columns, computed from dY and the plain weight
        return "im2col" if ctx.weight.shape[1] < CHANNELS_LAST_MIN else "im2col_nhwc"
    return ctx.layout


def backward_algorithm(ctx) -> str:
    """How :func:`~xpcnn.functional.conv.conv2d_backward` computes the input gradient for ``ctx`` under the
    settings in force: "transposed", "polyphase", "banded", or col2im named by the forward's layout ("im2col",
    "im2col_nhwc")."""
    s = config.settings()
    return _name(_input_grad(s, ctx, _plain(s, ctx.x)), ctx)


def plan_backward(xp, ctx, input_grad: bool) -> BackwardPlan:
    """The backward's plan for ``ctx``; ``input_grad`` False: no input gradient."""
    s = config.settings()
    plain = _plain(s, ctx.x)
    algorithm = _input_grad(s, ctx, plain)
    f, cg, kh, kw = ctx.weight.shape
    if ctx.cols is not None:
        parts = [(0, ctx.x.shape[0])]
    else:
        values = column_values(ctx.layout, ctx.x.shape[1], (kh, kw), ctx.oh, ctx.ow, ctx.stride, ctx.dilation,
                               ctx.block, ctx.pads)
        parts = shards(xp, ctx.x, values)
    return BackwardPlan(input_grad=algorithm if input_grad else None, name=_name(algorithm, ctx),
                        tensordot=ctx.wk is None and ctx.layout == "im2col_nhwc",
                        channels_last=ctx.layout == "im2col_nhwc" or cg >= CHANNELS_LAST_MIN,
                        separable=kh > 1 and kw > 1 and plain, flipped=plain, shards=parts)


@functools.lru_cache(maxsize=256)
def band_count(m: int, c: int, w: int, f: int, kh: int, kw: int, oh: int, ow: int, left: int, dw: int) -> int:
    """Blocks of the banded input gradient for ``m`` samples: the count, of 1 to ``min(w, BAND_MAX_BLOCKS)``,
    with the least modelled time. Wider blocks mean fewer, longer row adds and fewer calls but more GEMM work
    on the band's zeros (``(B + kw - 1) / kw`` times the useful work at block width B)."""
    def cost(count):
        total = 0.0
        for x0, x1, o0, o1 in band_blocks(w, ow, kw, left, dw, count):
            width = kh * (x1 - x0) * c
            total += 2 * m * oh * (o1 - o0) * f * width / min(1.0, width / BAND_NARROW) / BAND_GEMM_RATE
            total += BAND_RUN_COST * kh * m * oh + BAND_CALL_COST * (kh + 3 + o1 - o0)
        return total
    return min(range(1, min(w, BAND_MAX_BLOCKS) + 1), key=cost)


def band_samples(x, m: int, sample_bytes: int) -> int:
    """Samples per sub-chunk of the banded input gradient (shards of ``m``; ``sample_bytes`` of one block's GEMM
    results a sample): :data:`BAND_BYTES` on a CPU, the workspace limit on a GPU."""
    limit = BAND_BYTES if cache_sized(x) else config.get_workspace_limit(gpu=True)
    return max(1, min(m, limit // sample_bytes))


def dw_blocks(a) -> int | None:
    """Rows per GEMM of a long weight-gradient reduction on ``a``: :data:`DW_BLOCK` on a CPU, None (one GEMM) on a
    GPU."""
    return DW_BLOCK if cache_sized(a) else None
