"""Index arithmetic of a convolution: output size and padding, the windows of each kernel offset, the phases of
a strided input gradient, the blocks of the banded one. No array operations here."""
from __future__ import annotations

import math

from .._util import conv_padding, out_size, pair


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


def clip(o: int, off: int, pad: int, s: int, size: int) -> tuple[int, int, int]:
    """Outputs ``[lo, hi)`` of one kernel offset whose input ``o*s + off - pad`` lies in ``[0, size)``; first input."""
    lo = max(0, -(-(pad - off) // s))
    hi = min(o, (size - 1 + pad - off) // s + 1)
    return lo, hi, lo * s + off - pad


def fold_offsets(oh, ow, h, w, kh, kw, pads, stride, dilation):
    """For each kernel offset ``(i, j)`` that touches the unpadded input: the output rows/columns it covers
    and the strided input slices they land on, ``(i, j, out_rows, out_cols, in_rows, in_cols)``.

    Contributions that fall in the padding are dropped, so col2im needs no padded buffer.
    """
    for i in range(kh):
        a0, a1, r0 = clip(oh, i * dilation[0], pads[0], stride[0], h)
        if a1 <= a0:
            continue
        for j in range(kw):
            b0, b1, c0 = clip(ow, j * dilation[1], pads[2], stride[1], w)
            if b1 <= b0:
                continue
            yield (i, j, slice(a0, a1), slice(b0, b1),
                   slice(r0, r0 + stride[0] * (a1 - a0 - 1) + 1, stride[0]),
                   slice(c0, c0 + stride[1] * (b1 - b0 - 1) + 1, stride[1]))


def span(kw: int, block: int, stride: int, dilation: int) -> int:
    """Input columns under one row of width-blocked columns: B outputs ``stride`` apart, each ``(kw-1)*d + 1`` wide."""
    return (block - 1) * stride + (kw - 1) * dilation + 1


def input_rows(kernel, stride, pads) -> bool:
    """A 1x1 convolution at stride 1 without padding: its channels-innermost columns are the rows of the
    channels-last input, used as they are (no copy; a polyphase input gradient at stride 2 has such a phase)."""
    return tuple(kernel) == (1, 1) and tuple(stride) == (1, 1) and not any(pads)


def column_values(layout: str, c: int, kernel, oh: int, ow: int, stride, dilation, block: int, pads) -> int:
    """Values of one sample's column buffer in ``layout`` (``c`` input channels); none for input rows."""
    kh, kw = kernel
    if layout == "im2col_nhwc" and input_rows(kernel, stride, pads):
        return 0
    if layout == "im2col_blocked":
        return oh * (ow // block) * kh * span(kw, block, stride[1], dilation[1]) * c
    return oh * ow * kh * kw * c


def transposed_pads(pads, kernel, dilation):
    """Padding of the convolution of ``dY`` that gives ``dX`` at stride 1: ``d*(k-1) - p`` on each side (None
    where a side is negative: padding wider than the dilated kernel)."""
    (kh, kw), (dh, dw) = kernel, dilation
    top, bottom, left, right = pads
    out = (dh * (kh - 1) - top, dh * (kh - 1) - bottom, dw * (kw - 1) - left, dw * (kw - 1) - right)
    return out if min(out) >= 0 else None


def phases(size: int, osize: int, k: int, s: int, d: int, pad: int) -> list:
    """Along one axis of a convolution (input ``size``, output ``osize``, kernel ``k``, stride ``s``, dilation
    ``d``, leading padding ``pad``): for each phase ``r`` (input positions ``r, r+s, ...``, ``q`` of them), the
    stride-1 correlation of ``dY`` that gives the input gradient there, ``(r, q, sub)`` with ``sub`` None where no
    tap reaches the phase, else ``(taps, dil, crop, pads)``: the kernel taps as a slice (the sub-kernel is
    their reverse: largest index first), the sub-kernel's dilation, the ``(top, bottom)`` rows of ``dY`` it
    never reads and its ``(top, bottom)`` padding.

    Input position ``h = s*q + r`` receives tap ``i`` from output ``q + e_i``, ``e_i = (r + pad - d*i) / s``,
    wherever that division is exact: taps ``s/g`` apart (``g = gcd(s, d)``) whose ``e_i`` are ``d/g`` apart.
    At stride 1 there is one phase, every tap, padded ``d*(k-1) - p`` (:func:`transposed_pads`)."""
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


def band_blocks(w: int, ow: int, kw: int, left: int, dw: int, count: int) -> list:
    """The input's width in ``count`` near-equal blocks ``(x0, x1, o0, o1)``: input columns ``[x0, x1)`` and the
    output columns ``[o0, o1)`` whose windows reach them at stride 1 (``x = o + j*dw - left``)."""
    edges = [round(k * w / count) for k in range(count + 1)]
    return [(x0, x1, max(0, x0 + left - dw * (kw - 1)), min(ow, x1 + left)) for x0, x1 in zip(edges, edges[1:])]


def row_spans(kh: int, dh: int, top: int, h: int, oh: int) -> list:
    """For each kernel row i, ``(i, lo, hi, y0)``: output rows ``[lo, hi)`` reach input rows from ``y0`` on
    (``y = oy + i*dh - top``, stride 1)."""
    spans = []
    for i in range(kh):
        lo, hi = max(0, top - i * dh), min(oh, h + top - i * dh)
        spans.append((i, lo, max(lo, hi), lo + i * dh - top))
    return spans
