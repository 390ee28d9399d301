"""Batch normalisation layers with running statistics, as in PyTorch."""
from __future__ import annotations

import numpy as np

from .. import functional as F
from .module import Module, check_positive_int


class _BatchNorm(Module):
    _ndim = 4
    _layout = "(N, C, H, W)"

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True,
                 track_running_stats: bool = True):
        super().__init__()
        self.num_features = check_positive_int(num_features, "num_features", type(self).__name__)
        self.eps, self.momentum = float(eps), float(momentum)
        self.affine, self.track_running_stats = bool(affine), bool(track_running_stats)

    def init_parameters(self, rng):
        if not self.affine:
            return {}
        return {"weight": np.ones(self.num_features), "bias": np.zeros(self.num_features)}

    def init_buffers(self):
        if not self.track_running_stats:
            return {}
        return {"running_mean": np.zeros(self.num_features), "running_var": np.ones(self.num_features),
                "num_batches_tracked": np.zeros((), dtype=np.int64)}

    def bind(self, backend, rng):
        super().bind(backend, rng)
        if self.track_running_stats:  # int64 where the device has it (PyTorch's dtype), else its index dtype
            self.num_batches_tracked = backend.zeros((), dtype=backend.index_dtype)
        return self

    def forward(self, x):
        self.check_input(x, self._ndim, self.num_features, self._layout)
        use_batch = self.training or not self.track_running_stats
        w = self.weight.data if self.affine else None
        b = self.bias.data if self.affine else None
        rm = getattr(self, "running_mean", None)
        rv = getattr(self, "running_var", None)
        try:
            y, rm, rv, self._ctx = F.batch_norm_forward(x, w, b, rm, rv, use_batch, self.momentum, self.eps)
        except ValueError as e:
            raise ValueError(f"{self.label()}: {e}") from None
        if self.training and self.track_running_stats:
            self.running_mean, self.running_var = rm, rv
            self.num_batches_tracked = self.num_batches_tracked + 1
        return y

    def backward(self, dy):
        dx, dw, db = F.batch_norm_backward(dy, self._ctx)
        if self.affine:
            self.weight.grad += dw
            self.bias.grad += db
        return dx

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}"


class BatchNorm2d(_BatchNorm):
    """Per-channel normalisation of ``(N, C, H, W)`` over N, H and W."""


class BatchNorm1d(_BatchNorm):
    """Per-feature normalisation of ``(N, C)`` over N."""
    _ndim = 2
    _layout = "(N, features)"
