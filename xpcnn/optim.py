"""Optimizers with PyTorch's update rules: SGD (momentum, dampening, Nesterov, weight decay), Adam, AdamW.

State (momentum buffers, moments) is created on the parameters' device and
follows them: after ``model.to(...)`` the next ``step()`` moves it along.

Parameters, gradients and state live in one flat buffer per namespace, device and dtype
(:mod:`xpcnn.flat_params`), so a step is a handful of array operations over all parameters at once
(elementwise the same arithmetic as one parameter at a time: the same results). ``optimizer.flat_grads()``
gives the flat gradient buffers (for a gradient all-reduce).
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Iterable

from array_api_compat import array_namespace, device

from .backend import as_numpy, asarray_like, device_context, to_numpy
from .errors import InputTypeError, InputValueError
from .flat_params import FlatGroup, FlatParameters
from .layers.module import Parameter


def hyperparameter(owner, name: str, value, minimum: float | None = 0.0, below: float | None = None) -> float:
    """``value`` as a float; refused (naming ``owner`` and ``name``) unless a finite real in [minimum, below)."""
    who = type(owner).__name__
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputTypeError(f"{who}: {name} must be a number, got {type(value).__name__}")
    v = float(value)
    if not (math.isfinite(v) and (minimum is None or v >= minimum) and (below is None or v < below)):
        where = "" if minimum is None and below is None else \
            f" >= {minimum:g}" if below is None else f" in [{minimum:g}, {below:g})"
        raise InputValueError(f"{who}: {name} must be a finite number{where}, got {value}")
    return v


class Optimizer:
    """Base: a list of parameters, per-parameter state, ``zero_grad`` and ``step``."""

    def __init__(self, params: Iterable[Parameter], lr: float):
        self.params = list(params)
        if not self.params:
            raise InputValueError(f"{type(self).__name__}: got an empty parameter list")
        for p in self.params:
            if not isinstance(p, Parameter):
                raise InputTypeError(f"{type(self).__name__}: expected xpcnn Parameters (model.parameters()), "
                                     f"got {type(p).__name__}")
        self.lr = hyperparameter(self, "lr", lr)
        self.state: list[dict[str, Any]] = [{} for _ in self.params]
        self.steps = 0
        self.flat = FlatParameters(self.params, self.state)
        self.flat.groups()  # Parameter.data and .grad become views into the flat buffers now

    def flat_grads(self) -> list:
        """The flat gradient buffer of each group of parameters (one for a model on one device, dtype): every
        ``Parameter.grad`` is a view into it, so reducing it in place (an MPI all-reduce) reduces them all."""
        return self.flat.flat_grads()

    def zero_grad(self) -> None:
        if any(p.grad is None for p in self.params):  # as PyTorch: parameters without a gradient keep none
            for p in self.params:
                if p.grad is not None:
                    with device_context(p.grad):
                        p.grad[...] = 0
            return
        for g in self.flat.groups():
            with device_context(g.grad):
                g.grad[...] = 0

    def _buffer(self, i: int, name: str):
        """State ``name`` of parameter ``i``: created as zeros, moved if the parameter moved."""
        p, st = self.params[i], self.state[i]
        buf = st.get(name)
        xp = array_namespace(p.data)
        if buf is None:
            buf = st[name] = xp.zeros(p.data.shape, dtype=p.data.dtype, device=device(p.data))
        elif array_namespace(buf) is not xp or device(buf) != device(p.data):
            buf = st[name] = _move_like(buf, p.data)
        return buf

    def step(self) -> None:
        self.steps += 1
        if any(p.grad is None for p in self.params):  # as PyTorch: parameters without a gradient are skipped
            for i, p in enumerate(self.params):
                if p.grad is not None:
                    with device_context(p.data):  # CuPy: the parameter's GPU, not the current one
                        self._update(i, p.data, p.grad, lambda name, i=i: self._buffer(i, name))
            return
        for g in self.flat.groups():
            with device_context(g.data):
                self._update_group(g)

    def _update_group(self, g: FlatGroup) -> None:
        """One update of every parameter of ``g`` over its flat buffers."""
        self._update(g.indices[0], g.data, g.grad, lambda name: self.flat.flat_state(g, name),
                     lambda name: all(name in self.state[i] for i in g.indices))

    def _update(self, i: int, data, grad, buffer, has=None) -> None:
        """Update ``data`` in place from ``grad``; ``buffer(name)``: the state ``name`` (zeros when new);
        ``has(name)``: whether that state existed (default: in parameter ``i``'s state)."""
        raise NotImplementedError

    def _has(self, i: int, has, name: str) -> bool:
        return has(name) if has is not None else name in self.state[i]

    # -- checkpoints ----------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """``{"steps": int, "lr": float, "state": {"<index>.<name>": host array}}``."""
        return {"steps": self.steps, "lr": self.lr,
                "state": {f"{i}.{k}": to_numpy(v) for i, st in enumerate(self.state) for k, v in st.items()}}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.steps = int(sd["steps"])
        self.lr = float(sd.get("lr", self.lr))
        for st in self.state:  # in place: the flat parameters share these dicts
            st.clear()
        for key, value in sd["state"].items():
            i, name = key.split(".", 1)
            i = int(i)
            if not 0 <= i < len(self.params) or tuple(value.shape) != self.params[i].shape:
                raise InputValueError(f"optimizer state {key!r} does not match the parameters "
                                      f"(shape {tuple(value.shape)})")
            self.state[i][name] = _move_like(value, self.params[i].data)


def _move_like(a, ref):
    """State ``a`` (any backend) as an array on ``ref``'s device, in ``ref``'s dtype."""
    return asarray_like(as_numpy(a), ref, ref.dtype)


class SGD(Optimizer):
    """Stochastic gradient descent, PyTorch's rule: ``buf = m*buf + (1-dampening)*g``; Nesterov optional."""

    def __init__(self, params, lr: float = 0.01, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False):
        super().__init__(params, lr)
        self.momentum, self.weight_decay = hyperparameter(self, "momentum", momentum), \
            hyperparameter(self, "weight_decay", weight_decay)
        self.dampening = hyperparameter(self, "dampening", dampening, minimum=None)
        if nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise InputValueError("SGD: Nesterov momentum needs momentum > 0 and dampening = 0")
        self.nesterov = bool(nesterov)

    def _update(self, i, data, grad, buffer, has=None):
        g = grad
        if self.weight_decay:
            g = g + self.weight_decay * data
        if self.momentum:
            first = not self._has(i, has, "momentum_buffer")
            buf = buffer("momentum_buffer")
            if first:
                buf[...] = g
            else:
                buf *= self.momentum
                buf += (1.0 - self.dampening) * g
            g = g + self.momentum * buf if self.nesterov else buf
        data -= self.lr * g


class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction; ``weight_decay`` adds L2 to the gradient (as in PyTorch)."""

    decoupled = False

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(params, lr)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise InputValueError(f"{type(self).__name__}: betas must be a pair of numbers, got {betas!r}")
        self.betas = tuple(hyperparameter(self, f"betas[{i}]", b, below=1.0) for i, b in enumerate(betas))
        self.eps, self.weight_decay = hyperparameter(self, "eps", eps), \
            hyperparameter(self, "weight_decay", weight_decay)

    def _update(self, i, data, grad, buffer, has=None):
        b1, b2 = self.betas
        g = grad
        if self.weight_decay:
            if self.decoupled:
                data *= 1.0 - self.lr * self.weight_decay
            else:
                g = g + self.weight_decay * data
        m, v = buffer("exp_avg"), buffer("exp_avg_sq")
        m *= b1
        m += (1.0 - b1) * g
        v *= b2
        v += (1.0 - b2) * (g * g)
        xp = array_namespace(data)
        t = self.steps
        step_size = self.lr / (1.0 - b1 ** t)
        denom = xp.sqrt(v) / math.sqrt(1.0 - b2 ** t) + self.eps
        data -= step_size * (m / denom)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter); default ``weight_decay=0.01`` as in PyTorch."""

    decoupled = True

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.01):
        super().__init__(params, lr, betas, eps, weight_decay)
