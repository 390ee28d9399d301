"""Losses with mean reduction: cross-entropy from logits with integer labels, and MSE."""
from __future__ import annotations

import math

from array_api_compat import array_namespace, device

from .activation import log_softmax


def one_hot(labels, num_classes: int, dtype):
    """``(N,) int -> (N, C)`` of 0/1 in ``dtype``, by comparison (no scatter)."""
    xp = array_namespace(labels)
    classes = xp.arange(num_classes, dtype=labels.dtype, device=device(labels))
    return xp.astype(xp.reshape(labels, (-1, 1)) == xp.reshape(classes, (1, -1)), dtype)


def cross_entropy_forward(logits, labels):
    """Mean of ``-log softmax(logits)[label]``. Returns ``(loss, ctx)``; loss is 0-d."""
    xp = array_namespace(logits)
    logp = log_softmax(logits, axis=1)
    target = one_hot(labels, logits.shape[1], logits.dtype)
    n = logits.shape[0]
    # pick log p[label] with where, not logp * target: -inf * 0 would be NaN for huge logit gaps
    loss = -xp.sum(xp.where(target > 0, logp, xp.zeros((), dtype=logp.dtype, device=device(logp)))) / n
    return loss, (logp, target)


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
