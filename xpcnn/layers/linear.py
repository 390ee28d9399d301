"""Linear (fully connected) and Flatten."""
from __future__ import annotations

import math

import numpy as np

from array_api_compat import device

from .. import functional as F
from ..functional._util import empty_nchw, is_int
from ..functional.linear import linear_backward_params
from .module import Module, check_factory_kwargs, check_positive_int, input_grad_of


class Linear(Module):
    """``y = x @ weight.T + bias``; weight ``(out_features, in_features)``, PyTorch's initialisation.

    Takes ``(N, in_features)``, as PyTorch also ``(in_features,)`` and ``(N, ..., in_features)``."""

    can_skip_input_grad = True
    batched_ndim = 2

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None):
        super().__init__()
        self.in_features = check_positive_int(in_features, "in_features", "Linear")
        self.out_features = check_positive_int(out_features, "out_features", "Linear")
        check_factory_kwargs("Linear", device, dtype)
        self.has_bias = bool(bias)

    def init_parameters(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        bound = 1.0 / math.sqrt(self.in_features)
        params = {"weight": rng.uniform(-bound, bound, (self.out_features, self.in_features))}
        if self.has_bias:
            params["bias"] = rng.uniform(-bound, bound, (self.out_features,))
        return params

    def forward(self, x):
        self.check_input(x)
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            got = x.shape[-1] if x.ndim else "a 0-d input"
            raise ValueError(f"{self.label()}: expected {self.in_features} input features, got {got} (the last "
                             f"axis of input shape {tuple(x.shape)})")
        self._ctx_lead = lead = None if x.ndim == 2 else tuple(x.shape[:-1])  # (features,), (N, ..., features)
        if lead is not None:
            x = self.backend.xp.reshape(x, (math.prod(lead), self.in_features))
        y, self._ctx = F.linear_forward(x, self.weight.data, self.bias.data if self.has_bias else None)
        return y if lead is None else self.backend.xp.reshape(y, lead + (self.out_features,))

    def backward(self, dy, input_grad: bool = True, *, need_dx: bool | None = None):
        """Accumulate the parameter gradients; return dx (None with ``input_grad=False``)."""
        input_grad = input_grad_of(input_grad, need_dx, "Linear")
        lead = self._ctx_lead
        if lead is not None:
            dy = self.backend.xp.reshape(dy, (math.prod(lead), self.out_features))
        if input_grad:
            dx, dw, db = F.linear_backward(dy, self._ctx)
        else:
            dx, (dw, db) = None, linear_backward_params(dy, self._ctx)
        self.weight.grad += dw
        if self.has_bias:
            self.bias.grad += db
        return dx if lead is None or dx is None else self.backend.xp.reshape(dx, lead + (self.in_features,))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.has_bias}"


class Flatten(Module):
    """Axes ``start_dim`` to ``end_dim`` (negative: from the end) as one, as PyTorch: ``(N, C, H, W) -> (N, C*H*W)``
    by default."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1):
        super().__init__()
        for name, v in (("start_dim", start_dim), ("end_dim", end_dim)):
            if not is_int(v):
                raise TypeError(f"Flatten: {name} must be an int, got {v!r}")
        self.start_dim, self.end_dim = int(start_dim), int(end_dim)

    def forward(self, x):
        self.check_input(x)
        nd = max(1, x.ndim)  # a 0-d array flattens as one axis (as PyTorch)
        start, end = (d + nd if d < 0 else d for d in (self.start_dim, self.end_dim))
        if not (0 <= start < nd and 0 <= end < nd):
            raise ValueError(f"{self.label()}: input of shape {tuple(x.shape)} has no axes {self.start_dim} to "
                             f"{self.end_dim} to flatten (axes in [{-nd}, {nd - 1}])")
        if start > end:
            raise ValueError(f"{self.label()}: start_dim {self.start_dim} comes after end_dim {self.end_dim} for "
                             f"input shape {tuple(x.shape)}")
        self._ctx = tuple(x.shape)
        self._ctx_channels_last = len(self._ctx) == 4 and start == 1 and end == 3
        return F.flatten(x, start, end)

    def backward(self, dy):
        xp = self.backend.xp
        dx = xp.reshape(dy, self._ctx)
        if not self._ctx_channels_last:
            return dx
        out = empty_nchw(xp, self._ctx, dy.dtype, device(dy))  # channels-last memory, as the activations
        out[...] = dx
        return out

    def extra_repr(self) -> str:
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"
