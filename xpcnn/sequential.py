"""Sequential: a stack of layers bound to one backend, with forward and backward passes."""
from __future__ import annotations

from typing import Any

import numpy as np

from . import threads
from .backend import Backend, get_backend
from .layers.activation import ReLU
from .layers.module import Module
from .layers.pool import MaxPool2d


class Sequential(Module):
    """Layers applied in order, all on one backend and dtype.

    ``Sequential(*layers, backend="numpy", dtype="float32", seed=0)`` draws every
    parameter from ``numpy.random.default_rng(seed)`` on the host, then copies it
    to the backend's device: the same seed gives the same weights everywhere.
    NumPy inputs are moved to the model's device (and cast to its dtype) by
    ``forward``/``backward``; arrays of another backend or device are an error.
    """

    def __init__(self, *layers: Module, backend: "str | Backend" = "numpy", dtype: str | None = None,
                 seed: int = 0, device: Any = None):
        super().__init__()
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"Sequential: argument {i} is a {type(layer).__name__}, not an xpcnn layer")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"Sequential: seed must be an int, got {seed!r}")
        self.layers = list(layers)
        self.seed = int(seed)
        self.bind(get_backend(backend, dtype, device), np.random.default_rng(self.seed))

    def children(self) -> list[tuple[str, Module]]:
        return [(str(i), layer) for i, layer in enumerate(self.layers)]

    def __getitem__(self, i: int) -> Module:
        return self.layers[i]

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    @property
    def dtype(self) -> str:
        return self.backend.dtype_name

    def _accept(self, a, what: str):
        """NumPy/list data is moved here and cast to the model dtype; backend arrays are checked by the layers."""
        if isinstance(a, (np.ndarray, np.generic, list, tuple)):
            host = np.asarray(a)
            if host.dtype.kind not in "fiub":
                raise TypeError(f"model {what} must be numeric, got dtype {host.dtype}")
            return self.backend.asarray(host, dtype=self.backend.dtype)
        if not _is_array(a):
            raise TypeError(f"model {what} must be an array (NumPy, or one of the model's backend), "
                            f"got {type(a).__name__}")
        if self.backend is not None and not self.backend.owns(a):
            raise ValueError(f"model {what} is a {self.backend.describe(a)}, but the model is on "
                             f"{self.backend.spec}: pass a NumPy array (moved to the model's device "
                             f"automatically) or model.backend.asarray(x), or move the model with model.to(...)")
        return a

    def forward(self, x):
        """Run every layer; returns an array of the model's backend (on NumPy with more than one worker thread
        the ops split over threads, :mod:`xpcnn.threads`). A Sequential nested in a model (in a ``Residual``, or
        as a layer) runs only its layers: moving the input and the threads are the outermost model's."""
        if self.path:  # nested: the model it is part of set its name
            return self._forward_layers(x)
        x = self._accept(x, "input")
        self.backend.start_step()  # NumPy: keep freed memory for the next step (xpcnn.malloc)
        self._ctx_ready = False
        with self.backend.activate():  # CuPy: allocate on the model's GPU, not the current one
            y = self._forward_layers(x)
        # the output's shape, for the gradient's check (a last layer may return (y, indices), as PyTorch's pools)
        self._ctx_ready, self._out_shape = True, tuple((y[0] if isinstance(y, tuple) else y).shape)
        return y

    def _forward_layers(self, x):
        with threads.step(self.backend.xp):
            for i in self.run_order():
                x = self.layers[i].forward(x)
        return x

    reorder_relu_pool = True  # False: run the layers exactly in the order given

    def run_order(self) -> list[int]:
        """Layer indices in the order ``forward`` runs them (``backward`` runs the reverse): as given, except that
        a ReLU directly followed by a MaxPool2d runs after it. Max pooling commutes with ReLU (the same values,
        and the same gradients: ReLU's is zero wherever the two orders route differently), and ReLU then works on
        the pooled array, a quarter of the size (faster steps, less memory: docs/measurements.md)."""
        order, i, n = [], 0, len(self.layers)
        while i < n:
            if (self.reorder_relu_pool and i + 1 < n and type(self.layers[i]) is ReLU
                    and type(self.layers[i + 1]) is MaxPool2d and not self.layers[i + 1].return_indices):
                order += [i + 1, i]
                i += 2
            else:
                order.append(i)
                i += 1
        return order

    def backward(self, dy, input_grad: bool = True):
        """Back-propagate ``dy`` (gradient w.r.t. the output); returns the gradient w.r.t. the input.

        ``input_grad=False`` (a training step, where nothing uses it; PyTorch does not compute it either)
        skips that gradient and returns None: parameter-free layers in front of the first layer with
        parameters are not back-propagated at all, and that layer skips its input gradient where it can.
        Parameter gradients are the same either way. What forward kept for backward is freed as the
        pass goes (as PyTorch frees its graph), so each backward needs its own forward.
        """
        if self.path:  # nested (see forward)
            return self._backward_layers(dy, input_grad)
        if not getattr(self, "_ctx_ready", False):
            raise RuntimeError("Sequential.backward() needs a forward() first: the state forward keeps for "
                               "backward is freed by each backward (as PyTorch frees its graph)")
        dy = self._accept(dy, "gradient")
        if self.layers:
            self.layers[-1].check_input(dy)
        if tuple(dy.shape) != self._out_shape:
            raise ValueError(f"Sequential.backward: gradient of shape {tuple(dy.shape)} does not match the output "
                             f"{self._out_shape}")
        with self.backend.activate():
            dx = self._backward_layers(dy, input_grad)
        self._ctx_ready = False
        return dx

    def _backward_layers(self, dy, input_grad: bool):
        stop = 0
        if not input_grad:
            stop = next((i for i, m in enumerate(self.layers) if m.parameters()), len(self.layers))
        with threads.step(self.backend.xp):
            for i in reversed([i for i in self.run_order() if i >= stop]):  # a reordered pair never spans stop
                layer = self.layers[i]
                if i == stop and not input_grad:
                    if layer.can_skip_input_grad:
                        layer.backward(dy, input_grad=False)
                    else:
                        layer.backward(dy)
                    dy = None
                else:
                    dy = layer.backward(dy)
                layer.clear_cache()  # free what forward kept, as PyTorch frees its graph: a lower peak
            for layer in self.layers[:stop]:
                layer.clear_cache()
        return None if not input_grad else dy

    def extra_repr(self) -> str:
        inner = "".join(f"\n  ({i}): " + repr(layer).replace("\n", "\n  ") for i, layer in enumerate(self.layers))
        if self.path:  # nested: the model's own line names the backend
            return f"{inner}\n"
        return f"{inner}\n  backend={self.backend.spec!r}, dtype={self.dtype!r}\n" if self.backend else inner

    def __repr__(self) -> str:
        return f"Sequential({self.extra_repr()})"

    def num_parameters(self) -> int:
        return sum(int(np.prod(p.shape)) for p in self.parameters())


def _is_array(a) -> bool:
    from array_api_compat import array_namespace

    try:
        array_namespace(a)
    except TypeError:
        return False
    return True
