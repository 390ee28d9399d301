"""Layers: stateful modules around the functional ops."""
from .activation import Dropout, LeakyReLU, ReLU, Sigmoid, Tanh
from .conv import Conv2d
from .linear import Flatten, Linear
from .loss import CrossEntropyLoss, MSELoss
from .module import Module, Parameter
from .norm import BatchNorm1d, BatchNorm2d
from .pool import AdaptiveAvgPool2d, AdaptiveMaxPool2d, AvgPool2d, GlobalAvgPool2d, MaxPool2d
from .residual import Residual, ZeroPadShortcut

__all__ = ["AdaptiveAvgPool2d", "AdaptiveMaxPool2d", "AvgPool2d", "BatchNorm1d", "BatchNorm2d", "Conv2d",
           "CrossEntropyLoss", "Dropout", "Flatten", "GlobalAvgPool2d", "LeakyReLU", "Linear", "MaxPool2d", "Module", "MSELoss", "Parameter",
           "ReLU", "Residual", "Sigmoid", "Tanh", "ZeroPadShortcut"]
