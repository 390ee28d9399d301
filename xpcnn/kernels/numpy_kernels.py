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


KERNELS = {"accumulate": accumulate}
