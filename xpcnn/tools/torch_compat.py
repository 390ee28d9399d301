"""The equivalent ``torch.nn.Sequential`` of an xpcnn model, for comparisons and checkpoint checks.

PyTorch is optional and never a dependency: this module imports it lazily.
"""
from __future__ import annotations

from typing import Any

from ..backend import to_numpy
from ..sequential import Sequential


def torch_module(layer: Any, torch):
    """The torch.nn module with the same hyper-parameters as one xpcnn layer."""
    nn = torch.nn
    name = type(layer).__name__
    if name == "Conv2d":
        pad = layer.padding
        return nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, pad,
                         layer.dilation, layer.groups, layer.has_bias, layer.padding_mode)
    if name == "Linear":
        return nn.Linear(layer.in_features, layer.out_features, layer.has_bias)
    if name in ("BatchNorm2d", "BatchNorm1d"):
        return getattr(nn, name)(layer.num_features, layer.eps, layer.momentum, layer.affine,
                                 layer.track_running_stats)
    if name == "MaxPool2d":
        return nn.MaxPool2d(layer.kernel_size, layer.stride, layer.padding, layer.dilation, layer.return_indices,
                            layer.ceil_mode)
    if name == "AvgPool2d":
        return nn.AvgPool2d(layer.kernel_size, layer.stride, layer.padding, layer.ceil_mode, layer.count_include_pad,
                            layer.divisor_override)
    if name in ("AdaptiveAvgPool2d", "GlobalAvgPool2d"):
        return nn.AdaptiveAvgPool2d(layer.output_size)
    if name == "AdaptiveMaxPool2d":
        return nn.AdaptiveMaxPool2d(layer.output_size, layer.return_indices)
    if name == "Flatten":
        return nn.Flatten(layer.start_dim, layer.end_dim)
    if name == "LeakyReLU":
        return nn.LeakyReLU(layer.negative_slope, layer.inplace)
    if name == "Dropout":
        return nn.Dropout(layer.p, layer.inplace)
    if name == "ReLU":
        return nn.ReLU(layer.inplace)
    if name in ("Sigmoid", "Tanh"):
        return getattr(nn, name)()
    if name == "Sequential":
        return nn.Sequential(*[torch_module(child, torch) for child in layer])
    if name == "Residual":
        residual, _ = _residual_classes(torch)
        shortcut = None if layer.shortcut is None else torch_module(layer.shortcut, torch)
        return residual(torch_module(layer.body, torch), shortcut)
    if name == "ZeroPadShortcut":
        _, zero_pad = _residual_classes(torch)
        return zero_pad(layer.in_channels, layer.out_channels, layer.stride)
    raise TypeError(f"no torch equivalent for layer {name}")


_CLASSES: dict = {}


def _residual_classes(torch):
    """``(Residual, ZeroPadShortcut)`` as torch.nn.Modules, defined once torch is imported."""
    if not _CLASSES:
        nn, F = torch.nn, torch.nn.functional

        class Residual(nn.Module):
            """``body(x) + shortcut(x)``, the identity where ``shortcut`` is None (no state_dict entries)."""

            def __init__(self, body, shortcut=None):
                super().__init__()
                self.body = body
                if shortcut is not None:
                    self.shortcut = shortcut
                self.has_shortcut = shortcut is not None

            def forward(self, x):
                return self.body(x) + (self.shortcut(x) if self.has_shortcut else x)

        class ZeroPadShortcut(nn.Module):
            """Option A of He et al.: subsample, then zero channels half before and half after."""

            def __init__(self, in_channels, out_channels, stride):
                super().__init__()
                self.before = (out_channels - in_channels) // 2
                self.after = out_channels - in_channels - self.before
                self.stride = stride

            def forward(self, x):
                return F.pad(x[:, :, ::self.stride, ::self.stride], (0, 0, 0, 0, self.before, self.after))

        _CLASSES.update(residual=Residual, zero_pad=ZeroPadShortcut)
    return _CLASSES["residual"], _CLASSES["zero_pad"]


def to_torch(model: Sequential, device: str = "cpu", copy_weights: bool = True):
    """A ``torch.nn.Sequential`` with the same layers (and, by default, the same weights and buffers)."""
    import torch

    net = torch.nn.Sequential(*[torch_module(layer, torch) for layer in model])
    dtype = getattr(torch, model.dtype)
    net = net.to(device=device, dtype=dtype)
    if copy_weights:
        state = {k: torch.from_numpy(to_numpy(v)) for k, v in model.state_dict().items()}
        net.load_state_dict(state, strict=True)
    net.train(model.training)
    return net
