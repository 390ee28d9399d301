"""Element-wise activations, dropout and (log-)softmax, with their backward passes.

Backward functions take what the forward saved: the output for relu, sigmoid
and tanh (cheapest to keep), the input for leaky_relu, the mask for dropout.
"""
from __future__ import annotations

from array_api_compat import array_namespace, device

from .. import kernels
from ._util import constant, where_zero


def relu(x):
    xp = array_namespace(x)
    fast = kernels.get("relu", xp)
    if fast is not None:
        return fast(x)
    return xp.maximum(x, constant(xp, 0, x.dtype, device(x)))


def relu_backward(dy, y):
    """``dy`` where the output ``y`` is positive, else 0 (also for inf or NaN in ``dy``, as PyTorch)."""
    fast = kernels.get("relu_backward", array_namespace(dy))
    if fast is not None:
        return fast(dy, y)
    return where_zero(y > 0, dy)


def leaky_relu(x, negative_slope: float = 0.01):
    xp = array_namespace(x)
    return xp.where(x > 0, x, x * negative_slope)


def leaky_relu_backward(dy, x, negative_slope: float = 0.01):
    xp = array_namespace(dy)
    return xp.where(x > 0, dy, dy * negative_slope)


def sigmoid(x):
    """Numerically stable logistic function (no overflow for large ``|x|``)."""
    xp = array_namespace(x)
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1 / (1 + e), e / (1 + e))


def sigmoid_backward(dy, y):
    return dy * y * (1 - y)


def tanh(x):
    return array_namespace(x).tanh(x)


def tanh_backward(dy, y):
    return dy * (1 - y * y)


def dropout(x, p: float, keep):
    """Inverted dropout: ``keep`` is a boolean mask; kept values are scaled by ``1/(1-p)``."""
    xp = array_namespace(x)
    return xp.where(keep, x * (1.0 / (1.0 - p)), constant(xp, 0, x.dtype, device(x)))


def dropout_backward(dy, p: float, keep):
    return dropout(dy, p, keep)


def log_softmax(x, axis: int = -1):
    """``x - logsumexp(x)``, shifted by the max for stability."""
    xp = array_namespace(x)
    shifted = x - xp.max(x, axis=axis, keepdims=True)
    return shifted - xp.log(xp.sum(xp.exp(shifted), axis=axis, keepdims=True))


def log_softmax_backward(dy, y, axis: int = -1):
    """``y`` is the log_softmax output."""
    xp = array_namespace(dy)
    return dy - xp.exp(y) * xp.sum(dy, axis=axis, keepdims=True)


def softmax(x, axis: int = -1):
    xp = array_namespace(x)
    e = xp.exp(x - xp.max(x, axis=axis, keepdims=True))
    return e / xp.sum(e, axis=axis, keepdims=True)


def softmax_backward(dy, y, axis: int = -1):
    """``y`` is the softmax output."""
    xp = array_namespace(dy)
    return y * (dy - xp.sum(dy * y, axis=axis, keepdims=True))
