"""Pooling layers: MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, AdaptiveMaxPool2d (and GlobalAvgPool2d), with
PyTorch's options in its positional order."""
from __future__ import annotations

from typing import Any

from .. import functional as F
from ..functional._util import pair
from ..functional.adaptive_pool import adaptive_output_size
from ..functional.pool import check_divisor, pool_geometry
from .module import Module


def _result(layer, y, indices=None):
    """What a pooling layer returns: ``y`` (or ``(y, indices(ctx))``), without the batch axis that an unbatched
    ``(C, H, W)`` input was given."""
    y = layer.batch_axis_out(y)
    return y if indices is None else (y, layer.batch_axis_out(indices(layer._ctx)))


class _Pool2d(Module):
    _backward = None  # the functional backward (a class attribute: tests plant faults there)
    batched_ndim = 4  # (C, H, W): one unbatched image, as PyTorch

    def __init__(self, kernel_size: Any, stride: Any, padding: Any, dilation: Any = 1):
        super().__init__()
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.stride = self.kernel_size if stride is None else pair(stride, "stride")
        self.padding = pair(padding, "padding")
        self.dilation = pair(dilation, "dilation")
        pool_geometry((1, 1, 10 ** 6, 10 ** 6), self.kernel_size, self.stride, self.padding,
                      self.dilation)  # validates options

    def _run(self, fn, x, *options):
        x = self.check_batch_input(x, layout="(N, C, H, W)")
        try:
            return fn(x, self.kernel_size, self.stride, self.padding, *options)
        except ValueError as e:
            raise ValueError(f"{self.label()}: {e}") from None

    def backward(self, dy):
        return self.batch_axis_out(type(self)._backward(self.batch_axis_grad(dy), self._ctx))

    def extra_repr(self) -> str:
        s = f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.ceil_mode:
            s += ", ceil_mode=True"
        return s


class MaxPool2d(_Pool2d):
    """Max pooling; the gradient goes to the first maximum of each window. ``return_indices=True`` returns
    ``(y, indices)`` as PyTorch (flat indices into each input plane, int64)."""
    _backward = staticmethod(F.max_pool2d_backward)

    def __init__(self, kernel_size: Any, stride: Any = None, padding: Any = 0, dilation: Any = 1,
                 return_indices: bool = False, ceil_mode: bool = False):
        super().__init__(kernel_size, stride, padding, dilation)
        self.return_indices = bool(return_indices)
        self.ceil_mode = bool(ceil_mode)

    def forward(self, x):
        y, self._ctx = self._run(F.max_pool2d_forward, x, self.dilation, self.ceil_mode)
        return _result(self, y, F.max_pool2d_indices if self.return_indices else None)

    def extra_repr(self) -> str:
        return super().extra_repr() + (", return_indices=True" if self.return_indices else "")


class AvgPool2d(_Pool2d):
    """Average pooling; by default zero padding counts in the divisor (PyTorch's ``count_include_pad=True``)."""
    _backward = staticmethod(F.avg_pool2d_backward)

    def __init__(self, kernel_size: Any, stride: Any = None, padding: Any = 0, ceil_mode: bool = False,
                 count_include_pad: bool = True, divisor_override: int | None = None):
        super().__init__(kernel_size, stride, padding)
        self.ceil_mode = bool(ceil_mode)
        self.count_include_pad = bool(count_include_pad)
        check_divisor(divisor_override)
        self.divisor_override = divisor_override

    def forward(self, x):
        y, self._ctx = self._run(F.avg_pool2d_forward, x, self.ceil_mode, self.count_include_pad,
                                 self.divisor_override)
        return _result(self, y)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        if not self.count_include_pad:
            s += ", count_include_pad=False"
        if self.divisor_override is not None:
            s += f", divisor_override={self.divisor_override}"
        return s


class _AdaptivePool2d(Module):
    batched_ndim = 4
    def __init__(self, output_size: Any):
        super().__init__()
        try:
            self.output_size = adaptive_output_size(output_size)
        except (TypeError, ValueError) as e:
            raise type(e)(f"{type(self).__name__}: {e}") from None

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


class AdaptiveAvgPool2d(_AdaptivePool2d):
    """Average pooling to a fixed ``output_size`` whatever the input size (a None entry keeps that size)."""

    def __init__(self, output_size: Any = 1):
        super().__init__(output_size)

    def forward(self, x):
        x = self.check_batch_input(x, layout="(N, C, H, W)")
        y, self._ctx = F.adaptive_avg_pool2d_forward(x, self.output_size)
        return _result(self, y)

    def backward(self, dy):
        return self.batch_axis_out(F.adaptive_avg_pool2d_backward(self.batch_axis_grad(dy), self._ctx))


class AdaptiveMaxPool2d(_AdaptivePool2d):
    """Max pooling to a fixed ``output_size`` (PyTorch's bins); ``return_indices=True`` returns ``(y, indices)``."""

    def __init__(self, output_size: Any, return_indices: bool = False):
        super().__init__(output_size)
        self.return_indices = bool(return_indices)

    def forward(self, x):
        x = self.check_batch_input(x, layout="(N, C, H, W)")
        y, self._ctx = F.adaptive_max_pool2d_forward(x, self.output_size)
        return _result(self, y, F.adaptive_max_pool2d_indices if self.return_indices else None)

    def backward(self, dy):
        return self.batch_axis_out(F.adaptive_max_pool2d_backward(self.batch_axis_grad(dy), self._ctx))

    def extra_repr(self) -> str:
        return super().extra_repr() + (", return_indices=True" if self.return_indices else "")


class GlobalAvgPool2d(AdaptiveAvgPool2d):
    """Mean over H and W: ``(N, C, H, W) -> (N, C, 1, 1)``."""

    def __init__(self):
        super().__init__(1)

    def extra_repr(self) -> str:
        return ""
