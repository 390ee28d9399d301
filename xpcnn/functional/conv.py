"""2-D convolution by im2col + one GEMM; its backward by col2im or, at stride 1, as a transposed convolution.

Two column layouts, built per batch chunk of 1-2 MiB (:data:`CHUNK_TARGET`, cache-resident between the copies
and the GEMMs) by kh*kw strided-slice copies (the portable reference), or on NumPy by one copy through a strided
view of every window (``kernels.numpy_kernels.im2col_*``: 1.8x faster on one thread, 3.5x on two, where many
short copies contend for the GIL):

- "im2col_nhwc", ungrouped convolutions with >= 16 channels: rows ``(N*oh*ow, kh*kw*C)``, channels innermost,
  copied from the channels-last input (the portable path without a padded copy); ``y = col @ W(K, F)`` is
  already channels-last. vgg-small training step against the shifted GEMM forward it replaced: 0.93x
  (1 thread), 0.89x (2 threads), interleaved A/B.
- "im2col", few channels or groups: ``(G, kh, kw, C/G, N, oh, ow)``, ow innermost (copies of C = 1 to 6
  values per position would be far slower), a batch over groups when groups > 1.
- "im2col_blocked", ungrouped convolutions with few channels and few filters (:func:`_width_block`): each row
  holds the window of B adjacent outputs along the width, ``(N*oh*ow/B, kh*span*C)`` with
  ``span = (B-1)*s + (kw-1)*d + 1``, times a banded weight ``(kh*span*C, B*F)`` (zero where a tap misses an
  output). Overlapping windows are copied once, not B times (25 -> 10 values per output for LeNet's 5x5 conv1 at
  B = 4), and the GEMM gets B*F columns instead of F, where OpenBLAS is several times faster (F = 6: 31
  GFLOP/s). LeNet conv1 forward per 26-sample chunk 0.30 -> 0.20 ms, its weight-gradient GEMM 0.16 -> 0.10 ms.

Backward: ``dW = col.T @ dY`` from recomputed columns. The input gradient is ``dcol = dY @ W.T`` folded back by
col2im, except for channels-innermost convolutions at stride 1 (:func:`_use_transposed`): there it is the
forward convolution of ``dY`` with the flipped, transposed weight ("transposed"), which runs the forward's fast
GEMM (K = kh*kw*F) instead of a short one (K = F) and needs no col2im: vgg-small conv backward, 1 thread,
32->32 at 32x32 82.7 -> 60.5 ms, 64->64 at 16x16 51.3 -> 43.1 ms, no slower elsewhere. At stride > 1 the same
idea, one phase of the stride at a time ("polyphase", :func:`_polyphase_dx`, where :func:`_use_polyphase`
measured it faster). Few-channel convolutions at stride 1 take "banded rows" (:func:`_banded_dx`): the rows of
``dY`` times a banded (width-Toeplitz) weight, then kh row-shifted adds.
"""
from __future__ import annotations

import collections
import functools
import math
from typing import Any, NamedTuple

from array_api_compat import array_namespace, device

from .. import config, kernels, threads
from ._util import add_rows_bias, conv_padding, empty_nchw, itemsize, out_size, pair, rows_sum, window, window_key


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
            out[window_key(i, j, stride, dilation, oh, ow)] += xp.permute_dims(col[:, i, j, :, :, :], (1, 0, 2, 3))
    return out


CHANNELS_LAST_MIN = 16  # C/groups from which backward's column gradient is channels-innermost (measured)


# bytes of columns per chunk, by column layout, when the workspace limit allows more (measured, see below)
CHUNK_TARGET = {"im2col_nhwc": 2 ** 20, "im2col": 2 * 2 ** 20, "im2col_blocked": 2 * 2 ** 20}


def cache_sized(a) -> bool:
    """Whether work on ``a`` runs in cache-sized pieces (batch chunks of :data:`CHUNK_TARGET`, sub-chunks of
    :data:`BAND_BYTES`, reduction blocks of :data:`DW_BLOCK`): on a CPU, where they keep data in cache between
    passes; not on a GPU, where each piece would be one more round of kernel launches and a smaller GEMM
    (there the workspace limit alone bounds a chunk)."""
    return not config.gpu_plan(a)


def _plain(a) -> bool:
    """The plain convolution (channels-innermost im2col, one GEMM by :func:`_tensor_gemm`, the input gradient
    a transposed convolution at stride 1, else col2im; the forward's columns kept for the backward where one
    chunk holds the batch) in place of the CPU-fitted choices: the GPU plan
    (:func:`xpcnn.config.gpu_plan`) under the "auto" algorithm. Fewest array operations: on a GPU each is a
    launch, and the CPU choices were fitted to a CPU's caches and BLAS."""
    return config.get_conv_algorithm() == "auto" and config.gpu_plan(a)


def _batch_chunk(n: int, sample_values: int, value_bytes: int, layout: str = "im2col", shards: int = 1,
                 cache: bool = True) -> int:
    """Samples per chunk so that the column buffers of ``shards`` workers fit the workspace limit together (at
    least 1 sample), and, with ``cache`` (:func:`cache_sized`: a CPU), :data:`CHUNK_TARGET` of ``layout`` unless
    columns are cached (which needs the whole batch in one chunk). Without ``cache`` (a GPU), the GPU's
    workspace limit (:func:`xpcnn.config.get_workspace_limit`).

    Chunks of ~2 MiB stay in cache between im2col, the GEMMs and col2im: against 16 MiB chunks, step time
    0.9x (lenet, vgg-small, 1 and 2 threads, interleaved) and step peak memory vgg-small 174 -> 133 MiB,
    lenet 20.7 -> 10.6 MiB. Channels-innermost columns (many channels) run faster still in 1 MiB chunks
    (vgg-small step 1 MiB vs 2 MiB, interleaved, medians: 374 vs 388 ms at 1 thread, 227 vs 234 ms at 2);
    ow-innermost ones (few channels, short copies) slower (LeNet 18.1 vs 16.8 ms, 20.8 vs 16.5 ms), and
    larger chunks there cost memory (LeNet step peak 10.2 MiB at 2 MiB, 16.0 at 4 MiB, torch 9.1).
    """
    limit = config.get_workspace_limit(gpu=not cache) // max(1, shards)
    if cache and not config.get_cache_columns():
        limit = min(limit, CHUNK_TARGET[layout])
    return max(1, min(n, limit // max(1, sample_values * value_bytes)))


def _chunks(a: int, b: int, size: int) -> list:
    """``[a, b)`` as the fewest runs of at most ``size``, their lengths differing by at most one: no short tail
    chunk paying a whole chunk's fixed costs (LeNet conv2, batch 64 per worker in chunks of 58: 58 + 6)."""
    return threads.even_ranges(a, b, -(-(b - a) // size))


def _pad_chunk(x, n0: int, n1: int, pads, buf):
    """Samples ``n0:n1`` of ``x`` zero-padded into the NCHW buffer ``buf (nb, C, Hp, Wp)`` (whatever ``x``'s memory
    layout, the copy leaves them contiguous). The border of ``buf`` is zero from its allocation and never written.
    """
    top, _, left, _ = pads
    h, w = x.shape[2], x.shape[3]
    m = n1 - n0
    buf[0:m, :, top:top + h, left:left + w] = x[n0:n1, ...]
    return buf if m == buf.shape[0] else buf[0:m, ...]


def _im2col_kmajor(xpad, col, stride, dilation):
    """im2col into ``col[..., :m, :, :]`` of shape ``(G, kh, kw, C/G, m, oh, ow)`` from ``xpad (m, C, Hp, Wp)``.

    kh*kw strided-slice copies whose innermost ow values are contiguous on both sides (3x faster than a
    channels-innermost layout at C=32, and far faster for C of 1 to 6). ``col`` viewed as ``(G, K, P)`` is the
    transposed column matrix; writes go to ``col`` itself, never through a view.
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


def _im2col_nhwc(xh, n0: int, m: int, col, offsets, split: bool = False):
    """im2col of samples ``n0:n0+m`` of the channels-last ``xh (N, H, W, C)`` into ``col (nb, oh, ow, kh, kw, C)``
    (channels innermost), returned as the rows ``(m*oh*ow, kh*kw*C)`` (``split``: as they lie, 6-D).

    No padded copy of the input: each kernel offset copies only the window that lies inside the input
    (:func:`_fold_offsets`); the rest of ``col`` is padding, zero from its allocation and never written.
    """
    xp = array_namespace(xh)
    for i, j, rows, cols, in_rows, in_cols in offsets:
        col[0:m, rows, cols, i, j, :] = xh[n0:n0 + m, in_rows, in_cols, :]
    nb, oh, ow, kh, kw, c = col.shape
    out = col[0:m, ...] if m < nb else col
    return out if split else xp.reshape(out, (m * oh * ow, kh * kw * c))


def _separable(x, kernel) -> bool:
    """Channels-innermost columns in two passes (:func:`_im2col_separable`, :func:`_col2im_separable`): kh + kw
    copies or adds in place of kh*kw; on the plain path (:func:`_plain`, a GPU's: fewer launches) of kernels
    at least 2x2."""
    return kernel[0] > 1 and kernel[1] > 1 and _plain(x)


WORKSPACES = 16  # buffers kept by _workspace (least recently used dropped)
_workspaces: "collections.OrderedDict[tuple, Any]" = collections.OrderedDict()


def _workspace(xp, role: str, shape, dtype, dev):
    """A zero-initialised buffer of ``shape`` kept for the next call that asks for the same ``role``, shape, dtype
    and device (no allocation nor zero fill per step: each is a launch on a GPU). For buffers used only within
    one call, whose zero parts are never written (the border of a padded copy): the plain path runs on one
    thread, and one stream orders a GPU's uses."""
    key = (role, xp.__name__, str(dev), str(dtype), tuple(shape))
    buf = _workspaces.pop(key, None)
    if buf is None:
        buf = xp.zeros(shape, dtype=dtype, device=dev)
    _workspaces[key] = buf
    while len(_workspaces) > WORKSPACES:
        _workspaces.popitem(last=False)
    return buf


def _im2col_separable(xh, n0: int, m: int, rbuf, col, pads, stride, dilation, split: bool = False,
                      reverse: bool = False):
    """As :func:`_im2col_nhwc`, in kh + kw copies: the kh row windows of samples ``n0:n0+m`` of ``xh (N, H, W, C)``
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
        lo, hi, r0 = _clip(oh, (kh - 1 - i if reverse else i) * dilation[0], pads[0], stride[0], h)
        if hi > lo:
            rbuf[b, lo:hi, inside, i, :] = xh[src, r0:r0 + stride[0] * (hi - lo - 1) + 1:stride[0], :, :]
    for j in range(kw):
        c0 = (kw - 1 - j if reverse else j) * dilation[1]
        col[b, :, :, :, j, :] = rbuf[b, :, c0:c0 + stride[1] * (ow - 1) + 1:stride[1], :, :]
    out = col if m == nb else col[b, ...]
    return out if split else xp.reshape(out, (m * oh * ow, kh * kw * c))


def _col2im_separable(dcol, dx, n0, pads, stride, dilation):
    """Adjoint of :func:`_im2col_separable`: ``dcol (m, oh, ow, kh, kw, C)`` summed into samples ``n0:n0+m`` of
    the channels-last ``dx (N, H, W, C)`` in kw + kh adds (through zero-bordered buffers) and one copy."""
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


def _clip(o: int, off: int, pad: int, s: int, size: int) -> tuple[int, int, int]:
    """Outputs ``[lo, hi)`` of one kernel offset whose input ``o*s + off - pad`` lies in ``[0, size)``; first input."""
    lo = max(0, -(-(pad - off) // s))
    hi = min(o, (size - 1 + pad - off) // s + 1)
    return lo, hi, lo * s + off - pad


def _fold_offsets(oh, ow, h, w, kh, kw, pads, stride, dilation):
    """For each kernel offset ``(i, j)`` that touches the unpadded input: the output rows/columns it covers
    and the strided input slices they land on, ``(i, j, out_rows, out_cols, in_rows, in_cols)``.

    Contributions that fall in the padding are dropped, so col2im needs no padded buffer.
    """
    for i in range(kh):
        a0, a1, r0 = _clip(oh, i * dilation[0], pads[0], stride[0], h)
        if a1 <= a0:
            continue
        for j in range(kw):
            b0, b1, c0 = _clip(ow, j * dilation[1], pads[2], stride[1], w)
            if b1 <= b0:
                continue
            yield (i, j, slice(a0, a1), slice(b0, b1),
                   slice(r0, r0 + stride[0] * (a1 - a0 - 1) + 1, stride[0]),
                   slice(c0, c0 + stride[1] * (b1 - b0 - 1) + 1, stride[1]))


def _adder(xp):
    """``add(dst, key, src)`` doing ``dst[key] += src``, with the namespace's single-write kernel if registered."""
    acc = kernels.get("accumulate", xp)
    if acc is not None:
        return acc

    def add(dst, key, src):
        dst[key] += src
    return add


def _col2im_nhwc(dcol, dx, n0, pads, stride, dilation):
    """Adjoint of im2col for channels-innermost columns ``dcol (m, oh, ow, G, kh, kw, C/G)``, summed straight
    into samples ``n0:n0+m`` of the unpadded channels-last ``dx (N, H, W, C)``."""
    xp = array_namespace(dcol)
    m, oh, ow, g, kh, kw, cg = dcol.shape
    h, w, c = dx.shape[1], dx.shape[2], dx.shape[3]
    add = _adder(xp)
    for i, j, rows, cols, in_rows, in_cols in _fold_offsets(oh, ow, h, w, kh, kw, pads, stride, dilation):
        src = dcol[:, rows, cols, :, i, j, :]
        src = xp.reshape(src, (m, src.shape[1], src.shape[2], c)) if g > 1 else src[:, :, :, 0, :]
        add(dx, (slice(n0, n0 + m), in_rows, in_cols, slice(None)), src)
    return dx


def _col2im_kmajor(dcol, dx, n0, pads, stride, dilation):
    """Adjoint of :func:`_im2col_kmajor`: ``dcol (G, kh, kw, C/G, m, oh, ow)`` summed into samples ``n0:n0+m`` of
    the unpadded NCHW ``dx (N, C, H, W)`` (ow innermost: the layout for few channels)."""
    xp = array_namespace(dcol)
    g, kh, kw, cg, m, oh, ow = dcol.shape
    c, h, w = dx.shape[1], dx.shape[2], dx.shape[3]
    add = _adder(xp)
    for i, j, rows, cols, in_rows, in_cols in _fold_offsets(oh, ow, h, w, kh, kw, pads, stride, dilation):
        src = xp.permute_dims(dcol[:, i, j, :, :, rows, cols], (2, 0, 1, 3, 4))  # (m, G, C/G, ., .)
        src = xp.reshape(src, (m, c, src.shape[3], src.shape[4]))
        add(dx, (slice(n0, n0 + m), slice(None), in_rows, in_cols), src)
    return dx


# cost model of the banded input gradient (fitted to its time over 24 shapes, 1-16 blocks, 1 thread, this repo's
# 2-core Xeon with OpenBLAS; see _band_count): GEMM rate, cost per run of the row adds, per call
BAND_GEMM_RATE, BAND_RUN_COST, BAND_CALL_COST = 150e9, 12e-9, 1.5e-6
BAND_NARROW = 32  # GEMM outputs narrower than this run proportionally slower (fitted with the constants above)


def _band_blocks(w: int, ow: int, kw: int, left: int, dw: int, count: int) -> list:
    """The input's width in ``count`` near-equal blocks ``(x0, x1, o0, o1)``: input columns ``[x0, x1)`` and the
    output columns ``[o0, o1)`` whose windows reach them at stride 1 (``x = o + j*dw - left``)."""
    edges = [round(k * w / count) for k in range(count + 1)]
    return [(x0, x1, max(0, x0 + left - dw * (kw - 1)), min(ow, x1 + left)) for x0, x1 in zip(edges, edges[1:])]


@functools.lru_cache(maxsize=256)
def _band_count(m: int, c: int, w: int, f: int, kh: int, kw: int, oh: int, ow: int, left: int, dw: int) -> int:
    """Blocks of the banded input gradient (:func:`_banded_dx`) for ``m`` samples: the count, of 1 to
    ``min(w, 32)``, with the least modelled time. Wider blocks mean fewer, longer row adds and fewer calls but more
    GEMM work on the band's zeros (``(B + kw - 1) / kw`` times the useful work at block width B). The model
    (:data:`BAND_GEMM_RATE`, :data:`BAND_RUN_COST`, :data:`BAND_CALL_COST`, :data:`BAND_NARROW`) picked,
    over the 24 measured shapes, a count within 3% of the fastest on average, 13% at worst."""
    def cost(count):
        total = 0.0
        for x0, x1, o0, o1 in _band_blocks(w, ow, kw, left, dw, count):
            width = kh * (x1 - x0) * c
            total += 2 * m * oh * (o1 - o0) * f * width / min(1.0, width / BAND_NARROW) / BAND_GEMM_RATE
            total += BAND_RUN_COST * kh * m * oh + BAND_CALL_COST * (kh + 3 + o1 - o0)
        return total
    return min(range(1, min(w, 32) + 1), key=cost)


def _band_weight(xp, weight, block, left: int, dw: int):
    """The weight as the banded matrix of one block ``(x0, x1, o0, o1)``: rows ``(o, f)`` for output columns
    ``[o0, o1)``, columns ``(i, x, c)`` for input columns ``[x0, x1)``: ``W[f, c, i, j]`` where
    ``x = o + j*dw - left``, zero elsewhere. One strided-slice copy per output column."""
    x0, x1, o0, o1 = block
    f, c, kh, kw = weight.shape
    wt = xp.permute_dims(weight, (0, 2, 3, 1))  # (F, kh, kw, C)
    band = xp.zeros((o1 - o0, f, kh, x1 - x0, c), dtype=weight.dtype, device=device(weight))
    for o in range(o0, o1):
        taps = [j for j in range(kw) if x0 <= o + j * dw - left < x1]
        if taps:
            j0, j1 = taps[0], taps[-1]
            x = o + j0 * dw - left - x0
            band[o - o0, :, :, x:x + dw * (j1 - j0) + 1:dw, :] = wt[:, :, j0:j1 + 1, :]
    return xp.reshape(band, ((o1 - o0) * f, kh * (x1 - x0) * c))


def _row_spans(kh: int, dh: int, top: int, h: int, oh: int) -> list:
    """For each kernel row i, ``(i, lo, hi, y0)``: output rows ``[lo, hi)`` reach input rows from ``y0`` on
    (``y = oy + i*dh - top``, stride 1)."""
    spans = []
    for i in range(kh):
        lo, hi = max(0, top - i * dh), min(oh, h + top - i * dh)
        spans.append((i, lo, max(lo, hi), lo + i * dh - top))
    return spans


def _banded_dx(xp, bands, kh: int, dym, dxh, n0: int, pads, dilation, oh: int, ow: int, sub: int):
    """Input gradient of samples ``n0:n0+m`` (a batch shard) of a stride-1 ungrouped convolution, written into the
    channels-last ``dxh (N, H, W, C)``, from its channels-last output gradient rows ``dym (m*oh*ow, F)``.

    Seen as ``(m*oh, ow*F)``, each row of ``dY`` is one output row; times the banded weight of a block of input
    columns (:func:`_band_weight`, ``bands``: ``[(block, matrix)]``) it gives that block's contribution to kh input
    rows at once, ``(m*oh, kh*B*C)``; kh row-shifted adds sum them (the kernel row covering most input rows is
    written, rows it misses zeroed). A block's slice of ``dY`` is a column range of those rows (the GEMM reads it
    in place: no copy of dY at all), and a block's result lands channels-last, in runs of B*C values. No col2im,
    no shifted copies: where the "flat" shifts it replaced spent most of their time (LeNet conv2, 6 -> 16, 5x5
    at 14x14, batch 128, 1 thread: 1.68-1.77 ms flat, 1.23-1.32 banded; vgg-small conv1 7.6-7.9 -> 5.8; faster on
    all 24 shapes timed, 0.56-0.98x). ``sub`` samples at a time."""
    h, c = dxh.shape[1], dxh.shape[3]
    m, f = dym.shape[0] // (oh * ow), dym.shape[1]
    rows = xp.reshape(dym, (m * oh, ow * f))
    spans = _row_spans(kh, dilation[0], pads[0], h, oh)
    first = max(spans, key=lambda s: s[2] - s[1])
    rest = [s for s in spans if s is not first and s[2] > s[1]]
    add = _adder(xp)
    i, lo, hi, y0 = first
    for a, b in _chunks(0, m, sub):
        batch = slice(n0 + a, n0 + b)
        dxh[batch, 0:y0, :, :] = 0
        dxh[batch, y0 + hi - lo:, :, :] = 0
        for (x0, x1, o0, o1), band in bands:
            t = xp.reshape(rows[a * oh:b * oh, o0 * f:o1 * f] @ band, (b - a, oh, kh, x1 - x0, c))
            dxh[batch, y0:y0 + hi - lo, x0:x1, :] = t[:, lo:hi, i, :, :]
            for k, lo_k, hi_k, y0_k in rest:
                add(dxh, (batch, slice(y0_k, y0_k + hi_k - lo_k), slice(x0, x1), slice(None)), t[:, lo_k:hi_k, k, :, :])
    return dxh


BAND_BYTES = 2 ** 20  # banded GEMM results per sub-chunk on a CPU (measured, see _bands)


def _bands(xp, weight, m: int, pads, dilation, oh: int, ow: int, x):
    """The blocks and banded weights of :func:`_banded_dx` for shards of ``m`` samples, and the samples per
    sub-chunk: the GEMM results of one block within :data:`BAND_BYTES` on a CPU, the workspace limit on a GPU.
    Backward, 1 thread, 0.25 / 0.5 / 1 / 2 / 4 MiB: 128 x 3 -> 32 at 64x64 49.3-50.0 / 44.8-49.7 / 46.5-49.6 /
    48.8-51.8 / 53.5 ms; LeNet conv2, vgg conv1 and 32 x 3 -> 16 at 96x96 within 2% from 0.25 to 64 MiB."""
    f, c, kh, kw = weight.shape
    w, left, dw = x.shape[3], pads[2], dilation[1]
    count = _band_count(m, c, w, f, kh, kw, oh, ow, left, dw)
    blocks = _band_blocks(w, ow, kw, left, dw, count)
    bands = [(block, _band_weight(xp, weight, block, left, dw)) for block in blocks]
    limit = BAND_BYTES if cache_sized(x) else config.get_workspace_limit(gpu=True)
    sample = oh * kh * max(x1 - x0 for x0, x1, _, _ in blocks) * c * itemsize(xp, weight.dtype)
    return bands, max(1, min(m, limit // sample))


def _im2col_blocked(xh, n0: int, n1: int, pbuf, col, pads, stride, dilation, block: int):
    """Width-blocked columns of samples ``n0:n1`` of the channels-last ``xh (N, H, W, C)`` as the rows
    ``(m*oh*ow/B, kh*span*C)``: the chunk copied into the zero-bordered ``pbuf (nb, Hp, Wp, C)``, then one
    strided-slice copy per ``(i, u)`` into ``col (nb, oh, ow/B, kh, span, C)``."""
    xp = array_namespace(xh)
    m = n1 - n0
    h, w = xh.shape[1], xh.shape[2]
    pbuf[0:m, pads[0]:pads[0] + h, pads[2]:pads[2] + w, :] = xh[n0:n1, ...]
    nb, oh, owb, kh, span, c = col.shape
    step = stride[1] * block
    for i in range(kh):
        rows = slice(i * dilation[0], i * dilation[0] + stride[0] * (oh - 1) + 1, stride[0])
        for u in range(span):
            col[0:m, :, :, i, u, :] = pbuf[0:m, rows, u:u + step * (owb - 1) + 1:step, :]
    return xp.reshape(col[0:m, ...] if m < nb else col, (m * oh * owb, kh * span * c))


def _columns(xp, x, w_shape, algorithm: str, pads, stride, dilation, groups: int, oh: int, ow: int, nb: int,
             block: int = 1, split: bool = False, reverse: bool = False):
    """``columns(n0, n1)``: the columns of samples ``n0:n1`` (at most ``nb``) in the layout of ``algorithm``,
    ``(m*oh*ow, K)`` rows for "im2col_nhwc", ``(m*oh*ow/B, kh*span*C)`` for "im2col_blocked" (``block`` B),
    ``(G, kh, kw, C/G, m, oh, ow)`` for "im2col"; buffers are reused from one call to the next. ``split``
    (:func:`_tensor_gemm`): "im2col_nhwc" columns 6-D, ``(m, oh, ow, kh, kw, C)``; ``reverse`` (with ``split``):
    the kernel offsets in reverse order (:func:`_im2col_separable`)."""
    n, c, h, w = x.shape
    _, cg, kh, kw = w_shape
    dev = device(x)
    if algorithm == "im2col_nhwc" and _input_rows((kh, kw), stride, pads):
        xh = xp.permute_dims(x, (0, 2, 3, 1))  # a view of channels-last memory: no copy at all
        if split:
            return lambda n0, n1: xp.reshape(xh if n1 - n0 == n else xh[n0:n1, ...], (n1 - n0, h, w, 1, 1, c))
        return lambda n0, n1: xp.reshape(xh[n0:n1, ...], ((n1 - n0) * h * w, c))
    if algorithm == "im2col_blocked":
        xh = xp.permute_dims(x, (0, 2, 3, 1))
        pbuf = xp.zeros((nb, h + pads[0] + pads[1], w + pads[2] + pads[3], c), dtype=x.dtype, device=dev)
        col = xp.empty((nb, oh, ow // block, kh, _span(kw, block, stride[1], dilation[1]), c), dtype=x.dtype,
                       device=dev)
        fn = kernels.get("im2col_blocked", xp) or _im2col_blocked
        return lambda n0, n1: fn(xh, n0, n1, pbuf, col, pads, stride, dilation, block)
    if algorithm == "im2col_nhwc":
        xh = xp.permute_dims(x, (0, 2, 3, 1))
        fast = kernels.get("im2col_nhwc", xp)
        if fast is not None:  # one strided-window copy per chunk from a padded copy (NumPy)
            pbuf = xp.zeros((nb, h + pads[0] + pads[1], w + pads[2] + pads[3], c), dtype=x.dtype, device=dev)
            col = xp.empty((nb, oh, ow, kh, kw, c), dtype=x.dtype, device=dev)
            return lambda n0, n1: fast(xh, n0, n1, pbuf, col, pads, stride, dilation)
        if _separable(x, (kh, kw)):  # the row windows in a buffer kept from call to call (per geometry)
            rows = (nb, oh, w + pads[2] + pads[3], kh, c)
            rbuf = _workspace(xp, f"rows {pads} {stride} {dilation} {reverse}", rows, x.dtype, dev)
            col = xp.empty((nb, oh, ow, kh, kw, c), dtype=x.dtype, device=dev)
            return lambda n0, n1: _im2col_separable(xh, n0, n1 - n0, rbuf, col, pads, stride, dilation, split,
                                                    reverse)
        offsets = [(kh - 1 - o[0], kw - 1 - o[1]) + o[2:] if reverse else o
                   for o in _fold_offsets(oh, ow, h, w, kh, kw, pads, stride, dilation)]
        col = xp.zeros((nb, oh, ow, kh, kw, c), dtype=x.dtype, device=dev)
        return lambda n0, n1: _im2col_nhwc(xh, n0, n1 - n0, col, offsets, split)
    pbuf = xp.zeros((nb, c, h + pads[0] + pads[1], w + pads[2] + pads[3]), dtype=x.dtype, device=dev)
    col = xp.empty((groups, kh, kw, cg, nb, oh, ow), dtype=x.dtype, device=dev)
    im2col = kernels.get("im2col_kmajor", xp) or _im2col_kmajor
    return lambda n0, n1: im2col(_pad_chunk(x, n0, n1, pads, pbuf), col, stride, dilation)


def _weight_kf(xp, weight, groups: int):
    """``(F, C/G, kh, kw)`` -> ``(K, F)`` (groups == 1) or ``(G, K, F/G)``, K ordered (kh, kw, C/G) as the columns."""
    f, cg, kh, kw = weight.shape
    if groups == 1:
        return xp.reshape(xp.permute_dims(weight, (2, 3, 1, 0)), (kh * kw * cg, f))
    wg = xp.reshape(weight, (groups, f // groups, cg, kh, kw))
    return xp.reshape(xp.permute_dims(wg, (0, 3, 4, 2, 1)), (groups, kh * kw * cg, f // groups))


def _input_rows(kernel, stride, pads) -> bool:
    """A 1x1 convolution at stride 1 without padding: its channels-innermost columns are the rows of the
    channels-last input, used as they are (polyphase input gradients at stride 2 have such a phase: 64 -> 64,
    3x3, stride 2, 32x32, batch 64, that phase 1.9 -> 1.0 ms)."""
    return tuple(kernel) == (1, 1) and tuple(stride) == (1, 1) and not any(pads)


def _column_values(layout: str, c: int, kernel, oh: int, ow: int, stride, dilation, block: int, pads) -> int:
    """Values of one sample's column buffer in ``layout`` (``c`` input channels); none for input rows."""
    kh, kw = kernel
    if layout == "im2col_nhwc" and _input_rows(kernel, stride, pads):
        return 0
    if layout == "im2col_blocked":
        return oh * (ow // block) * kh * _span(kw, block, stride[1], dilation[1]) * c
    return oh * ow * kh * kw * c


def _tensor_gemm(x, layout: str) -> bool:
    """The plain path's channels-innermost GEMMs as ``tensordot`` with the weight ``(F, C, kh, kw)`` as it lies
    (:func:`_plain`): no reordered copy of the weight per step (in the forward and the transposed input
    gradient), on the columns as they lie ``(m, oh, ow, kh, kw, C)`` (no reshape): the result ``(m, oh, ow, F)``,
    the weight gradient ``(F, kh, kw, C)`` straight from ``dY`` (NCHW) and seen ``(F, C, kh, kw)`` by one
    permutation."""
    return layout == "im2col_nhwc" and _plain(x)


def _gemm(xp, cm, wk, layout: str, groups: int, f: int, weight=None, channel_axis: int = 1):
    """The columns ``cm`` of one chunk (as :func:`_columns` gives them) times the weight ``wk`` in the same
    layout: the convolution as channels-last rows ``(m*oh*ow, F)``. ``wk`` None (:func:`_tensor_gemm`): columns
    ``(m, oh, ow, kh, kw, C)`` contracted with the weight ``(F, C, kh, kw)`` as it lies, ``(m, oh, ow, F)``
    (``channel_axis`` 0: the weight ``(C, F, kh, kw)``, the transposed convolution's)."""
    if wk is None:
        return xp.tensordot(cm, weight, axes=((3, 4, 5), (2, 3, channel_axis)))
    if layout == "im2col":
        return _gemm_forward(xp, cm, wk, groups)
    y = cm @ wk
    return y if layout == "im2col_nhwc" else xp.reshape(y, (y.shape[0] * (y.shape[1] // f), f))


def _gemm_forward(xp, col, wk, groups: int):
    """Columns ``(G, kh, kw, C/G, m, oh, ow)`` times the weight ``wk`` -> ``(m*oh*ow, F)`` (channels-last rows)."""
    g, kh, kw, cg, m, oh, ow = col.shape
    p, k = m * oh * ow, kh * kw * cg
    if groups == 1:
        return xp.matrix_transpose(xp.reshape(col, (k, p))) @ wk
    y = xp.matmul(xp.matrix_transpose(xp.reshape(col, (g, k, p))), wk)  # (G, P, F/G)
    return xp.reshape(xp.permute_dims(y, (1, 0, 2)), (p, g * wk.shape[2]))


BLOCK_MIN_COLUMNS = 24  # B*F from which the width-blocked GEMM runs near full speed (measured, _width_block)
MAX_BLOCK = 8


def _width_block(f: int, ow: int, forced: bool = False) -> int:
    """Outputs per row of width-blocked columns: the smallest divisor B of ``ow`` (at most :data:`MAX_BLOCK`) with
    ``B*F >= 24``, or 1 (no blocking) where ``F >= 24`` or no divisor fits; ``forced``: else the smallest divisor.

    1 thread, per chunk, columns + forward GEMM: LeNet conv1 (F=6, ow=28) 0.30 ms unblocked, 0.20 at B=4, 0.18
    at B=7; conv2 (F=16, ow=10) B=2 0.39, B=5 0.37. Weight-gradient GEMM: conv1 0.16 -> 0.10 (B=4), 0.15 (B=7);
    conv2 0.39 -> 0.31 (B=2), 0.35 (B=5); vgg conv1 (F=32) 0.30 -> 0.35 at B=2: no blocking there."""
    if f >= BLOCK_MIN_COLUMNS and not forced:
        return 1
    divisors = [b for b in range(2, min(MAX_BLOCK, ow) + 1) if ow % b == 0]
    good = [b for b in divisors if b * f >= BLOCK_MIN_COLUMNS]
    return (good or (divisors if forced else []) or [1])[0]


def _column_layout(c: int, f: int, ow: int, groups: int, plain: bool = False) -> tuple[str, int]:
    """The forward's columns and width block: "im2col_nhwc" (channels innermost) for ungrouped convolutions with
    >= 16 channels, or all of them where ``plain`` (:func:`_plain`); for fewer, "im2col_blocked" where
    :func:`_width_block` finds a block, else "im2col" (ow innermost). :func:`xpcnn.config.set_conv_algorithm`
    can force each (groups: "im2col")."""
    algo = config.get_conv_algorithm()
    if plain:
        layout = "im2col_nhwc" if groups == 1 else "im2col"
    elif algo in ("im2col", "im2col_nhwc", "im2col_blocked"):
        layout = algo if groups == 1 else "im2col"
    elif groups == 1 and c >= CHANNELS_LAST_MIN:
        layout = "im2col_nhwc"
    else:
        layout = "im2col_blocked" if groups == 1 and _width_block(f, ow) > 1 else "im2col"
    return layout, (_width_block(f, ow, forced=algo == layout) if layout == "im2col_blocked" else 1)


def _span(kw: int, block: int, stride: int, dilation: int) -> int:
    """Input columns under one row of width-blocked columns: B outputs ``stride`` apart, each ``(kw-1)*d + 1`` wide."""
    return (block - 1) * stride + (kw - 1) * dilation + 1


def _weight_blocked(xp, weight, block: int, stride, dilation):
    """``(F, C, kh, kw)`` -> ``(kh*span*C, B*F)``, rows ``(i, u, c)`` and columns ``(b, f)``: ``W[f, c, i, j]``
    where ``u = b*s + j*d`` (the input column of tap j for output b of the block), zero elsewhere."""
    f, c, kh, kw = weight.shape
    s, d = stride[1], dilation[1]
    span = _span(kw, block, s, d)
    wb = xp.zeros((kh, span, c, block, f), dtype=weight.dtype, device=device(weight))
    wt = xp.permute_dims(weight, (2, 3, 1, 0))  # (kh, kw, C, F)
    for b in range(block):
        wb[:, b * s:b * s + d * (kw - 1) + 1:d, :, b, :] = wt
    return xp.reshape(wb, (kh * span * c, block * f))


def _unblock_weight_grad(xp, dwb, w_shape, block: int, stride, dilation):
    """Adjoint of :func:`_weight_blocked`: ``(kh*span*C, B*F)`` -> ``(kh*kw*C, F)``, summing the B outputs."""
    f, c, kh, kw = w_shape
    s, d = stride[1], dilation[1]
    d5 = xp.reshape(dwb, (kh, _span(kw, block, s, d), c, block, f))
    out = None
    for b in range(block):
        part = d5[:, b * s:b * s + d * (kw - 1) + 1:d, :, b, :]
        out = part if out is None else out + part
    return xp.reshape(out, (kh * kw * c, f))


class ConvContext(NamedTuple):
    """What :func:`conv2d_forward` keeps for the backward pass."""
    x: Any
    weight: Any
    wk: Any                 # the weight ordered as the columns: (K, F) rows, (G, K, F/G), blocked; None: tensordot
    algorithm: str          # the forward's column layout: "im2col", "im2col_nhwc" or "im2col_blocked"
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


def _shards(xp, x, sample_values: int) -> list:
    """A convolution's batch shards of ``x`` for the worker threads (forward and backward): one per worker where
    each gets at least :data:`xpcnn.threads.MIN_SHARD_BYTES` of columns (``sample_values`` a sample; of input
    where the input rows are the columns and ``sample_values`` is 0), else the whole batch here. LeNet at 2
    threads, batch 16 / 32, forward 1.21 / 1.61 ms split, 0.76 / 1.24 not (1 thread: 0.76 / 1.24); backward
    (model, input gradient off) 1.65-1.89 / 2.19-2.35 split, 1.14-1.15 / 1.90-1.91 not; training steps
    2.83-3.05 -> 2.25-2.27 ms and 4.0-4.1 -> 3.6 ms (alternating processes)."""
    values = sample_values or math.prod(x.shape[1:])
    return threads.ranges(x.shape[0], values * itemsize(xp, x.dtype))


def _forward_rows(xp, x, weight, pads, stride, dilation, groups: int, oh: int, ow: int, flipped: bool = False):
    """The convolution as channels-last rows ``(N*oh*ow, F)``, without bias; returns ``(rows, wk, layout, block,
    nb, cols)``: the weight as ordered for the columns, the column layout and its width block, samples per
    chunk, and the columns of the
    batch when column caching is on and one chunk holds it (else None). Batch shards run on the
    :mod:`~xpcnn.threads` workers, each with its own column buffer. ``flipped`` (the plain path,
    :func:`_tensor_gemm`, groups 1): convolve with ``weight (C, F, kh, kw)`` flipped in space and its channel
    axes swapped, by columns in reversed offset order (no flipped copy of the weight)."""
    n, c, h, w = x.shape
    f, cg, kh, kw = weight.shape
    if flipped:
        f, cg = cg, f
    plain = _plain(x)
    layout, block = _column_layout(c, f, ow, groups, plain)
    blocked = layout == "im2col_blocked"
    split = _tensor_gemm(x, layout)
    if flipped and not (split and groups == 1):
        raise ValueError("flipped weights need the plain path's tensordot (_tensor_gemm)")
    w_shape, axis = (f, cg, kh, kw), 0 if flipped else 1
    if split:
        wk = None
    else:
        wk = _weight_blocked(xp, weight, block, stride, dilation) if blocked else _weight_kf(xp, weight, groups)
    if n == 0:  # an empty batch (as PyTorch allows): an empty result
        return xp.empty((0, f), dtype=x.dtype, device=device(x)), wk, layout, block, 1, None
    values = _column_values(layout, c, (kh, kw), oh, ow, stride, dilation, block, pads)
    parts = _shards(xp, x, values)
    nb = _batch_chunk(n, values, itemsize(xp, x.dtype), layout, len(parts), cache_sized(x))
    if nb >= n and len(parts) == 1:  # one chunk: the GEMM writes the result, no copy
        cm = _columns(xp, x, w_shape, layout, pads, stride, dilation, groups, oh, ow, nb, block, split, flipped)(0, n)
        keep = config.get_cache_columns() or plain
        return _gemm(xp, cm, wk, layout, groups, f, weight, axis), wk, layout, block, nb, (cm if keep else None)
    y = xp.empty((n, oh, ow, f) if split else (n * oh * ow, f), dtype=x.dtype, device=device(x))

    def shard(a: int, b: int) -> None:
        columns = _columns(xp, x[a:b, ...], w_shape, layout, pads, stride, dilation, groups, oh, ow, nb, block,
                           split, flipped)
        for n0, n1 in _chunks(a, b, nb):
            rows = (slice(n0, n1), Ellipsis) if split else (slice(n0 * oh * ow, n1 * oh * ow), slice(None))
            y[rows] = _gemm(xp, columns(n0 - a, n1 - a), wk, layout, groups, f, weight, axis)
    threads.run(shard, parts)
    return y, wk, layout, block, nb, None


def conv2d_forward(x, weight, bias=None, stride: Any = 1, padding: Any = 0, dilation: Any = 1, groups: int = 1):
    """Convolution (cross-correlation, as in PyTorch). Returns ``(y, ctx)`` for :func:`conv2d_backward`.

    Columns in the layout :func:`_column_layout` picks, times the weight ``(kh*kw*C, F)``, give the output
    channels-last ``(N, oh, ow, F)``; ``y`` is its NCHW view (no copy). The batch is processed in chunks whose
    column buffer fits :func:`xpcnn.config.get_workspace_limit`; backward recomputes the
    columns from ``x`` (unless column caching is on and one chunk holds the whole batch).
    """
    xp = array_namespace(x, weight)
    stride, dilation, pads, oh, ow = conv2d_geometry(x.shape, weight.shape, stride, padding, dilation, groups)
    n, f = x.shape[0], weight.shape[0]
    y, wk, algorithm, block, nb, cached = _forward_rows(xp, x, weight, pads, stride, dilation, groups, oh, ow)
    if bias is not None and y.ndim == 4:  # (N, oh, ow, F) from tensordot (_tensor_gemm): one broadcast add
        y += bias
    elif bias is not None:
        y = add_rows_bias(xp, y, bias, ow)
    if y.ndim != 4:
        y = xp.reshape(y, (n, oh, ow, f))
    ctx = ConvContext(x, weight, wk, algorithm, cached, pads, stride, dilation, groups, oh, ow, nb, bias is not None,
                      block)
    return xp.permute_dims(y, (0, 3, 1, 2)), ctx


def _transposed_pads(pads, kernel, dilation):
    """Padding of the convolution of ``dY`` that gives ``dX`` at stride 1: ``d*(k-1) - p`` on each side (None
    where a side is negative: padding wider than the dilated kernel)."""
    (kh, kw), (dh, dw) = kernel, dilation
    top, bottom, left, right = pads
    out = (dh * (kh - 1) - top, dh * (kh - 1) - bottom, dw * (kw - 1) - left, dw * (kw - 1) - right)
    return out if min(out) >= 0 else None


def _use_transposed(ctx) -> bool:
    """Input gradient as a transposed convolution? Stride 1, groups 1, padding within the dilated kernel; under
    "auto" only after a channels-innermost forward (measured faster there, see the module docstring)."""
    algo = config.get_conv_algorithm()
    if algo not in ("auto", "transposed") or ctx.groups != 1 or ctx.stride != (1, 1):
        return False  # another path is forced
    if _transposed_pads(ctx.pads, ctx.weight.shape[2:], ctx.dilation) is None:
        return False
    return algo == "transposed" or ctx.algorithm == "im2col_nhwc"


def _transposed_dx(xp, dy, ctx):
    """``dX`` of a stride-1 ungrouped convolution: ``dY`` convolved with the weight flipped in space and with its
    channel axes swapped, ``W'[c, f, i, j] = W[f, c, kh-1-i, kw-1-j]``, padded ``d*(k-1) - p`` (the adjoint of
    the forward). Channels-last ``(N, C, H, W)`` view."""
    x, weight = ctx.x, ctx.weight
    n, c, h, w = x.shape
    pads = _transposed_pads(ctx.pads, weight.shape[2:], ctx.dilation)
    if _plain(dy):  # the flip and the swap in the columns' order and the contraction's axes (_forward_rows)
        rows = _forward_rows(xp, dy, weight, pads, (1, 1), ctx.dilation, 1, h, w, flipped=True)[0]
    else:
        wt = xp.permute_dims(xp.flip(weight, axis=(2, 3)), (1, 0, 2, 3))
        rows = _forward_rows(xp, dy, wt, pads, (1, 1), ctx.dilation, 1, h, w)[0]
    return xp.permute_dims(rows if rows.ndim == 4 else xp.reshape(rows, (n, h, w, c)), (0, 3, 1, 2))


def _use_polyphase(ctx) -> bool:
    """Input gradient by phases (:func:`_polyphase_dx`)? Groups 1; forced ("polyphase") at any stride; under
    "auto" where it measured faster than col2im: stride > 1 after a channels-innermost forward, windows that
    overlap (a dilated kernel wider than the stride) and no more filters than channels.

    Input gradient, 1 thread, batch 64 (32 for 128 -> 256), 3x3 stride 2 unless said, col2im -> phases (ms):
    64 -> 64 at 32x32 21.8 -> 16.1 (2 threads 24.4 -> 11.2), 5x5 64 -> 64 51.9 -> 32.5, 128 -> 128 at 16x16
    13.8 -> 11.6, 32 -> 32 8.3 -> 6.6, 16 -> 16 4.2 -> 3.0 (2 threads 3.2 -> 3.4); with twice the filters no
    gain (64 -> 128 30.5 -> 31.0, 128 -> 256 10.5 -> 10.9, 32 -> 64 10.2 -> 10.5); 1x1 stride 2 (no overlap)
    0.9 -> 1.2; few channels (ow-innermost forward) slower: 8 -> 32 3.0 -> 3.9, 7x7 3 -> 64 13.5 -> 57."""
    algo = config.get_conv_algorithm()
    if ctx.groups != 1 or algo not in ("auto", "polyphase") or _plain(ctx.x):
        return False
    if algo == "polyphase":
        return True
    f, c, kh, kw = ctx.weight.shape
    (sh, sw), (dh, dw) = ctx.stride, ctx.dilation
    overlap = dh * (kh - 1) + 1 > sh or dw * (kw - 1) + 1 > sw
    return ctx.stride != (1, 1) and ctx.algorithm == "im2col_nhwc" and overlap and f <= c


def _phases(size: int, osize: int, k: int, s: int, d: int, pad: int) -> list:
    """Along one axis of a convolution (input ``size``, output ``osize``, kernel ``k``, stride ``s``, dilation
    ``d``, leading padding ``pad``): for each phase ``r`` (input positions ``r, r+s, ...``, ``q`` of them), the
    stride-1 correlation of ``dY`` that gives the input gradient there, ``(r, q, sub)`` with ``sub`` None where no
    tap reaches the phase, else ``(taps, dil, crop, pads)``: the kernel taps as a slice (the sub-kernel is
    their reverse: largest index first), the sub-kernel's dilation, the ``(top, bottom)`` rows of ``dY`` it
    never reads and its ``(top, bottom)`` padding.

    Input position ``h = s*q + r`` receives tap ``i`` from output ``q + e_i``, ``e_i = (r + pad - d*i) / s``,
    wherever that division is exact: taps ``s/g`` apart (``g = gcd(s, d)``) whose ``e_i`` are ``d/g`` apart."""
    out, g = [], math.gcd(s, d)
    for r in range(min(s, size)):
        q = len(range(r, size, s))
        first = [i for i in range(k) if (r + pad - d * i) % s == 0]
        if not first:
            out.append((r, q, None))
            continue
        i0, kr, dil = first[-1], len(first), d // g
        e0 = (r + pad - d * i0) // s
        top, bottom = -e0, q - osize + e0 + dil * (kr - 1)
        taps = slice(first[0], i0 + 1, s // g)
        out.append((r, q, (taps, dil, (max(0, -top), max(0, -bottom)), (max(0, top), max(0, bottom)))))
    return out


def _polyphase_dx(xp, dy, ctx):
    """``dX`` of an ungrouped convolution at any stride, one phase at a time: the input positions ``(r, c) +
    stride*(q, p)`` receive only the taps ``i`` with ``d*i = r + pad (mod s)``, so their gradient is a stride-1
    convolution of ``dY`` with that sub-kernel, flipped and channel-swapped (:func:`_phases`): s_h*s_w forward
    convolutions with the forward's fast GEMM, and no col2im (64 -> 64 channels, 3x3, stride 2, 32x32, batch
    64, 1 thread: 21.8 ms by col2im, 16.1 ms by phases). At stride 1 it is :func:`_transposed_dx`, padding
    beyond the kernel included (cropped ``dY``). Channels-last ``(N, C, H, W)`` view."""
    n, c, h, w = ctx.x.shape
    oh, ow = dy.shape[2], dy.shape[3]
    (sh, sw), (dh, dw) = ctx.stride, ctx.dilation
    rows_h = _phases(h, oh, ctx.weight.shape[2], sh, dh, ctx.pads[0])
    rows_w = _phases(w, ow, ctx.weight.shape[3], sw, dw, ctx.pads[2])
    # a phase no tap reaches, or whose taps all land in the padding, has a zero gradient
    live = [(rh, qh, sub_h, rw, qw, sub_w) for rh, qh, sub_h in rows_h for rw, qw, sub_w in rows_w
            if sub_h is not None and sub_w is not None
            and oh - sum(sub_h[2]) >= 1 and ow - sum(sub_w[2]) >= 1]
    every = len(live) == len(rows_h) * len(rows_w)  # every position written: no zero fill needed
    dx = (xp.empty if every else xp.zeros)((n, h, w, c), dtype=dy.dtype, device=device(dy))
    wt = xp.permute_dims(ctx.weight, (1, 0, 2, 3))  # (C, F, kh, kw): dY's F channels in, C out
    for rh, qh, (taps_h, dil_h, (ct, cb), pads_h), rw, qw, (taps_w, dil_w, (cl, cr), pads_w) in live:
        sub = xp.flip(wt[:, :, taps_h, taps_w], axis=(2, 3))  # no negative-step slices: torch has none
        rows = _forward_rows(xp, dy[:, :, ct:oh - cb, cl:ow - cr], sub, pads_h + pads_w, (1, 1),
                             (dil_h, dil_w), 1, qh, qw)[0]
        dx[:, rh:rh + sh * (qh - 1) + 1:sh, rw:rw + sw * (qw - 1) + 1:sw, :] = xp.reshape(rows, (n, qh, qw, c))
    return xp.permute_dims(dx, (0, 3, 1, 2))


def _use_banded(ctx) -> bool:
    """Input gradient by banded rows (:func:`_banded_dx`)? Stride 1 and groups 1; forced ("banded"), or under
    "auto" after the few-channel forwards (ow-innermost or width-blocked columns): faster than col2im and
    than the flat shifts before it on every such shape timed (the transposed convolution wins after a
    channels-innermost forward)."""
    algo = config.get_conv_algorithm()
    if ctx.groups != 1 or ctx.stride != (1, 1) or algo not in ("auto", "banded") or _plain(ctx.x):
        return False
    return algo == "banded" or ctx.algorithm in ("im2col", "im2col_blocked")


def backward_algorithm(ctx: ConvContext) -> str:
    """How :func:`conv2d_backward` computes the input gradient for ``ctx``: "transposed", "polyphase" or
    "banded" where :func:`_use_transposed`, :func:`_use_polyphase`, :func:`_use_banded` say so (in that order);
    else col2im from the forward's column layout ("im2col" or "im2col_nhwc" after width-blocked columns, by
    channel count)."""
    if _use_transposed(ctx):
        return "transposed"
    if _use_polyphase(ctx):
        return "polyphase"
    if _use_banded(ctx):
        return "banded"
    if ctx.algorithm == "im2col_blocked":  # col2im of unblocked columns, computed from dY and the plain weight
        return "im2col" if ctx.weight.shape[1] < CHANNELS_LAST_MIN else "im2col_nhwc"
    return ctx.algorithm


DW_BLOCK = 1024  # rows of the weight gradient's reduction per GEMM (measured, see _long_matmul)


def _long_matmul(xp, a, b):
    """``a (K, P) @ b (P, F)`` as a sum over blocks of :data:`DW_BLOCK` rows of P: OpenBLAS runs these
    small-output, long-reduction products faster in pieces (1 thread: K=25, P=20384, F=6 0.21 -> 0.12 ms;
    K=27, P=18432, F=32 0.40 -> 0.30 ms; no change for the larger K of vgg-small's other layers)."""
    p = a.shape[1]
    if p <= DW_BLOCK or not cache_sized(a):
        return a @ b
    out = a[:, 0:DW_BLOCK] @ b[0:DW_BLOCK, :]
    for j in range(DW_BLOCK, p, DW_BLOCK):
        e = min(p, j + DW_BLOCK)
        out += a[:, j:e] @ b[j:e, :]
    return out


def conv2d_backward(dy, ctx):
    """Gradients ``(dx, dweight, dbias)`` of :func:`conv2d_forward` (dbias is None without bias).

    Per batch chunk: columns (recomputed or cached), ``dW += col.T @ dY``, then dx as :func:`backward_algorithm`
    says: ``dcol = dY @ W.T`` and col2im, banded rows, or after dW as forward convolutions of ``dY``
    ("transposed", "polyphase").
    """
    return conv2d_backward_params(dy, ctx, need_dx=True)


def conv2d_backward_params(dy, ctx, need_dx: bool = False):
    """As :func:`conv2d_backward`; with ``need_dx=False`` dx is None and its GEMM and col2im are skipped
    (the first layer of a training step: nothing consumes the input gradient)."""
    x, weight, wk, algorithm, cached, pads, stride, dilation, groups, oh, ow, nb, has_bias, block = ctx
    xp = array_namespace(dy, weight)
    n, c, h, w = x.shape
    f, cg, kh, kw = weight.shape
    g, fg, k = groups, f // groups, cg * kh * kw
    dev = device(dy)
    if n == 0:  # an empty batch: no gradient to sum
        dw = xp.zeros(weight.shape, dtype=dy.dtype, device=dev)
        db = xp.zeros((f,), dtype=dy.dtype, device=dev) if has_bias else None
        return (empty_nchw(xp, (0, c, h, w), dy.dtype, dev) if need_dx else None), dw, db
    dx_algorithm = backward_algorithm(ctx) if need_dx else None
    by_convolution = dx_algorithm in ("transposed", "polyphase")  # dx as forward convolutions of dY, after dW
    need_dcol = need_dx and not by_convolution
    split = wk is None and algorithm == "im2col_nhwc"  # 6-D columns, tensordot with dY itself (_tensor_gemm)
    if not split or need_dcol:
        dyh = xp.reshape(xp.permute_dims(dy, (0, 2, 3, 1)), (n * oh * ow, f))  # channels-last rows
    if has_bias:
        db = xp.sum(dy, axis=(0, 2, 3)) if split else rows_sum(xp, dyh, ow)
    else:
        db = None
    # dcol channels-innermost (fast GEMM, contiguous col2im) for many channels; ow-innermost for few
    clast = algorithm == "im2col_nhwc" or cg >= CHANNELS_LAST_MIN
    values = _column_values(algorithm, c, (kh, kw), oh, ow, stride, dilation, block, pads)
    parts = [(0, n)] if cached is not None else _shards(xp, x, values)
    banded = dx_algorithm == "banded"
    if need_dcol and banded:  # banded rows write every sample's gradient, straight into the library's layout
        dx = xp.empty((n, h, w, c), dtype=dy.dtype, device=dev)
        bands, sub = _bands(xp, weight, -(-n // len(parts)), pads, dilation, oh, ow, x)
    elif need_dcol and g == 1 and clast and _separable(x, (kh, kw)):  # each chunk's col2im writes its samples
        dx = xp.empty((n, h, w, c), dtype=dy.dtype, device=dev)
    elif need_dcol:  # col2im adds into it
        dx = xp.zeros((n, h, w, c) if clast else (n, c, h, w), dtype=dy.dtype, device=dev)
    else:
        dx = None
    blocked = algorithm == "im2col_blocked"
    if (blocked or split) and need_dcol and not banded:  # dcol unblocked: the plain weight
        wk = _weight_kf(xp, weight, 1)
    wkt = xp.matrix_transpose(wk) if need_dcol and not banded else None

    def shard(a: int, b: int):
        """dW of samples ``a:b`` (and their dx, written into ``dx``), chunk by chunk."""
        if cached is None:
            columns = _columns(xp, x[a:b, ...], weight.shape, algorithm, pads, stride, dilation, groups, oh, ow, nb,
                               block, split)
        dwk = None
        for n0, n1 in _chunks(a, b, nb):
            m, p0, p1 = n1 - n0, n0 * oh * ow, n1 * oh * ow
            cm = columns(n0 - a, n1 - a) if cached is None else cached
            dym = dyh[p0:p1, :] if not split or need_dcol else None
            if split:  # (F, kh, kw, C)
                part = xp.tensordot(dy if m == n else dy[n0:n1, ...], cm, axes=((0, 2, 3), (0, 1, 2)))
            elif blocked:
                part = _long_matmul(xp, xp.matrix_transpose(cm), xp.reshape(dym, ((p1 - p0) // block, block * f)))
            elif algorithm == "im2col_nhwc":
                part = _long_matmul(xp, xp.matrix_transpose(cm), dym)  # (K, F)
            elif g == 1:
                part = _long_matmul(xp, xp.reshape(cm, (k, p1 - p0)), dym)  # (K, F)
            else:
                dyg = xp.permute_dims(xp.reshape(dym, (p1 - p0, g, fg)), (1, 0, 2))  # (G, P, F/G)
                part = xp.matmul(xp.reshape(cm, (g, k, p1 - p0)), dyg)  # (G, K, F/G)
            dwk = part if dwk is None else dwk + part
            if not need_dcol or banded:
                continue
            if g == 1:
                dcol = dym @ wkt if clast else wk @ xp.matrix_transpose(dym)  # (P, K) or (K, P)
            else:
                dcol = (xp.permute_dims(xp.matmul(dyg, wkt), (1, 0, 2)) if clast  # (P, G, K)
                        else xp.matmul(wk, xp.matrix_transpose(dyg)))  # (G, K, P)
            if clast:
                if g == 1 and _separable(x, (kh, kw)):
                    _col2im_separable(xp.reshape(dcol, (m, oh, ow, kh, kw, cg)), dx, n0, pads, stride, dilation)
                else:
                    _col2im_nhwc(xp.reshape(dcol, (m, oh, ow, g, kh, kw, cg)), dx, n0, pads, stride, dilation)
            else:
                _col2im_kmajor(xp.reshape(dcol, (g, kh, kw, cg, m, oh, ow)), dx, n0, pads, stride, dilation)
        if need_dcol and banded:  # the whole shard at once, after its weight gradient
            _banded_dx(xp, bands, kh, dyh[a * oh * ow:b * oh * ow, :], dx, a, pads, dilation, oh, ow, sub)
        return dwk

    partials = threads.run(shard, parts)
    dwk = partials[0]
    for part in partials[1:]:
        dwk = dwk + part
    if blocked:
        dwk = _unblock_weight_grad(xp, dwk, weight.shape, block, stride, dilation)
    if split:
        dw = xp.permute_dims(dwk, (0, 3, 1, 2))
    elif g == 1:
        dw = xp.permute_dims(xp.reshape(dwk, (kh, kw, cg, f)), (3, 2, 0, 1))
    else:
        dw = xp.reshape(xp.permute_dims(xp.reshape(dwk, (g, kh, kw, cg, fg)), (0, 4, 3, 1, 2)), (f, cg, kh, kw))
    if by_convolution:
        return (_transposed_dx if dx_algorithm == "transposed" else _polyphase_dx)(xp, dy, ctx), dw, db
    if dx is None:
        return dx, dw, db
    if clast or banded:
        return xp.permute_dims(dx, (0, 3, 1, 2)), dw, db
    out = empty_nchw(xp, dx.shape, dx.dtype, dev)  # the library's one layout: channels-last memory
    out[...] = dx
    return out, dw, db


def conv2d(x, weight, bias=None, stride: Any = 1, padding: Any = 0, dilation: Any = 1, groups: int = 1):
    """Forward only."""
    return conv2d_forward(x, weight, bias, stride, padding, dilation, groups)[0]
