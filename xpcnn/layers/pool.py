"""Pooling layers: MaxPool2d, AvgPool2d, AdaptiveAvgPool2d (and GlobalAvgPool2d)."""
from __future__ import annotations

from typing import Any

from .. import functional as F
from ..functional._util import pair
from ..functional.pool import pool_geometry
from .module import Module


class _Pool2d(Module):
    _forward = _backward = None
    batched_ndim = 4  # (C, H, W): one unbatched image, as PyTorch

    def __init__(self, kernel_size: Any, stride: Any = None, padding: Any = 0):
        super().__init__()
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.stride = self.kernel_size if stride is None else pair(stride, "stride")
        self.padding = pair(padding, "padding")
        pool_geometry((1, 1, 10 ** 6, 10 ** 6), self.kernel_size, self.stride, self.padding)  # validates options

    def forward(self, x):
        x = self.check_batch_input(x, layout="(N, C, H, W)")
        try:
            y, self._ctx = type(self)._forward(x, self.kernel_size, self.stride, self.padding)
        except ValueError as e:
            raise ValueError(f"{self.label()}: {e}") from None
        return self.batch_axis_out(y)

    def backward(self, dy):
        return self.batch_axis_out(type(self)._backward(self.batch_axis_grad(dy), self._ctx))

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class MaxPool2d(_Pool2d):
    """Max pooling; the gradient goes to the first maximum of each window."""
    _forward = staticmethod(F.max_pool2d_forward)
    _backward = staticmethod(F.max_pool2d_backward)


class AvgPool2d(_Pool2d):
    """Average pooling (zero padding counts in the divisor, as PyTorch's default)."""
    _forward = staticmethod(F.avg_pool2d_forward)
    _backward = staticmethod(F.avg_pool2d_backward)


class AdaptiveAvgPool2d(Module):
    """Average pooling to a fixed ``output_size`` whatever the input size."""
    batched_ndim = 4

    def __init__(self, output_size: Any = 1):
        super().__init__()
        self.output_size = pair(output_size, "output_size")
        if min(self.output_size) < 1:
            raise ValueError(f"AdaptiveAvgPool2d: output_size must be >= 1, got {output_size}")

    def forward(self, x):
        x = self.check_batch_input(x, layout="(N, C, H, W)")
        y, self._ctx = F.adaptive_avg_pool2d_forward(x, self.output_size)
        return self.batch_axis_out(y)

    def backward(self, dy):
        return self.batch_axis_out(F.adaptive_avg_pool2d_backward(self.batch_axis_grad(dy), self._ctx))

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


class GlobalAvgPool2d(AdaptiveAvgPool2d):
    """Mean over H and W: ``(N, C, H, W) -> (N, C, 1, 1)``."""

    def __init__(self):
        super().__init__(1)

    def extra_repr(self) -> str:
        return ""
