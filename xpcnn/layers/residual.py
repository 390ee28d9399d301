"""Residual blocks: ``y = body(x) + shortcut(x)`` (He et al., 2016), and the zero-padded shortcut of their option A.

A block nests inside a :class:`~xpcnn.Sequential` like any layer; its body (and shortcut) is a layer or a
``Sequential`` of layers, named ``body`` and ``shortcut`` in ``state_dict`` as in PyTorch
(``3.body.0.weight``). The ReLU that usually follows the addition is a layer of its own after the block.
"""
from __future__ import annotations

from ..functional._util import empty_nchw
from .module import Module, check_positive_int


def _backward(m, dy):
    dx = m.backward(dy)
    m.clear_cache()  # a nested Sequential has freed its layers' already
    return dx


class Residual(Module):
    """``Residual(body, shortcut=None)``: ``body(x) + shortcut(x)``, the identity where ``shortcut`` is None.

    ``body`` and ``shortcut`` are layers or ``Sequential`` s (e.g. a 1x1 strided ``Conv2d`` and a
    ``BatchNorm2d``, or :class:`ZeroPadShortcut`); both outputs must have the same shape. Backward sends the
    gradient through both branches and sums what reaches the input.
    """

    def __init__(self, body: Module, shortcut: Module | None = None):
        super().__init__()
        for what, m in (("body", body), ("shortcut", shortcut)):
            if m is not None and not isinstance(m, Module):
                raise TypeError(f"Residual: {what} is a {type(m).__name__}, not an xpcnn layer")
        self.body, self.shortcut = body, shortcut

    def children(self) -> list[tuple[str, Module]]:
        return [("body", self.body)] + ([("shortcut", self.shortcut)] if self.shortcut is not None else [])

    def forward(self, x):
        self.check_input(x)
        y = self.body.forward(x)
        s = x if self.shortcut is None else self.shortcut.forward(x)
        if tuple(y.shape) != tuple(s.shape):
            raise ValueError(f"{self.label()}: the body gives shape {tuple(y.shape)} but the shortcut "
                             f"{tuple(s.shape)}; use a shortcut that changes the shape as the body does")
        self._ctx = True
        return y + s

    def backward(self, dy):
        dx = _backward(self.body, dy)
        ds = dy if self.shortcut is None else _backward(self.shortcut, dy)
        self._ctx = None
        return dx + ds

    def label(self) -> str:
        """One line in error messages (the repr spans the whole block)."""
        return f"layer {self.path!r} Residual" if self.path else "Residual"

    def clear_cache(self) -> None:
        super().clear_cache()
        for _, child in self.children():
            for m in child.modules():
                m.clear_cache()

    def __repr__(self) -> str:
        inner = "".join(f"\n  ({name}): {_indent(repr(m))}" for name, m in self.children())
        return f"Residual({inner}\n)"


class ZeroPadShortcut(Module):
    """Option A of He et al.: subsample by ``stride`` and add zero channels, ``in_channels -> out_channels``
    without parameters. The zeros go half before and half after the input's channels, as in the common PyTorch
    CIFAR ResNets (``F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4))``)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 2):
        super().__init__()
        self.in_channels = check_positive_int(in_channels, "in_channels", "ZeroPadShortcut")
        self.out_channels = check_positive_int(out_channels, "out_channels", "ZeroPadShortcut")
        self.stride = check_positive_int(stride, "stride", "ZeroPadShortcut")
        if out_channels < in_channels:
            raise ValueError(f"ZeroPadShortcut: out_channels ({out_channels}) must be >= in_channels "
                             f"({in_channels})")
        self.before = (out_channels - in_channels) // 2  # zero channels in front of the input's

    def forward(self, x):
        self.check_input(x, 4, self.in_channels, "(N, C, H, W)")
        y, self._ctx = zero_pad_shortcut_forward(x, self.out_channels, self.stride, self.before)
        return y

    def backward(self, dy):
        return zero_pad_shortcut_backward(dy, self._ctx)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


def zero_pad_shortcut_forward(x, out_channels: int, stride: int, before: int):
    """``y[:, before:before + C] = x[:, :, ::stride, ::stride]``, zeros elsewhere; returns ``(y, ctx)``."""
    from array_api_compat import array_namespace, device

    xp = array_namespace(x)
    n, c, h, w = x.shape
    sub = x[:, :, ::stride, ::stride]
    y = empty_nchw(xp, (n, out_channels, sub.shape[2], sub.shape[3]), x.dtype, device(x), 0)
    y[:, before:before + c, :, :] = sub
    return y, (tuple(x.shape), stride, before)


def zero_pad_shortcut_backward(dy, ctx):
    """The gradient w.r.t. the input: ``dy``'s input channels put back at the subsampled positions."""
    from array_api_compat import array_namespace, device

    (n, c, h, w), stride, before = ctx
    xp = array_namespace(dy)
    dx = empty_nchw(xp, (n, c, h, w), dy.dtype, device(dy), 0)
    dx[:, :, ::stride, ::stride] = dy[:, before:before + c, :, :]
    return dx


def _indent(text: str) -> str:
    return text.replace("\n", "\n  ")
