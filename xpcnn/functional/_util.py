"""Small helpers shared by the functional ops: argument normalisation and padding."""
from __future__ import annotations

import numbers
from typing import Any

from array_api_compat import array_namespace, device

from .. import kernels


def pair(value: Any, name: str = "value") -> tuple[int, int]:
    """``3 -> (3, 3)``; ``(2, 3) -> (2, 3)`` (NumPy integers too, not bools); anything else is a clear error."""
    if is_int(value):
        return (int(value), int(value))
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(is_int(v) for v in value):
        return (int(value[0]), int(value[1]))
    raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")


def is_int(value: Any) -> bool:
    """Python and NumPy integers, not bools (``bool`` is an int subclass; NumPy's bool is no ``numbers.Integral``)."""
    return type(value) is int or (isinstance(value, numbers.Integral) and not isinstance(value, bool))


def conv_padding(padding: Any, kernel: tuple[int, int], dilation: tuple[int, int],
                 stride: tuple[int, int] = (1, 1)) -> tuple[int, int, int, int]:
    """Resolve ``padding`` to ``(top, bottom, left, right)``.

    ``"same"`` pads so that the output size equals the input size at stride 1,
    with any odd extra on the bottom/right (as PyTorch does); ``"valid"`` is 0.
    """
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding == "same":
            if stride != (1, 1):
                raise ValueError(f"padding='same' needs stride 1 (as in PyTorch), got stride={stride}")
            th, tw = dilation[0] * (kernel[0] - 1), dilation[1] * (kernel[1] - 1)
            return (th // 2, th - th // 2, tw // 2, tw - tw // 2)
        raise ValueError(f"padding must be an int, a pair, 'same' or 'valid', got {padding!r}")
    ph, pw = pair(padding, "padding")
    if ph < 0 or pw < 0:
        raise ValueError(f"padding must be >= 0, got {padding!r}")
    return (ph, ph, pw, pw)


def itemsize(xp, dtype) -> int:
    """Bytes per value of a floating ``dtype``."""
    return xp.finfo(dtype).bits // 8


def out_size(size: int, kernel: int, stride: int, pad_total: int, dilation: int = 1) -> int:
    """Output length of a sliding window (floor mode)."""
    return (size + pad_total - dilation * (kernel - 1) - 1) // stride + 1


def empty_nchw(xp, shape, dtype, device, fill: float | None = None):
    """A new ``(N, C, H, W)`` array in channels-last memory: an ``(N, H, W, C)`` buffer seen through
    ``permute_dims`` (a view on NumPy, CuPy, torch and array_api_strict; slice assignment writes through).

    Every 4-D array the ops allocate uses this layout, the one conv outputs have, so element-wise ops of
    forward and backward never mix memory layouts (mixed layouts make NumPy's ufuncs several times slower:
    docs/measurements.md).
    ``fill`` None leaves it uninitialised, else every value is ``fill``.
    """
    n, c, h, w = shape
    if fill is None:
        buf = xp.empty((n, h, w, c), dtype=dtype, device=device)
    elif fill == 0:
        buf = xp.zeros((n, h, w, c), dtype=dtype, device=device)
    else:
        buf = xp.full((n, h, w, c), fill, dtype=dtype, device=device)
    return xp.permute_dims(buf, (0, 3, 1, 2))


def pad2d(x, pads: tuple[int, int, int, int], value: float = 0.0):
    """Pad the last two axes of an NCHW array with a constant (the standard has no ``pad``); the result is
    channels-last in memory (:func:`empty_nchw`)."""
    top, bottom, left, right = pads
    if not (top or bottom or left or right):
        return x
    xp = array_namespace(x)
    n, c, h, w = x.shape
    out = empty_nchw(xp, (n, c, h + top + bottom, w + left + right), x.dtype, device(x), value)
    out[:, :, top:top + h, left:left + w] = x
    return out


def unpad2d(x, pads: tuple[int, int, int, int]):
    """Inverse of :func:`pad2d`: the interior view."""
    top, bottom, left, right = pads
    if not (top or bottom or left or right):
        return x
    h, w = x.shape[-2], x.shape[-1]
    return x[:, :, top:h - bottom, left:w - right]


PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def check_pad_mode(pads: tuple[int, int, int, int], h: int, w: int, mode: str) -> None:
    """PyTorch's limits for :func:`pad2d_mode`: reflect needs each pad < that size, circular <= it, and
    replicate a non-empty input."""
    for pad, size, axis in ((pads[0], h, "height"), (pads[1], h, "height"), (pads[2], w, "width"),
                            (pads[3], w, "width")):
        if mode == "reflect" and pad >= size:
            raise ValueError(f"padding_mode='reflect': padding {pad} must be less than the input {axis} {size}")
        if mode == "circular" and pad > size:
            raise ValueError(f"padding_mode='circular': padding {pad} must be at most the input {axis} {size}")
        if pad and size == 0:
            raise ValueError(f"padding_mode={mode!r} needs a non-empty input {axis}")


def pad2d_mode(x, pads: tuple[int, int, int, int], mode: str):
    """Pad the last two axes of an NCHW array as ``torch.nn.functional.pad`` with ``mode`` "reflect" (mirror
    without the edge), "replicate" (repeat the edge) or "circular" (wrap around): the input copied into the
    interior, then the border rows (interior columns) and columns (every row) copied from inside the buffer
    by slices and ``flip`` (no ``pad``). Channels-last in memory (:func:`empty_nchw`)."""
    top, bottom, left, right = pads
    xp = array_namespace(x)
    n, c, h, w = x.shape
    check_pad_mode(pads, h, w, mode)
    out = empty_nchw(xp, (n, c, h + top + bottom, w + left + right), x.dtype, device(x))
    out[:, :, top:top + h, left:left + w] = x
    for axis, lo, hi, size in ((2, top, bottom, h), (3, left, right, w)):
        for dst, src, flip in _border_copies(lo, hi, size, mode):
            view = out[_key(axis, src, left, w)]
            out[_key(axis, dst, left, w)] = xp.flip(view, axis=axis) if flip else view
    return out


def pad2d_mode_backward(g, pads: tuple[int, int, int, int], mode: str):
    """The adjoint of :func:`pad2d_mode`: each border's gradient added onto the elements it copies (columns
    first, then rows: the forward's copies in reverse), then the interior. Slice additions only (no scatter);
    updates ``g`` in place (the caller's own fresh gradient) and returns the interior view."""
    top, bottom, left, right = pads
    xp = array_namespace(g)
    h, w = g.shape[2] - top - bottom, g.shape[3] - left - right
    for axis, lo, hi, size in ((3, left, right, w), (2, top, bottom, h)):
        for dst, src, flip in _border_copies(lo, hi, size, mode):
            part = g[_key(axis, dst, left, w)]
            part = xp.flip(part, axis=axis) if flip else part
            if mode == "replicate":  # the whole border copies the edge: its gradients sum onto it
                part = xp.sum(part, axis=axis, keepdims=True)
            g[_key(axis, src, left, w)] += part
    return g[:, :, top:top + h, left:left + w]


def _border_copies(lo: int, hi: int, size: int, mode: str) -> list[tuple[slice, slice, bool]]:
    """``(dst, src, flip)`` along one padded axis (positions in the padded buffer): the border ``dst`` is
    ``src``, reversed where ``flip``; ``src`` lies in the interior ``[lo, lo + size)``, never in a border."""
    end = lo + size
    copies = []
    if mode == "reflect":
        copies = [(slice(0, lo), slice(lo + 1, 2 * lo + 1), True),
                  (slice(end, end + hi), slice(end - 1 - hi, end - 1), True)]
    elif mode == "replicate":
        copies = [(slice(0, lo), slice(lo, lo + 1), False), (slice(end, end + hi), slice(end - 1, end), False)]
    elif mode == "circular":
        copies = [(slice(0, lo), slice(size, size + lo), False), (slice(end, end + hi), slice(lo, lo + hi), False)]
    return [(d, s, f) for d, s, f in copies if d.stop > d.start]


def _key(axis: int, sl: slice, left: int, w: int) -> tuple:
    """The index of rows ``sl`` over the interior columns (axis 2), or of columns ``sl`` over every row (3)."""
    return (slice(None), slice(None), sl, slice(left, left + w)) if axis == 2 else (slice(None),) * 3 + (sl,)


def window_key(i: int, j: int, stride: tuple[int, int], dilation: tuple[int, int], oh: int, ow: int) -> tuple:
    """The NCHW index of every output position's input at kernel offset ``(i, j)`` (``(N, C, oh, ow)`` elements).

    The stop is exactly one past the last element read, never past the end.
    """
    hi, wj = i * dilation[0], j * dilation[1]
    return (slice(None), slice(None), slice(hi, hi + stride[0] * (oh - 1) + 1, stride[0]),
            slice(wj, wj + stride[1] * (ow - 1) + 1, stride[1]))


def window(xpad, i: int, j: int, stride: tuple[int, int], dilation: tuple[int, int], oh: int, ow: int):
    """The strided slice of every output position at kernel offset ``(i, j)``: ``(N, C, oh, ow)``."""
    return xpad[window_key(i, j, stride, dilation, oh, ow)]


def rows_sum(xp, m, group: int):
    """``sum(m, axis=0)`` of a 2-D ``(R, F)`` array, ``group`` dividing R, by summing ``(R/group, group*F)`` rows
    first: NumPy reduces over axis 0 with an inner loop of length F, much slower for small F than with
    ``group*F`` (docs/measurements.md). Any namespace (a reshape that copies is only slower)."""
    r, f = m.shape
    if group <= 1 or r % group:
        return xp.sum(m, axis=0)
    part = xp.sum(xp.reshape(m, (r // group, group * f)), axis=0)
    return xp.sum(xp.reshape(part, (group, f)), axis=0)


def add_rows_bias(xp, m, bias, group: int):
    """``m + bias`` for a 2-D ``(R, F)`` array that the caller owns (updated in place where the namespace
    allows; use the result), as ``(R/group, group*F) + tile(bias, group)``: long inner loops (see
    :func:`rows_sum`)."""
    r, f = m.shape
    if group <= 1 or r % group:
        m += bias
        return m
    v = xp.reshape(m, (r // group, group * f))
    v += xp.tile(bias, (group,))
    return xp.reshape(v, (r, f))


CONSTANTS = 64  # arrays kept by constant() (all dropped when full)
_constants: dict = {}


def constant(xp, value, dtype, dev):
    """``asarray(value, dtype, device)`` for a number or nested tuples, kept for the next call asking for the same
    value, dtype and device: a step's constants without a creation (a launch on a GPU) per call. Read only."""
    key = (xp.__name__, dev, dtype, value)
    try:
        a = _constants.get(key)
    except TypeError:  # an unhashable device or dtype
        key = (xp.__name__, str(dev), str(dtype), value)
        a = _constants.get(key)
    if a is None:
        if len(_constants) >= CONSTANTS:
            _constants.clear()
        a = _constants[key] = xp.asarray(value, dtype=dtype, device=dev)
    return a


def where_zero(mask, a):
    """``where(mask, a, 0)``, through the namespace's faster exact kernel where one is registered."""
    xp = array_namespace(a)
    fast = kernels.get("where_zero", xp)
    if fast is not None:
        return fast(mask, a)
    return xp.where(mask, a, constant(xp, 0, a.dtype, device(a)))
