"""The equivalent ``torch.nn.Sequential`` of an xpcnn model, for comparisons and checkpoint checks.

PyTorch is optional and never a dependency: this module imports it lazily.
"""
from __future__ import annotations

from typing import Any

from .backend import to_numpy
from .model import Sequential


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
    raise TypeError(f"no torch equivalent for layer {name}")


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
