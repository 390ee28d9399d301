"""Losses with mean reduction: cross-entropy from logits with integer labels, and MSE."""
from __future__ import annotations

import math

from array_api_compat import array_namespace, device

from ._util import constant
from .activation import log_softmax


def _label_mask(labels, num_classes: int):
    """``(N,) int -> (N, C)`` bool, True at each row's label, by comparison (no scatter)."""
    xp = array_namespace(labels)
    classes = constant(xp, (tuple(range(num_classes)),), labels.dtype, device(labels))
    return xp.reshape(labels, (-1, 1)) == classes


def one_hot(labels, num_classes: int, dtype):
    """``(N,) int -> (N, C)`` of 0/1 in ``dtype``, by comparison (no scatter)."""
    return array_namespace(labels).astype(_label_mask(labels, num_classes), dtype)


def cross_entropy_forward(logits, labels):
    """Mean of ``-log softmax(logits)[label]``. Returns ``(loss, ctx)``; loss is 0-d."""
    xp = array_namespace(logits)
    logp = log_softmax(logits, axis=1)
    mask = _label_mask(labels, logits.shape[1])
    n = logits.shape[0]
    # pick log p[label] with where, not logp * target: -inf * 0 would be NaN for huge logit gaps
    loss = xp.sum(xp.where(mask, logp, constant(xp, 0, logp.dtype, device(logp)))) / -n  # = -(sum / n), exactly
    return loss, (logp, xp.astype(mask, logits.dtype))


def cross_entropy_backward(ctx, dloss=1.0):
    """Gradient w.r.t. the logits: ``(softmax - one_hot) / N``."""
    logp, target = ctx
    xp = array_namespace(logp)
    return (xp.exp(logp) - target) * (dloss / max(1, logp.shape[0]))  # an empty batch: an empty gradient


def mse_forward(pred, target):
    """Mean squared error over all elements. Returns ``(loss, ctx)``."""
    xp = array_namespace(pred)
    diff = pred - target
    return xp.sum(diff * diff) / math.prod(diff.shape), diff


def mse_backward(ctx, dloss=1.0):
    diff = ctx
    return diff * (2.0 * dloss / max(1, math.prod(diff.shape)))
