"""NumPy-only kernels (selected by :func:`xpcnn.kernels.get` when the arrays are NumPy arrays)."""
from __future__ import annotations

import numpy as np


def accumulate(dst: np.ndarray, key, src) -> None:
    """``dst[key] += src`` with a single write.

    NumPy runs ``dst[key] += src`` as getitem, in-place add on the view, then setitem copying the
    view onto itself: a second full pass. Adding into the view is enough.
    """
    view = dst[key]
    np.add(view, src, out=view)


def relu_backward(dy: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``where(y > 0, dy, 0)`` exactly, 5x faster: NumPy's ``where`` (and every masked copy) runs at a
    fraction of the speed of a plain multiply. ``dy * (y > 0)`` equals it unless ``dy`` holds inf or
    NaN where ``y <= 0`` (0 * inf = NaN, where PyTorch and the portable path give 0): one reduction
    detects that and falls back to ``where``.
    """
    with np.errstate(invalid="ignore", over="ignore"):  # 0 * inf; a huge sum: both only send us to ``where``
        out = np.multiply(dy, y > 0, dtype=dy.dtype)
        finite = np.isfinite(np.add.reduce(out, axis=None))
    if not finite:
        return np.where(y > 0, dy, np.zeros((), dtype=dy.dtype))
    return out


KERNELS = {"accumulate": accumulate, "relu_backward": relu_backward}
