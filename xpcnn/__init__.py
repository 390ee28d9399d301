"""xpcnn: a readable CNN written once against the Python Array API (NumPy on the CPU, CuPy on the GPU)."""
from . import _moved, config, functional, optim
from .backend import Backend, available_backends, get_backend, to_numpy
from .layers import (AdaptiveAvgPool2d, AvgPool2d, BatchNorm1d, BatchNorm2d, Conv2d, CrossEntropyLoss, Dropout,
                     Flatten, GlobalAvgPool2d, LeakyReLU, Linear, MaxPool2d, Module, MSELoss, Parameter, ReLU,
                     Residual, Sigmoid, Tanh, ZeroPadShortcut)
from .layers import AdaptiveMaxPool2d
from .config import set_workspace_limit, using
from .sequential import Sequential
from .checkpoint import load_checkpoint, save_checkpoint
from .data import Augment, DataLoader, Dataset, Normalizer
from .datasets import load_cifar10, load_dataset, load_digits, load_h5, load_idx_dataset
from .models import build_model
from .training import evaluate, fit

__version__ = "0.1.0"

_moved.install()  # the module paths of before the redesign still import (xpcnn._moved)

__all__ = ["AdaptiveAvgPool2d", "AvgPool2d", "Backend", "BatchNorm1d", "BatchNorm2d", "Conv2d", "CrossEntropyLoss",
           "Dropout", "Flatten", "GlobalAvgPool2d", "LeakyReLU", "Linear", "MaxPool2d", "Module", "MSELoss",
           "Parameter", "ReLU", "Sequential", "Sigmoid", "Tanh", "available_backends", "functional", "get_backend",
           "optim", "set_workspace_limit", "to_numpy", "__version__",
           "DataLoader", "Dataset", "Normalizer", "build_model", "evaluate", "fit", "load_checkpoint", "load_cifar10",
           "load_dataset", "load_digits", "load_h5", "load_idx_dataset", "save_checkpoint"]
__all__ += ["AdaptiveMaxPool2d", "Augment", "Residual", "ZeroPadShortcut", "using"]
