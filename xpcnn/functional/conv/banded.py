"""The banded input gradient of a stride-1 ungrouped convolution (few channels, where the planner picks it).

Seen as ``(m*oh, ow*F)``, each row of ``dY`` is one output row; times the banded (width-Toeplitz) weight of a block
of input columns it gives that block's contribution to kh input rows at once; kh row-shifted adds sum them. No
col2im and no copy of ``dY``: a block's slice of ``dY`` is a column range of those rows, read in place.
"""
from __future__ import annotations

from array_api_compat import device

from .._util import itemsize
from . import planner
from .columns import chunks
from .geometry import band_blocks, row_spans
from .input_grad import adder


def band_weight(xp, weight, block, left: int, dw: int):
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


def bands(xp, weight, m: int, pads, dilation, oh: int, ow: int, x):
    """The blocks and banded weights of :func:`banded_dx` for shards of ``m`` samples (as many blocks as
    :func:`~.planner.band_count` picks), and the samples per sub-chunk (:func:`~.planner.band_samples`)."""
    f, c, kh, kw = weight.shape
    w, left, dw = x.shape[3], pads[2], dilation[1]
    count = planner.band_count(m, c, w, f, kh, kw, oh, ow, left, dw)
    blocks = band_blocks(w, ow, kw, left, dw, count)
    out = [(block, band_weight(xp, weight, block, left, dw)) for block in blocks]
    sample = oh * kh * max(x1 - x0 for x0, x1, _, _ in blocks) * c * itemsize(xp, weight.dtype)
    return out, planner.band_samples(x, m, sample)


def banded_dx(xp, blocks, kh: int, dym, dxh, n0: int, pads, dilation, oh: int, ow: int, sub: int):
    """Input gradient of samples ``n0:n0+m`` (a batch shard) written into the channels-last ``dxh (N, H, W, C)``,
    from the channels-last output gradient rows ``dym (m*oh*ow, F)``, ``sub`` samples at a time; ``blocks``:
    ``[(block, banded weight)]`` (:func:`bands`).

    A block's GEMM gives ``(m*oh, kh*B*C)``, the contributions to kh input rows; the kernel row covering most
    input rows is written, the rows it misses zeroed, the other kernel rows added; results land channels-last,
    in runs of B*C values."""
    h, c = dxh.shape[1], dxh.shape[3]
    m, f = dym.shape[0] // (oh * ow), dym.shape[1]
    rows = xp.reshape(dym, (m * oh, ow * f))
    spans = row_spans(kh, dilation[0], pads[0], h, oh)
    first = max(spans, key=lambda s: s[2] - s[1])
    rest = [s for s in spans if s is not first and s[2] > s[1]]
    add = adder(xp)
    i, lo, hi, y0 = first
    for a, b in chunks(0, m, sub):
        batch = slice(n0 + a, n0 + b)
        dxh[batch, 0:y0, :, :] = 0
        dxh[batch, y0 + hi - lo:, :, :] = 0
        for (x0, x1, o0, o1), band in blocks:
            t = xp.reshape(rows[a * oh:b * oh, o0 * f:o1 * f] @ band, (b - a, oh, kh, x1 - x0, c))
            dxh[batch, y0:y0 + hi - lo, x0:x1, :] = t[:, lo:hi, i, :, :]
            for k, lo_k, hi_k, y0_k in rest:
                add(dxh, (batch, slice(y0_k, y0_k + hi_k - lo_k), slice(x0, x1), slice(None)), t[:, lo_k:hi_k, k, :, :])
    return dxh
