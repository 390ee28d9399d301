"""Named model architectures, shared by the CLI, the benchmark and the tests."""
from __future__ import annotations

from typing import Any, Callable

from .layers import BatchNorm2d, Conv2d, Dropout, Flatten, Linear, MaxPool2d, ReLU, GlobalAvgPool2d
from .model import Sequential
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


MODELS: dict[str, Callable[..., list]] = {
    "digits-cnn": digits_cnn,
    "lenet": lenet,
    "vgg-small": vgg_small,
    "allcnn-gap": allcnn_gap,
}


def build_model(name: str, in_channels: int, num_classes: int, image_size: int, **kwargs: Any) -> Sequential:
    """``build_model("lenet", 1, 10, 28, backend="numpy", dtype="float32", seed=0)``."""
    if name not in MODELS:
        raise InputValueError(f"unknown model {name!r}; valid models are {', '.join(MODELS)}")
    model = Sequential(*MODELS[name](in_channels, num_classes, image_size), **kwargs)
    model.architecture = name  # checkpoints record it, and refuse to load into another architecture
    return model
