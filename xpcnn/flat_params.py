"""Parameters and gradients as views into one flat buffer per namespace, device and dtype.

An optimizer then updates every parameter with a handful of array operations over the flat buffers, not a
handful per parameter (as PyTorch's foreach/fused optimizers and Apex's flat buffers do): on a GPU each
operation is a kernel launch. ``Parameter.data`` and ``.grad`` become reshaped slices of ``FlatGroup.data``
and ``FlatGroup.grad``; in-place updates of either side are seen by the other.

Anything that replaces an array instead of writing into it (``model.to(...)``, ``load_state_dict``, a
checkpoint load, ``p.grad = ...``) breaks a view; :meth:`FlatParameters.groups` notices (an identity check per
parameter, no array operation) and flattens again from the parameters' current values, so they stay the truth.
``FlatGroup.grad`` is the one flat gradient buffer a gradient all-reduce works on.

Building an optimizer rebinds ``Parameter.data``/``.grad`` (as Apex's flat buffers do): an array taken from a
Parameter before that is a copy, no longer the parameter. Two optimizers over the same parameters work, but
each step re-flattens for the other (one optimizer per parameter set is the fast way).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
from array_api_compat import array_namespace, device

from .backend import as_numpy, asarray_like, device_context


class FlatGroup:
    """Parameters ``indices`` (of one namespace, device, dtype) and their flat ``data``, ``grad`` and ``state``."""

    def __init__(self, params: list, indices: list[int]):
        self.indices = indices
        ref = params[indices[0]].data
        self.xp, self.device, self.dtype = array_namespace(ref), device(ref), ref.dtype
        sizes = [math.prod(params[i].shape) for i in indices]
        self.offsets = [sum(sizes[:k]) for k in range(len(sizes) + 1)]
        self.state: dict[str, Any] = {}  # name -> flat buffer, parameter views in the optimizer's per-index state
        self.state_views: dict[str, list] = {}
        with device_context(ref):
            self.data = self._flatten([params[i].data for i in indices])
            self.grad = self._flatten([params[i].grad for i in indices])
        self.data_views = self.views(self.data, params)
        self.grad_views = self.views(self.grad, params)
        for i, d, g in zip(indices, self.data_views, self.grad_views):
            params[i].data, params[i].grad = d, g

    def _flatten(self, arrays: list):
        """One new flat buffer holding ``arrays`` (None: zeros) in order."""
        xp = self.xp
        flat = xp.zeros((self.offsets[-1],), dtype=self.dtype, device=self.device)
        for k, a in enumerate(arrays):
            if a is not None:
                flat[self.offsets[k]:self.offsets[k + 1]] = xp.reshape(a, (-1,))
        return flat

    def views(self, flat, params: list) -> list:
        """Each parameter's slice of ``flat``, in its shape."""
        return [self.xp.reshape(flat[self.offsets[k]:self.offsets[k + 1]], params[i].shape)
                for k, i in enumerate(self.indices)]

    def intact(self, params: list) -> bool:
        """Every parameter's data and grad are still this group's views (the same objects)."""
        return all(params[i].data is d and params[i].grad is g
                   for i, d, g in zip(self.indices, self.data_views, self.grad_views))


def _key(a) -> tuple:
    return (array_namespace(a).__name__, str(device(a)), str(a.dtype))


class FlatParameters:
    """The parameters of an optimizer as :class:`FlatGroup` s (one per namespace, device, dtype), kept current.

    ``groups()`` returns the groups, flattened again first where a parameter's data or grad was replaced (its
    current values kept, the optimizer state moved along, per parameter).
    """

    def __init__(self, params: list, state: list[dict]):
        self.params, self.state = params, state  # state: the optimizer's per-parameter dicts (views into flat)
        self._groups: list[FlatGroup] = []

    def __getstate__(self) -> dict:
        """A copy (``copy.deepcopy``, pickle) flattens again on first use: the groups hold their namespace."""
        return dict(self.__dict__, _groups=[])

    def groups(self) -> list[FlatGroup]:
        """The groups, flattened again from the parameters' current values where one was replaced (missing
        gradients become zeros)."""
        if not self._groups or not all(g.intact(self.params) for g in self._groups):
            self._rebuild()
        return self._groups

    def flat_grads(self) -> list:
        """The flat gradient buffer of each group (one, for a model on one device): for a gradient all-reduce."""
        return [g.grad for g in self.groups()]

    def _rebuild(self) -> None:
        by_key: dict[tuple, list[int]] = {}
        for i, p in enumerate(self.params):
            by_key.setdefault(_key(p.data), []).append(i)
        self._groups = [FlatGroup(self.params, idx) for idx in by_key.values()]
        for g in self._groups:
            names = {n for i in g.indices for n in self.state[i]}
            for name in names:
                self.flat_state(g, name, fill=True)

    def flat_state(self, g: FlatGroup, name: str, fill: bool = False):
        """The flat state buffer ``name`` of group ``g`` (zeros where a parameter has none), each parameter's
        state ``name`` pointed at its view; made again from the parameters' state values where one of them is
        not its view (``fill``: always)."""
        flat = g.state.get(name)
        views = g.state_views.get(name)
        if flat is not None and not fill and all(self.state[i].get(name) is v for i, v in zip(g.indices, views)):
            return flat
        old = [self.state[i].get(name) for i in g.indices]
        with device_context(g.data):
            flat = g.xp.zeros((g.offsets[-1],), dtype=g.dtype, device=g.device)
            for k, a in enumerate(old):
                if a is None:
                    continue
                if isinstance(a, np.ndarray) or _key(a) != _key(g.data):  # another device or dtype
                    a = asarray_like(as_numpy(a), g.data, g.dtype)
                flat[g.offsets[k]:g.offsets[k + 1]] = g.xp.reshape(a, (-1,))
        g.state[name] = flat
        g.state_views[name] = g.views(flat, self.params)
        for i, view in zip(g.indices, g.state_views[name]):
            self.state[i][name] = view
        return flat
