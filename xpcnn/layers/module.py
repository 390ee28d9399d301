"""Module and Parameter: the stateful wrappers around the functional ops.

A module owns named parameters and buffers on one :class:`~xpcnn.backend.Backend`.
Its ``forward`` caches what ``backward`` needs; ``backward`` returns the gradient
w.r.t. the input and accumulates parameter gradients into ``Parameter.grad``.
Parameters are drawn on the host (NumPy, float64) and then copied to the device
once, so the same seed gives the same weights on every backend.
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from ..backend import Backend, get_backend
from ..functional._util import is_int


class Parameter:
    """A trainable array and its accumulated gradient (both arrays of the module's backend)."""

    __slots__ = ("data", "grad")

    def __init__(self, data: Any, grad: Any = None):
        self.data = data
        self.grad = grad

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    def __repr__(self) -> str:
        return f"Parameter(shape={self.shape}, dtype={self.data.dtype})"


class Module:
    """Base class: parameters and buffers by name, forward/backward, train/eval, moving between backends."""

    can_skip_input_grad = False  # True where ``backward(dy, input_grad=False)`` skips the input gradient
    batched_ndim: int | None = None  # the rank of a batch, where the layer also takes one sample of one axis less

    def __init__(self) -> None:
        self.training = True
        self.backend: Backend | None = None
        self.path = ""  # the module's name inside its model ("3", "block.0"), used in error messages
        self._param_names: tuple[str, ...] = ()
        self._buffer_names: tuple[str, ...] = ()

    # -- what subclasses provide ----------------------------------------
    def init_parameters(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Host (NumPy) initial values of the parameters, drawn from ``rng``."""
        return {}

    def init_buffers(self) -> dict[str, np.ndarray]:
        """Host initial values of the buffers (state that is saved but not trained)."""
        return {}

    def children(self) -> list[tuple[str, "Module"]]:
        return []

    def forward(self, x):
        raise NotImplementedError

    def backward(self, dy):
        raise NotImplementedError

    def extra_repr(self) -> str:
        return ""

    # -- binding and moving ---------------------------------------------
    def bind(self, backend: Backend, rng: np.random.Generator) -> "Module":
        """Create parameters (from ``rng``) and buffers on ``backend``; recurse into children."""
        self.backend = backend
        params = self.init_parameters(rng)
        self._param_names = tuple(params)
        for name, host in params.items():
            data = backend.asarray(host)
            setattr(self, name, Parameter(data, backend.zeros(data.shape)))
        buffers = self.init_buffers()
        self._buffer_names = tuple(buffers)
        for name, host in buffers.items():
            setattr(self, name, backend.asarray(host))
        for name, child in self.children():
            child.path = f"{self.path}.{name}" if self.path else name
            child.bind(backend, rng)
        return self

    def to(self, backend: "str | Backend", device: Any = None) -> "Module":
        """Move parameters, gradients and buffers to another backend/device (same dtype); returns self."""
        dtype = self.backend.dtype_name if self.backend is not None else None
        target = get_backend(backend, dtype, device)
        if self.backend is None:
            return self.bind(target, np.random.default_rng(0))
        for m in self.modules():
            for name in m._param_names:
                p = getattr(m, name)
                p.data = target.asarray(p.data)
                p.grad = None if p.grad is None else target.asarray(p.grad)
            for name in m._buffer_names:
                setattr(m, name, target.asarray(getattr(m, name)))
            m.backend = target
            m.clear_cache()
        return self

    def clear_cache(self) -> None:
        """Drop what forward kept for backward (frees device memory)."""
        for key in [k for k in vars(self) if k.startswith("_ctx")]:
            setattr(self, key, None)

    def __getstate__(self) -> dict[str, Any]:
        """Pickling and ``copy.deepcopy`` leave out what forward kept for backward (as PyTorch leaves out its
        graph)."""
        return {k: (None if k.startswith("_ctx") else v) for k, v in vars(self).items()}

    # -- traversal ------------------------------------------------------
    def modules(self) -> Iterator["Module"]:
        yield self
        for _, child in self.children():
            yield from child.modules()

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        for name in self._param_names:
            yield prefix + name, getattr(self, name)
        for cname, child in self.children():
            yield from child.named_parameters(f"{prefix}{cname}.")

    def parameters(self) -> list[Parameter]:
        return [p for _, p in self.named_parameters()]

    def named_buffers(self, prefix: str = "") -> Iterator[tuple[str, Any]]:
        for name in self._buffer_names:
            yield prefix + name, getattr(self, name)
        for cname, child in self.children():
            yield from child.named_buffers(f"{prefix}{cname}.")

    def _entries(self, prefix: str = "") -> Iterator[tuple[str, "Module", str, bool]]:
        """``(key, module, attribute, is_parameter)`` for every parameter and buffer, in state_dict order."""
        for name in self._param_names:
            yield prefix + name, self, name, True
        for name in self._buffer_names:
            yield prefix + name, self, name, False
        for cname, child in self.children():
            yield from child._entries(f"{prefix}{cname}.")

    def state_dict(self) -> dict[str, Any]:
        """Name -> array (parameters, then buffers, module by module): PyTorch's names and order."""
        return {key: getattr(m, attr).data if is_param else getattr(m, attr)
                for key, m, attr, is_param in self._entries()}

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> "Module":
        """Copy arrays (NumPy or any backend) into this module's parameters and buffers."""
        if not isinstance(state, dict):
            raise TypeError(f"load_state_dict expects a dict of name -> array, got {type(state).__name__}")
        entries = list(self._entries())
        keys = {key for key, *_ in entries}
        missing = [key for key, *_ in entries if key not in state]
        unexpected = [key for key in state if key not in keys]
        if strict and (missing or unexpected):
            raise ValueError(f"load_state_dict: missing keys {missing}, unexpected keys {unexpected}")
        for key, m, attr, is_param in entries:
            current = getattr(m, attr).data if is_param else getattr(m, attr)
            if key in state and tuple(state[key].shape) != tuple(current.shape):
                raise ValueError(f"load_state_dict: {key!r} has shape {tuple(state[key].shape)}, "
                                 f"the model expects {tuple(current.shape)}")
        for key, m, attr, is_param in entries:
            if key not in state:
                continue
            current = getattr(m, attr).data if is_param else getattr(m, attr)
            value = m.backend.asarray(state[key], dtype=current.dtype, copy=True)
            if is_param:
                getattr(m, attr).data = value
            else:
                setattr(m, attr, value)
        return self

    def zero_grad(self) -> None:
        with self.backend.activate():
            for p in self.parameters():
                if p.grad is None:
                    p.grad = self.backend.zeros(p.data.shape)
                else:
                    p.grad[...] = 0

    def train(self, mode: bool = True) -> "Module":
        for m in self.modules():
            m.training = mode
        return self

    def eval(self) -> "Module":
        return self.train(False)

    # -- calling --------------------------------------------------------
    def __call__(self, x):
        return self.forward(x)

    def label(self) -> str:
        """How error messages name this layer: ``layer '3' Conv2d(...)``."""
        return f"layer {self.path!r} {self!r}" if self.path else repr(self)

    def check_input(self, x, ndim: int | tuple[int, ...] | None = None, channels: int | None = None,
                    layout: str = "") -> None:
        """Raise a clear error unless ``x`` is on this layer's backend, in its dtype, of the right shape."""
        b = self.backend
        if b is None:
            raise RuntimeError(f"{self.label()} has no backend yet: put it in a Sequential or call .to('numpy')")
        if not b.owns(x):
            raise ValueError(f"{self.label()}: input is a {b.describe(x)}, but the layer is on {b.spec}; "
                             f"move the model with model.to(...) or pass the input through the model "
                             f"(which moves NumPy arrays to its device)")
        if x.dtype != b.dtype:
            raise TypeError(f"{self.label()}: expected a {b.dtype_name} input, got {x.dtype}")
        if ndim is not None:
            ndims = (ndim,) if isinstance(ndim, int) else ndim
            if x.ndim not in ndims:
                raise ValueError(f"{self.label()}: expected a {' or '.join(f'{d}-D' for d in ndims)} input "
                                 f"{layout}, got shape {tuple(x.shape)}")
        if channels is not None and x.shape[1] != channels:
            raise ValueError(f"{self.label()}: expected {channels} input channels (axis 1), got {x.shape[1]} "
                             f"(input shape {tuple(x.shape)})")

    def check_batch_input(self, x, channels: int | None = None, layout: str = ""):
        """:meth:`check_input` for a layer that takes a batch of :attr:`batched_ndim` axes or, as PyTorch, one
        unbatched sample of one axis less; returns ``x`` as a batch (a batch axis of one added to a sample).
        Call :meth:`batch_axis_out` on what forward returns and backward returns, :meth:`batch_axis_grad` on the
        gradient backward gets."""
        nd = self.batched_ndim
        self.check_input(x, (nd - 1, nd), None, f"{layout} or one sample {layout.replace('N, ', '')}")
        self._ctx_single = single = x.ndim == nd - 1
        if single:
            x = self.backend.xp.expand_dims(x, axis=0)
        if channels is not None and x.shape[1] != channels:
            raise ValueError(f"{self.label()}: expected {channels} input channels (axis {1 - single}), got "
                             f"{x.shape[1]} (input shape {tuple(x.shape)[single:]})")
        return x

    def batch_axis_out(self, a):
        """``a`` without the batch axis :meth:`check_batch_input` added (unchanged for a batch)."""
        return a[0, ...] if getattr(self, "_ctx_single", False) else a

    def batch_axis_grad(self, dy):
        """The gradient of an unbatched forward's output as a batch of one (unchanged for a batch)."""
        return self.backend.xp.expand_dims(dy, axis=0) if getattr(self, "_ctx_single", False) else dy

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"


def check_positive_int(value: Any, name: str, owner: str) -> int:
    if not is_int(value):
        raise TypeError(f"{owner}: {name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{owner}: {name} must be >= 1, got {value}")
    return int(value)


def check_factory_kwargs(owner: str, device: Any = None, dtype: Any = None) -> None:
    """PyTorch's per-layer ``device=`` and ``dtype=``: accepted as None; xpcnn places a whole model at once."""
    for name, value in (("device", device), ("dtype", dtype)):
        if value is not None:
            raise ValueError(f"{owner}: {name}={value!r} per layer is not supported: xpcnn puts the whole model on "
                             f"one device and dtype, Sequential(..., backend=..., dtype=...)")


def input_grad_of(input_grad: bool, need_dx: bool | None, owner: str) -> bool:
    """``backward``'s ``input_grad``, or its name of before the redesign, ``need_dx`` (warns)."""
    if need_dx is None:
        return input_grad
    import warnings
    warnings.warn(f"{owner}.backward(need_dx=...) is now input_grad=...", DeprecationWarning, stacklevel=3)
    return bool(need_dx)
