"""Linear (fully connected) and Flatten."""
from __future__ import annotations

import math

import numpy as np

from array_api_compat import device

from .. import functional as F
from ..functional._util import empty_nchw
from ..functional.linear import linear_backward_params
from .module import Module, check_positive_int


class Linear(Module):
    """``y = x @ weight.T + bias``; weight ``(out_features, in_features)``, PyTorch's initialisation."""

    can_skip_input_grad = True

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features = check_positive_int(in_features, "in_features", "Linear")
        self.out_features = check_positive_int(out_features, "out_features", "Linear")
        self.has_bias = bool(bias)

    def init_parameters(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        bound = 1.0 / math.sqrt(self.in_features)
        params = {"weight": rng.uniform(-bound, bound, (self.out_features, self.in_features))}
        if self.has_bias:
            params["bias"] = rng.uniform(-bound, bound, (self.out_features,))
        return params

    def forward(self, x):
        self.check_input(x, 2, layout="(N, features)")
        if x.shape[1] != self.in_features:
            raise ValueError(f"{self.label()}: expected {self.in_features} input features, got {x.shape[1]} "
                             f"(input shape {tuple(x.shape)})")
        y, self._ctx = F.linear_forward(x, self.weight.data, self.bias.data if self.has_bias else None)
        return y

    def backward(self, dy, need_dx: bool = True):
        """Accumulate the parameter gradients; return dx (None with ``need_dx=False``)."""
        if need_dx:
            dx, dw, db = F.linear_backward(dy, self._ctx)
        else:
            dx, (dw, db) = None, linear_backward_params(dy, self._ctx)
        self.weight.grad += dw
        if self.has_bias:
            self.bias.grad += db
        return dx

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.has_bias}"


class Flatten(Module):
    """``(N, C, H, W) -> (N, C*H*W)`` (from ``start_dim``, default 1)."""

    def __init__(self, start_dim: int = 1):
        super().__init__()
        self.start_dim = start_dim

    def forward(self, x):
        self.check_input(x)
        if x.ndim <= self.start_dim:
            raise ValueError(f"{self.label()}: input of shape {tuple(x.shape)} has no axis {self.start_dim} to flatten")
        self._ctx = tuple(x.shape)
        return F.flatten(x, self.start_dim)

    def backward(self, dy):
        xp = self.backend.xp
        dx = xp.reshape(dy, self._ctx)
        if len(self._ctx) != 4 or self.start_dim != 1:
            return dx
        out = empty_nchw(xp, self._ctx, dy.dtype, device(dy))  # channels-last memory, as the activations
        out[...] = dx
        return out
