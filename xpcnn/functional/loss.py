"""Losses as in PyTorch: cross-entropy from logits (class indices or class probabilities, class weights,
ignored targets, label smoothing, any number of positions per sample) and MSE, each with a reduction.

Both cross-entropy target kinds reduce to one form: per position, ``loss = -sum_c q_c * log p_c`` for a target
weighting ``q`` (the one-hot label or the probabilities, smoothed, times the class weights), whose gradient
w.r.t. the logits is ``p * sum_c q_c - q``.
"""
from __future__ import annotations

import math

from array_api_compat import array_namespace, device

from ._util import constant
from .activation import log_softmax

REDUCTIONS = ("mean", "sum", "none")


def _label_mask(labels, num_classes: int):
    """``(N,) int -> (N, C)`` bool, True at each row's label, by comparison (no scatter)."""
    xp = array_namespace(labels)
    classes = constant(xp, (tuple(range(num_classes)),), labels.dtype, device(labels))
    return xp.reshape(labels, (-1, 1)) == classes


def one_hot(labels, num_classes: int, dtype):
    """``(N, *d) int -> (N, C, *d)`` of 0/1 in ``dtype``, by comparison (no scatter); a label outside
    ``[0, C)`` gives a row of zeros."""
    xp = array_namespace(labels)
    if labels.ndim == 1:
        return xp.astype(_label_mask(labels, num_classes), dtype)
    classes = constant(xp, (tuple(range(num_classes)),), labels.dtype, device(labels))  # kept: no arange a call
    classes = xp.reshape(classes, (1, num_classes) + (1,) * (labels.ndim - 1))
    return xp.astype(xp.expand_dims(labels, axis=1) == classes, dtype)


def _per_class(xp, v, ndim: int):
    """A ``(C,)`` vector shaped to broadcast along axis 1 of an ``ndim``-D array."""
    return xp.reshape(v, (1, v.shape[0]) + (1,) * (ndim - 2))


def cross_entropy_forward(logits, target, weight=None, reduction: str = "mean", ignore_index: int | None = -100,
                          label_smoothing: float = 0.0):
    """PyTorch's ``cross_entropy`` of ``logits (N, C, *d)``. Returns ``(loss, ctx)``.

    ``target``: class indices ``(N, *d)`` (integer), or class probabilities of the logits' shape (floating).
    ``weight``: ``(C,)`` class weights or None. ``ignore_index``: the class index whose positions count for
    nothing (indices only; None: no target is ignored, the caller knows, and no mask is made). ``mean`` divides by
    the summed weights of the targets that count (their number without weights); for probabilities, by the number
    of positions. ``label_smoothing`` mixes each target with the uniform distribution.
    """
    xp = array_namespace(logits)
    dt, dev = logits.dtype, device(logits)
    c, nd = logits.shape[1], logits.ndim
    ls = float(label_smoothing)
    logp = log_softmax(logits, axis=1)
    w = None if weight is None else _per_class(xp, weight, nd)
    if target.ndim == nd:  # class probabilities (of the logits' shape: PyTorch's rule)
        q = target if not ls else target * (1.0 - ls) + ls / c
        if w is not None:
            q = q * w
        per, qsum = -xp.sum(logp * q, axis=1), xp.sum(q, axis=1)
        denom = math.prod(per.shape)
    else:  # class indices
        q = one_hot(target, c, dt)  # zero where the target is ignored (made so below for an in-range ignore_index)
        valid = keep = None  # keep: the positions that count, as a bool mask; valid: as 0/1 in dt
        if ignore_index is not None:
            keep = target != ignore_index
            valid = xp.astype(keep, dt)
            if 0 <= ignore_index < c:
                q = q * xp.expand_dims(valid, axis=1)
        zero = constant(xp, 0, dt, dev)
        # pick log p[target] with where, not logp * q: -inf * 0 would be NaN for huge logit gaps
        picked = xp.where(q > 0, logp, zero)
        if w is None and not ls and reduction != "none":  # the common case: one reduction, no per-position loss
            denom = math.prod(picked.shape) // c if valid is None else xp.sum(valid)
            loss = -xp.sum(picked)
            return (loss / denom if reduction == "mean" else loss), (logp, q, valid, reduction, denom)
        per = -xp.sum(picked, axis=1)
        qsum = valid  # sum_c q: 1 where the target counts (None: everywhere)
        if w is not None:
            q = q * w
            qsum = xp.sum(q, axis=1)  # the target's class weight, 0 where ignored
            per = per * qsum
        denom = math.prod(per.shape) if qsum is None else xp.sum(qsum)
        if ls:
            smooth = -xp.sum(logp if w is None else logp * w, axis=1)
            if keep is not None:
                smooth = xp.where(keep, smooth, zero)
            per = (1.0 - ls) * per + (ls / c) * smooth
            u = ls / c if w is None else (ls / c) * w
            if valid is not None:
                u = u * xp.expand_dims(valid, axis=1)
            q = (1.0 - ls) * q + u
            if w is not None:  # (without weights sum_c q is unchanged: 1 where the target counts)
                qsum = (1.0 - ls) * qsum + (ls / c) * xp.sum(weight) * (1.0 if valid is None else valid)
    if reduction == "none":
        loss = per
    else:
        loss = xp.sum(per)
        if reduction == "mean":
            loss = loss / denom
    return loss, (logp, q, qsum, reduction, denom)


def cross_entropy_backward(ctx, dloss=1.0):
    """Gradient w.r.t. the logits: ``(softmax * sum_c q - q)`` times ``dloss`` (divided by the mean's
    denominator; for ``reduction="none"`` ``dloss`` has the loss's shape)."""
    logp, q, qsum, reduction, denom = ctx
    xp = array_namespace(logp)
    p = xp.exp(logp)
    g = p - q if qsum is None else p * xp.expand_dims(qsum, axis=1) - q
    if reduction == "none":
        return g * (xp.expand_dims(dloss, axis=1) if hasattr(dloss, "ndim") and dloss.ndim else dloss)
    if reduction == "mean":
        if isinstance(denom, int):
            return g * (dloss / max(1, denom))  # an empty batch: an empty gradient
        one = xp.ones((), dtype=g.dtype, device=device(g))
        return g * (dloss / xp.where(denom == 0, one, denom))  # nothing counts: g is 0, and so the gradient
    return g * dloss


def mse_forward(pred, target, reduction: str = "mean"):
    """Squared error, reduced by ``"mean"`` over all elements, ``"sum"`` or ``"none"``. Returns ``(loss, ctx)``."""
    xp = array_namespace(pred)
    diff = pred - target
    sq = diff * diff
    if reduction == "none":
        return sq, (diff, reduction)
    loss = xp.sum(sq)
    return (loss / math.prod(diff.shape) if reduction == "mean" else loss), (diff, reduction)


def mse_backward(ctx, dloss=1.0):
    """Gradient w.r.t. the prediction (``dloss`` of the loss's shape for ``reduction="none"``)."""
    diff, reduction = ctx
    if reduction == "mean":
        return diff * (2.0 * dloss / max(1, math.prod(diff.shape)))
    return diff * (2.0 * dloss)
