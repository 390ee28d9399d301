"""Named model architectures and their natural inputs (:data:`MODEL_INPUTS`), shared by the CLI, the tools and
the tests."""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from .layers import (BatchNorm2d, Conv2d, Dropout, Flatten, Linear, MaxPool2d, ReLU, GlobalAvgPool2d, Residual,
                     ZeroPadShortcut)
from .sequential import Sequential
from .errors import InputValueError


def digits_cnn(in_channels: int = 1, num_classes: int = 10, image_size: int = 8) -> list:
    """A small CNN for 8x8 images (scikit-learn's digits): two 3x3 convs, one pool, two dense layers."""
    side = image_size // 2
    return [Conv2d(in_channels, 16, 3, padding=1), ReLU(),
            Conv2d(16, 32, 3, padding=1), ReLU(), MaxPool2d(2),
            Flatten(), Linear(32 * side * side, 64), ReLU(), Linear(64, num_classes)]


def lenet(in_channels: int = 1, num_classes: int = 10, image_size: int = 28) -> list:
    """LeNet-5 style: conv5(6, pad 2 at 28x28) -> pool -> conv5(16) -> pool -> 120 -> 84 -> classes."""
    pad = 2 if image_size == 28 else 0
    side = ((image_size + 2 * pad - 4) // 2 - 4) // 2
    if side < 1:
        raise InputValueError(f"lenet needs images of at least 28x28 (or 32x32), got {image_size}x{image_size}")
    return [Conv2d(in_channels, 6, 5, padding=pad), ReLU(), MaxPool2d(2),
            Conv2d(6, 16, 5), ReLU(), MaxPool2d(2),
            Flatten(), Linear(16 * side * side, 120), ReLU(), Linear(120, 84), ReLU(), Linear(84, num_classes)]


def vgg_small(in_channels: int = 3, num_classes: int = 10, image_size: int = 32) -> list:
    """VGG-style for 32x32 colour images: three conv-bn-relu pairs of blocks (32, 64, 128), each pooled."""
    if image_size % 8:
        raise InputValueError(f"vgg-small needs an image size divisible by 8, got {image_size}")
    layers: list = []
    c = in_channels
    for width in (32, 64, 128):
        layers += [Conv2d(c, width, 3, padding=1, bias=False), BatchNorm2d(width), ReLU(),
                   Conv2d(width, width, 3, padding=1, bias=False), BatchNorm2d(width), ReLU(), MaxPool2d(2)]
        c = width
    side = image_size // 8
    return layers + [Flatten(), Linear(128 * side * side, 128), ReLU(), Dropout(0.3), Linear(128, num_classes)]


def allcnn_gap(in_channels: int = 3, num_classes: int = 10, image_size: int = 32) -> list:
    """A fully convolutional net ending in global average pooling (any image size >= 8)."""
    return [Conv2d(in_channels, 32, 3, padding=1), BatchNorm2d(32), ReLU(), MaxPool2d(2),
            Conv2d(32, 64, 3, padding=1), BatchNorm2d(64), ReLU(), MaxPool2d(2),
            Conv2d(64, num_classes, 1), GlobalAvgPool2d(), Flatten()]


def basic_block(in_channels: int, channels: int, stride: int = 1) -> list:
    """He et al.'s basic block: conv3x3(stride)-BN-ReLU-conv3x3-BN plus the shortcut, then ReLU after the sum.
    Where the shape changes the shortcut is option A (:class:`~xpcnn.layers.ZeroPadShortcut`, no parameters)."""
    body = Sequential(Conv2d(in_channels, channels, 3, stride, 1, bias=False), BatchNorm2d(channels), ReLU(),
                      Conv2d(channels, channels, 3, 1, 1, bias=False), BatchNorm2d(channels))
    change = stride != 1 or in_channels != channels
    return [Residual(body, ZeroPadShortcut(in_channels, channels, stride) if change else None), ReLU()]


def cifar_resnet(depth: int, in_channels: int = 3, num_classes: int = 10, image_size: int = 32) -> list:
    """The CIFAR ResNet of He et al. (2016, section 4.2): conv3x3(16), three stages of n = (depth - 2) / 6 basic
    blocks with 16, 32 and 64 channels (stride 2 at the start of the second and third), global average pooling,
    linear. 32x32 maps to 32/16/8, 28x28 to 28/14/7."""
    if (depth - 2) % 6 or depth < 8:
        raise InputValueError(f"a CIFAR ResNet's depth is 6n + 2 (20, 32, 44, 56, ...), got {depth}")
    if image_size < 4:
        raise InputValueError(f"resnet{depth} needs images of at least 4x4, got {image_size}x{image_size}")
    n = (depth - 2) // 6
    layers: list = [Conv2d(in_channels, 16, 3, padding=1, bias=False), BatchNorm2d(16), ReLU()]
    c = 16
    for stage, width in enumerate((16, 32, 64)):
        for i in range(n):
            layers += basic_block(c, width, 2 if stage and not i else 1)
            c = width
    return layers + [GlobalAvgPool2d(), Flatten(), Linear(64, num_classes)]


def kaiming_normal(model: Sequential) -> None:
    """Redraw every conv and linear weight from N(0, 2 / fan_in) (He et al. 2015, PyTorch's ``kaiming_normal_``,
    as the PyTorch CIFAR ResNets do), from ``numpy.random.default_rng(model.seed)`` on the host; biases and
    batch norm (weight 1, bias 0) keep their initial values."""
    rng = np.random.default_rng(model.seed)
    for m in model.modules():
        if isinstance(m, (Conv2d, Linear)):
            shape = m.weight.shape
            std = math.sqrt(2.0 / int(np.prod(shape[1:])))
            m.weight.data = m.backend.asarray(rng.normal(0.0, std, shape))


def _resnet(depth: int) -> Callable[..., list]:
    def build(in_channels: int, num_classes: int, image_size: int) -> list:
        return cifar_resnet(depth, in_channels, num_classes, image_size)
    build.__name__ = build.__qualname__ = f"resnet{depth}"
    build.__doc__ = f"ResNet-{depth} for CIFAR-sized images (:func:`cifar_resnet`, n = {(depth - 2) // 6})."
    return build


MODELS: dict[str, Callable[..., list]] = {
    "digits-cnn": digits_cnn,
    "lenet": lenet,
    "vgg-small": vgg_small,
    "allcnn-gap": allcnn_gap,
    "resnet20": _resnet(20),
    "resnet32": _resnet(32),
    "resnet56": _resnet(56),
}
#: ``(in_channels, image_size, num_classes)`` of each named model's natural input (the one table of them: the
#: benchmark, parity and op-count tools and ``benchmarks/`` build their inputs from it; the builders' defaults
#: are the same, tests/test_models.py checks it).
MODEL_INPUTS: dict[str, tuple[int, int, int]] = {
    "digits-cnn": (1, 8, 10),
    "lenet": (1, 28, 10),
    "vgg-small": (3, 32, 10),
    "allcnn-gap": (3, 32, 10),
    "resnet20": (3, 32, 10),
    "resnet32": (3, 32, 10),
    "resnet56": (3, 32, 10),
}
INITS: dict[str, Callable[[Sequential], None]] = dict.fromkeys(("resnet20", "resnet32", "resnet56"), kaiming_normal)


def build_model(name: str, in_channels: int, num_classes: int, image_size: int, **kwargs: Any) -> Sequential:
    """``build_model("lenet", 1, 10, 28, backend="numpy", dtype="float32", seed=0)``."""
    if name not in MODELS:
        raise InputValueError(f"unknown model {name!r}; valid models are {', '.join(MODELS)}")
    model = Sequential(*MODELS[name](in_channels, num_classes, image_size), **kwargs)
    if name in INITS:
        INITS[name](model)
    model.architecture = name  # checkpoints record it, and refuse to load into another architecture
    return model
