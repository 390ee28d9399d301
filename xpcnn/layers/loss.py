"""Loss functions as objects: ``loss = loss_fn(pred, target)``, then ``dpred = loss_fn.backward()``."""
from __future__ import annotations

from typing import Any

import numpy as np
from array_api_compat import array_namespace, device, is_numpy_array

from .. import functional as F
from .. import config
from ..backend import asarray_like, device_context


def _to_device_of(a: Any, ref):
    """Host data (NumPy, lists) -> an array on ``ref``'s namespace and device.

    Floating host data takes ``ref``'s dtype: a float64 NumPy target must not leak float64 onto the
    device (a float32-only device cannot even hold it). Integer data (labels) keeps its dtype.
    """
    if isinstance(a, (np.ndarray, list, tuple)) and not is_numpy_array(ref):
        host = np.asarray(a)
        return asarray_like(host, ref, ref.dtype if host.dtype.kind == "f" else None)
    if isinstance(a, (list, tuple)):  # NumPy predictions: lists as arrays too, as on every other backend
        return np.asarray(a)
    return a


def _check_pred(name: str, pred, ndim: int | None = None):
    try:
        xp = array_namespace(pred)
    except TypeError:
        raise TypeError(f"{name}: predictions must be an array, got {type(pred).__name__}") from None
    if not xp.isdtype(pred.dtype, "real floating"):
        raise TypeError(f"{name}: predictions must be floating point, got {pred.dtype}")
    if ndim is not None and pred.ndim != ndim:
        raise ValueError(f"{name}: expected logits of shape (N, classes), got shape {tuple(pred.shape)}")
    return xp


class CrossEntropyLoss:
    """Mean cross-entropy of logits ``(N, C)`` against integer class labels ``(N,)``.

    Softmax and log-sum-exp happen inside, stably. Labels are checked for dtype
    and shape always, and for range unless ``check_range=False``; by default the
    range check is skipped on GPU arrays, where it would force a device sync.
    """

    def __init__(self, check_range: bool | None = None):
        self.check_range = check_range
        self._ctx = None

    def __call__(self, logits, labels):
        return self.forward(logits, labels)

    def forward(self, logits, labels):
        xp = _check_pred("CrossEntropyLoss", logits, 2)
        host = isinstance(labels, (np.ndarray, list, tuple))
        labels = _to_device_of(labels, logits)
        try:
            lxp = array_namespace(labels)
        except TypeError:
            raise TypeError(f"CrossEntropyLoss: labels must be an integer array, got {type(labels).__name__}") from None
        if lxp is not xp or device(labels) != device(logits):
            raise ValueError(f"CrossEntropyLoss: labels are on {device(labels)} ({lxp.__name__}), "
                             f"logits on {device(logits)} ({xp.__name__}); move them to the same device")
        if not xp.isdtype(labels.dtype, "integral"):
            raise TypeError(f"CrossEntropyLoss: labels must be integer class indices, got dtype {labels.dtype}")
        n, c = logits.shape
        if tuple(labels.shape) != (n,):
            raise ValueError(f"CrossEntropyLoss: expected labels of shape ({n},) for logits {tuple(logits.shape)}, "
                             f"got {tuple(labels.shape)}")
        check = self.check_range
        if check is None:
            check = host or not config.gpu_plan(logits)
        if check and n:
            lo, hi = int(xp.min(labels)), int(xp.max(labels))
            if lo < 0 or hi >= c:
                raise ValueError(f"CrossEntropyLoss: labels must be in [0, {c - 1}] for {c} classes, "
                                 f"got values in [{lo}, {hi}]")
        with device_context(logits):
            loss, self._ctx = F.cross_entropy_forward(logits, labels)
        return loss

    def backward(self, dloss: float = 1.0):
        """Gradient w.r.t. the logits of the last call."""
        if self._ctx is None:
            raise RuntimeError("CrossEntropyLoss.backward() called before the loss was computed")
        with device_context(self._ctx[0]):
            return F.cross_entropy_backward(self._ctx, dloss)


class MSELoss:
    """Mean squared error over all elements."""

    def __init__(self):
        self._ctx = None

    def __call__(self, pred, target):
        return self.forward(pred, target)

    def forward(self, pred, target):
        _check_pred("MSELoss", pred)
        target = _to_device_of(target, pred)
        if tuple(target.shape) != tuple(pred.shape):
            raise ValueError(f"MSELoss: target shape {tuple(target.shape)} differs from prediction shape "
                             f"{tuple(pred.shape)}")
        xp = array_namespace(pred)
        if target.dtype != pred.dtype:
            target = xp.astype(target, pred.dtype)
        with device_context(pred):
            loss, self._ctx = F.mse_forward(pred, target)
        return loss

    def backward(self, dloss: float = 1.0):
        if self._ctx is None:
            raise RuntimeError("MSELoss.backward() called before the loss was computed")
        with device_context(self._ctx):
            return F.mse_backward(self._ctx, dloss)
