"""Loss functions as objects: ``loss = loss_fn(pred, target)``, then ``dpred = loss_fn.backward()``.

The constructors take PyTorch's arguments in PyTorch's order. The deprecated ``size_average`` and ``reduce`` are
mapped to ``reduction`` as PyTorch maps them (with its warning): a model ported from old code computes the same.
"""
from __future__ import annotations

import math
import numbers
import warnings
from typing import Any

import numpy as np
from array_api_compat import array_namespace, device, is_numpy_array

from .. import functional as F
from .. import config
from ..backend import asarray_like, device_context, to_numpy
from ..functional.loss import REDUCTIONS


def _to_device_of(a: Any, ref):
    """Host data (NumPy, lists) -> an array on ``ref``'s namespace and device.

    Floating host data takes ``ref``'s dtype: a float64 NumPy target must not leak float64 onto the
    device (a float32-only device cannot even hold it). Integer data (labels) keeps its dtype.
    """
    if isinstance(a, numbers.Number) and not isinstance(a, bool):  # a scalar target (one unbatched sample)
        a = np.asarray(a)
    if isinstance(a, (np.ndarray, list, tuple)) and not is_numpy_array(ref):
        host = np.asarray(a)
        return asarray_like(host, ref, ref.dtype if host.dtype.kind == "f" else None)
    if isinstance(a, (list, tuple)):  # NumPy predictions: lists as arrays too, as on every other backend
        return np.asarray(a)
    return a


def _check_pred(name: str, pred):
    try:
        xp = array_namespace(pred)
    except TypeError:
        raise TypeError(f"{name}: predictions must be an array, got {type(pred).__name__}") from None
    if not xp.isdtype(pred.dtype, "real floating"):
        raise TypeError(f"{name}: predictions must be floating point, got {pred.dtype}")
    return xp


def _reduction(owner: str, size_average, reduce, reduction) -> str:
    """``reduction`` checked, or what PyTorch makes of the deprecated ``size_average``/``reduce`` when given."""
    if size_average is not None or reduce is not None:
        mean, keep = size_average is None or bool(size_average), reduce is None or bool(reduce)
        reduction = "none" if not keep else ("mean" if mean else "sum")
        warnings.warn(f"{owner}: size_average and reduce are deprecated (as in PyTorch); "
                      f"use reduction={reduction!r} instead", UserWarning, stacklevel=3)
    if reduction not in REDUCTIONS:
        raise ValueError(f"{owner}: reduction must be one of {', '.join(map(repr, REDUCTIONS))}, "
                         f"got {reduction!r}")
    return reduction


def _check_dloss(owner: str, dloss, shape: tuple, single: bool = False):
    """``dloss`` for ``reduction="none"``: a number, or an array of the loss's shape (NumPy data moved with it)."""
    if isinstance(dloss, numbers.Real):
        return dloss
    got = tuple(getattr(dloss, "shape", ()))
    if got != shape[single:]:
        raise ValueError(f"{owner}.backward: dloss of shape {got} does not match the loss {shape[single:]}")
    return dloss


class CrossEntropyLoss:
    """PyTorch's ``CrossEntropyLoss(weight=None, size_average=None, ignore_index=-100, reduce=None,
    reduction="mean", label_smoothing=0.0)`` of logits ``(N, C)``, ``(N, C, d1, ...)`` or one sample ``(C,)``.

    Targets are class indices (integer, ``(N,)``, ``(N, d1, ...)`` or a scalar) or class probabilities (floating,
    the logits' shape). Softmax and log-sum-exp happen inside, stably. Class indices are checked for dtype and
    shape always, and for range unless ``check_range=False``; by default the range check is skipped on GPU arrays,
    where it would force a device sync.
    """

    def __init__(self, weight: Any = None, size_average=None, ignore_index: int = -100, reduce=None,
                 reduction: str = "mean", label_smoothing: float = 0.0, *, check_range: bool | None = None):
        self.reduction = _reduction("CrossEntropyLoss", size_average, reduce, reduction)
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
            raise TypeError(f"CrossEntropyLoss: ignore_index must be an int, got {ignore_index!r}")
        self.ignore_index = int(ignore_index)
        if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, numbers.Real) or not (
                0.0 <= float(label_smoothing) <= 1.0):
            raise ValueError(f"CrossEntropyLoss: label_smoothing must be between 0.0 and 1.0, got {label_smoothing!r}")
        self.label_smoothing = float(label_smoothing)
        self.weight = None if weight is None else self._host_weight(weight)
        self.check_range = check_range
        self._ctx = None
        self._weight_on = None  # (namespace, device, dtype, array): the weight where the last logits were

    @staticmethod
    def _host_weight(weight):
        try:
            w = np.asarray(to_numpy(weight) if not isinstance(weight, (list, tuple)) else weight)
        except (TypeError, ValueError):
            w = None
        if w is None or w.ndim != 1 or w.dtype.kind not in "fiu" or w.size == 0:
            raise ValueError(f"CrossEntropyLoss: weight must be a 1-D array of class weights, got {weight!r}")
        return w.astype(np.float64)

    def _weight_like(self, logits):
        key = (type(logits), device(logits), logits.dtype)
        if self._weight_on is None or self._weight_on[0] != key:
            self._weight_on = (key, asarray_like(self.weight, logits, logits.dtype))
        return self._weight_on[1]

    def __call__(self, logits, target):
        return self.forward(logits, target)

    def forward(self, logits, target):
        xp = _check_pred("CrossEntropyLoss", logits)
        host = isinstance(target, (np.ndarray, list, tuple, numbers.Number))
        target = _to_device_of(target, logits)
        try:
            lxp = array_namespace(target)
        except TypeError:
            raise TypeError(f"CrossEntropyLoss: labels must be an array of class indices or probabilities, "
                            f"got {type(target).__name__}") from None
        if lxp is not xp or device(target) != device(logits):
            raise ValueError(f"CrossEntropyLoss: labels are on {device(target)} ({lxp.__name__}), "
                             f"logits on {device(logits)} ({xp.__name__}); move them to the same device")
        soft = not xp.isdtype(target.dtype, "integral")
        if soft and not xp.isdtype(target.dtype, "real floating"):
            raise TypeError(f"CrossEntropyLoss: labels must be integer class indices or floating class "
                            f"probabilities, got dtype {target.dtype}")
        if logits.ndim == 0:
            raise ValueError("CrossEntropyLoss: expected logits of shape (C,), (N, C) or (N, C, d1, ...), "
                             "got a 0-d array")
        single = logits.ndim == 1  # one unbatched sample: a batch of one inside
        if single:
            logits, target = xp.expand_dims(logits, axis=0), xp.expand_dims(target, axis=0)
        shape, c = tuple(logits.shape), logits.shape[1]
        indices_shape = shape[:1] + shape[2:]
        if soft and tuple(target.shape) == indices_shape != shape:
            raise TypeError(f"CrossEntropyLoss: labels must be integer class indices, got dtype {target.dtype} "
                            f"(floating targets are class probabilities, of the logits' shape {shape[single:]})")
        expected = shape if soft else indices_shape
        if tuple(target.shape) != expected:
            what = "class probabilities" if soft else "labels (class indices)"
            raise ValueError(f"CrossEntropyLoss: expected {what} of shape {expected[single:]} for logits "
                             f"{shape[single:]}, got {tuple(target.shape)[single:]}")
        if soft and target.dtype != logits.dtype:
            target = xp.astype(target, logits.dtype)
        weight = None
        if self.weight is not None:
            if self.weight.shape[0] != c:
                raise ValueError(f"CrossEntropyLoss: weight has {self.weight.shape[0]} entries for {c} classes")
            weight = self._weight_like(logits)
        ignore_index = self.ignore_index
        if soft:
            if ignore_index >= 0:
                raise ValueError(f"CrossEntropyLoss: ignore_index={ignore_index} is not supported for class "
                                 f"probabilities (as in PyTorch)")
            ignore_index = None
        else:
            check = self.check_range
            if check is None:
                check = host or not config.gpu_plan(logits)
            if check and math.prod(target.shape):
                ignore_index = self._check_indices(xp, target, c)
        with device_context(logits):
            loss, ctx = F.cross_entropy_forward(logits, target, weight, self.reduction, ignore_index,
                                                self.label_smoothing)
        self._ctx, self._single = ctx, single
        return loss[0] if single and self.reduction == "none" else loss

    def _check_indices(self, xp, target, c: int):
        """Raise unless every index is a class or ``ignore_index``; return the ``ignore_index`` the op needs:
        None where no target can be ignored (then no mask is made)."""
        lo, hi = int(xp.min(target)), int(xp.max(target))
        ii = self.ignore_index
        if lo >= 0 and hi < c:
            return ii if 0 <= ii < c else None
        if bool(xp.any(((target < 0) | (target >= c)) & (target != ii))):
            raise ValueError(f"CrossEntropyLoss: labels must be in [0, {c - 1}] for {c} classes "
                             f"(or ignore_index={ii}), got values in [{lo}, {hi}]")
        return ii

    def backward(self, dloss: Any = 1.0):
        """Gradient w.r.t. the logits of the last call (``dloss``: of the loss's shape for ``reduction="none"``)."""
        if self._ctx is None:
            raise RuntimeError("CrossEntropyLoss.backward() called before the loss was computed")
        xp = array_namespace(self._ctx[0])
        if self.reduction == "none":
            dloss = _check_dloss("CrossEntropyLoss", dloss, tuple(self._ctx[0].shape[:1] + self._ctx[0].shape[2:]),
                                 self._single)
            if self._single and hasattr(dloss, "ndim"):
                dloss = xp.expand_dims(dloss, axis=0)
        with device_context(self._ctx[0]):
            g = F.cross_entropy_backward(self._ctx, dloss)
        return g[0, ...] if self._single else g

    def __repr__(self) -> str:
        return (f"CrossEntropyLoss(reduction={self.reduction!r}, ignore_index={self.ignore_index}, "
                f"label_smoothing={self.label_smoothing}, weight={None if self.weight is None else 'set'})")


class MSELoss:
    """PyTorch's ``MSELoss(size_average=None, reduce=None, reduction="mean")``: squared error of any shape."""

    def __init__(self, size_average=None, reduce=None, reduction: str = "mean"):
        self.reduction = _reduction("MSELoss", size_average, reduce, reduction)
        self._ctx = None

    def __call__(self, pred, target):
        return self.forward(pred, target)

    def forward(self, pred, target):
        _check_pred("MSELoss", pred)
        target = _to_device_of(target, pred)
        if not hasattr(target, "shape"):
            raise TypeError(f"MSELoss: the target must be an array, got {type(target).__name__}")
        if tuple(target.shape) != tuple(pred.shape):
            raise ValueError(f"MSELoss: target shape {tuple(target.shape)} differs from prediction shape "
                             f"{tuple(pred.shape)}")
        xp = array_namespace(pred)
        if target.dtype != pred.dtype:
            target = xp.astype(target, pred.dtype)
        with device_context(pred):
            loss, self._ctx = F.mse_forward(pred, target, self.reduction)
        return loss

    def backward(self, dloss: Any = 1.0):
        """Gradient w.r.t. the prediction (``dloss``: of the loss's shape for ``reduction="none"``)."""
        if self._ctx is None:
            raise RuntimeError("MSELoss.backward() called before the loss was computed")
        if self.reduction == "none":
            dloss = _check_dloss("MSELoss", dloss, tuple(self._ctx[0].shape))
        with device_context(self._ctx[0]):
            return F.mse_backward(self._ctx, dloss)

    def __repr__(self) -> str:
        return f"MSELoss(reduction={self.reduction!r})"
