"""Batch normalisation layers with running statistics, as in PyTorch."""
from __future__ import annotations

import numbers

import numpy as np

from .. import functional as F
from .module import Module, check_factory_kwargs, check_positive_int


class _BatchNorm(Module):
    _ndim: tuple[int, ...] = (4,)
    _layout = "(N, C, H, W)"

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, device=None, dtype=None):
        super().__init__()
        name = type(self).__name__
        self.num_features = check_positive_int(num_features, "num_features", name)
        check_factory_kwargs(name, device, dtype)
        if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not eps > 0:
            raise ValueError(f"{name}: eps must be a number > 0, got {eps!r}")
        if momentum is not None and (isinstance(momentum, bool) or not isinstance(momentum, numbers.Real)
                                     or not 0 <= momentum <= 1):
            raise ValueError(f"{name}: momentum must be a number in [0, 1] or None (a cumulative average), "
                             f"got {momentum!r}")
        self.eps, self.momentum = float(eps), None if momentum is None else float(momentum)
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
        update = self.training and self.track_running_stats
        use_batch = self.training or not self.track_running_stats
        w = self.weight.data if self.affine else None
        b = self.bias.data if self.affine else None
        rm = getattr(self, "running_mean", None)
        rv = getattr(self, "running_var", None)
        momentum = self.momentum
        if update:
            batches = self.num_batches_tracked + 1
            if momentum is None:  # the cumulative average: the n-th batch weighs 1/n (on the device: no sync)
                momentum = 1.0 / self.backend.xp.astype(batches, x.dtype)
        try:
            y, rm, rv, self._ctx = F.batch_norm_forward(x, w, b, rm, rv, use_batch, momentum, self.eps)
        except ValueError as e:
            raise ValueError(f"{self.label()}: {e}") from None
        if update:
            self.running_mean, self.running_var = rm, rv
            self.num_batches_tracked = batches
        return y

    def backward(self, dy):
        dx, dw, db = F.batch_norm_backward(dy, self._ctx)
        if self.affine:
            self.weight.grad += dw
            self.bias.grad += db
        return dx

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")


class BatchNorm2d(_BatchNorm):
    """Per-channel normalisation of ``(N, C, H, W)`` over N, H and W."""


class BatchNorm1d(_BatchNorm):
    """Per-feature normalisation of ``(N, C)`` over N, or of ``(N, C, L)`` over N and L."""
    _ndim = (2, 3)
    _layout = "(N, C) or (N, C, L)"
