"""Activation layers and Dropout."""
from __future__ import annotations

import numbers

from .. import distributed, functional as F
from .module import Module


def _check_inplace(owner: str, inplace) -> bool:
    """PyTorch's ``inplace``: accepted either way; xpcnn never overwrites a layer's input (same values)."""
    if not isinstance(inplace, bool):
        raise TypeError(f"{owner}: inplace must be a bool, got {inplace!r}")
    return inplace


class _OutputActivation(Module):
    """An element-wise activation whose backward needs only its output (kept from forward)."""
    _forward = _backward = None

    def forward(self, x):
        self.check_input(x)
        self._ctx = y = type(self)._forward(x)
        return y

    def backward(self, dy):
        return type(self)._backward(dy, self._ctx)


class ReLU(_OutputActivation):
    """``max(x, 0)``; ``inplace`` as PyTorch's is accepted (the input is kept)."""
    _forward, _backward = staticmethod(F.relu), staticmethod(F.relu_backward)

    def __init__(self, inplace: bool = False):
        super().__init__()
        self.inplace = _check_inplace("ReLU", inplace)


class Sigmoid(_OutputActivation):
    """``1 / (1 + exp(-x))``, computed without overflow."""
    _forward, _backward = staticmethod(F.sigmoid), staticmethod(F.sigmoid_backward)


class Tanh(_OutputActivation):
    """``tanh(x)``."""
    _forward, _backward = staticmethod(F.tanh), staticmethod(F.tanh_backward)


class LeakyReLU(Module):
    """``x`` where positive, ``negative_slope * x`` elsewhere (backward needs the input)."""
    def __init__(self, negative_slope: float = 0.01, inplace: bool = False):
        super().__init__()
        self.negative_slope = float(negative_slope)
        self.inplace = _check_inplace("LeakyReLU", inplace)

    def forward(self, x):
        self.check_input(x)
        self._ctx = x
        return F.leaky_relu(x, self.negative_slope)

    def backward(self, dy):
        return F.leaky_relu_backward(dy, self._ctx, self.negative_slope)

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}"


class Dropout(Module):
    """Inverted dropout: zero each value with probability ``p`` in training, identity in eval.

    Masks come from a generator seeded from the model's seed, on the device
    (CuPy draws on the GPU; other backends draw on the host and copy).
    """

    def __init__(self, p: float = 0.5, inplace: bool = False):
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p!r}")
        self.p = float(p)
        self.inplace = _check_inplace("Dropout", inplace)
        self._seed = 0
        self._random = self._random_backend = None

    def bind(self, backend, rng):
        self._seed = int(rng.integers(2 ** 63))
        self._random = None
        return super().bind(backend, rng)

    def __getstate__(self):
        """A copy continues the mask stream where this one stands (the generator itself lives on the device)."""
        state = dict(super().__getstate__(), _random=None, _random_backend=None)
        if self._random is not None:
            state["_random_state"] = self._random.state_dict()
        return state

    def source(self):
        """The layer's generator of uniform draws (created on first use, on the layer's device)."""
        if self._random is None or self._random_backend is not self.backend:
            self._random, self._random_backend = self.backend.uniform_source(self._seed), self.backend
            saved = self.__dict__.pop("_random_state", None)
            if saved is not None and saved.get("kind") == self._random.state_dict()["kind"]:
                self._random.load_state_dict(saved)
        return self._random

    def forward(self, x):
        self.check_input(x)
        if not self.training or self.p == 0.0:
            self._ctx = None
            return x
        n = x.shape[0] if x.ndim else 1
        start, total = distributed.batch_rows(n)
        if total == n:
            draws = self.source()(tuple(x.shape))
        else:  # this rank's rows of the global batch's mask (xpcnn.distributed)
            draws = self.source()((total,) + tuple(x.shape[1:]))[start:start + n, ...]
        self._ctx = keep = draws >= self.p
        return F.dropout(x, self.p, keep)

    def backward(self, dy):
        return dy if self._ctx is None else F.dropout_backward(dy, self.p, self._ctx)

    def extra_repr(self) -> str:
        return f"p={self.p}"
