"""Conv2d: a learnable 2-D convolution (im2col + GEMM)."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import functional as F
from ..functional._util import PADDING_MODES, conv_padding, pad2d_mode, pad2d_mode_backward, pair
from ..functional.conv import conv2d_backward_params
from .module import Module, check_positive_int, input_grad_of


class Conv2d(Module):
    """``Conv2d(in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1, bias=True,
    padding_mode="zeros")``.

    Weight ``(out_channels, in_channels // groups, kh, kw)`` and bias ``(out_channels,)``,
    initialised as PyTorch does (Kaiming-uniform with a=sqrt(5): U(-1/sqrt(fan_in), 1/sqrt(fan_in))).
    ``padding`` is an int, an (h, w) pair, ``"same"`` (stride 1) or ``"valid"``. With ``padding_mode``
    "reflect", "replicate" or "circular" the input is padded as ``torch.nn.functional.pad`` does, then convolved
    unpadded (as PyTorch); the backward folds the border gradients back onto the elements they copy.
    """

    can_skip_input_grad = True
    batched_ndim = 4  # (C, H, W): one unbatched image, as PyTorch

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Any, stride: Any = 1,
                 padding: Any = 0, dilation: Any = 1, groups: int = 1, bias: bool = True, padding_mode: str = "zeros"):
        super().__init__()
        self.in_channels = check_positive_int(in_channels, "in_channels", "Conv2d")
        self.out_channels = check_positive_int(out_channels, "out_channels", "Conv2d")
        self.groups = check_positive_int(groups, "groups", "Conv2d")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"Conv2d: groups={groups} must divide in_channels={in_channels} "
                             f"and out_channels={out_channels}")
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.stride = pair(stride, "stride")
        self.dilation = pair(dilation, "dilation")
        if min(self.kernel_size + self.stride + self.dilation) < 1:
            raise ValueError(f"Conv2d: kernel_size, stride and dilation must be >= 1, got "
                             f"{self.kernel_size}, {self.stride}, {self.dilation}")
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"Conv2d: padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
        self.padding_mode = padding_mode
        pads = conv_padding(padding, self.kernel_size, self.dilation, self.stride)  # validates
        self._mode_pads = pads if padding_mode != "zeros" and any(pads) else None  # padded before the conv
        self.padding = padding if isinstance(padding, str) else pair(padding, "padding")
        self.has_bias = bool(bias)

    def init_parameters(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        kh, kw = self.kernel_size
        fan_in = self.in_channels // self.groups * kh * kw
        bound = 1.0 / math.sqrt(fan_in)
        params = {"weight": rng.uniform(-bound, bound, (self.out_channels, self.in_channels // self.groups, kh, kw))}
        if self.has_bias:
            params["bias"] = rng.uniform(-bound, bound, (self.out_channels,))
        return params

    def forward(self, x):
        x = self.check_batch_input(x, self.in_channels, "(N, C, H, W)")
        padding = self.padding
        try:
            if self._mode_pads is not None:
                x, padding = pad2d_mode(x, self._mode_pads, self.padding_mode), 0
            y, self._ctx = F.conv2d_forward(x, self.weight.data, self.bias.data if self.has_bias else None,
                                            self.stride, padding, self.dilation, self.groups)
        except ValueError as e:
            raise ValueError(f"{self.label()}: {e}") from None
        return self.batch_axis_out(y)

    def backward(self, dy, input_grad: bool = True, *, need_dx: bool | None = None):
        """Accumulate the parameter gradients; return dx (None with ``input_grad=False``: its GEMM is skipped)."""
        input_grad = input_grad_of(input_grad, need_dx, "Conv2d")
        dx, dw, db = conv2d_backward_params(self.batch_axis_grad(dy), self._ctx, input_grad)
        self.weight.grad += dw
        if self.has_bias:
            self.bias.grad += db
        if dx is not None and self._mode_pads is not None:
            dx = pad2d_mode_backward(dx, self._mode_pads, self.padding_mode)
        return dx if dx is None else self.batch_axis_out(dx)

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0, 0):
            s += f", padding={self.padding!r}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if not self.has_bias:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode!r}"
        return s
