"""Seeded uniform [0, 1) draws on a backend's device, with a savable state (dropout masks).

:class:`UniformSource` draws on the host with NumPy and moves each draw to the device (state: the bit
generator's dict): what NumPy and array_api_strict use. A library with a generator of its own subclasses it
beside its backend class and names the subclass in the class's ``uniform_source_class`` (CuPy: replayed draws;
torch: a ``torch.Generator``). ``UniformSource(backend, seed)`` builds the backend's kind.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InputValueError


class UniformSource:
    """``source(shape)`` -> a uniform [0, 1) array on the backend; ``state_dict()``/``load_state_dict()``
    let checkpoints resume the exact sequence. Subclasses override the generator steps below."""

    kind = "numpy"  # the state_dict kind this class restores

    def __new__(cls, backend: Any = None, seed: int = 0):
        if cls is UniformSource and backend is not None:
            cls = backend.uniform_source_class
        return super().__new__(cls)

    def __init__(self, backend: Any, seed: int):
        self.backend, self.seed = backend, int(seed)
        self._reseed()

    def __call__(self, shape):
        return self._draw(tuple(int(d) for d in shape))

    def state_dict(self) -> dict:
        """A JSON-able description of where the sequence stands."""
        return {"kind": self.kind, "seed": self.seed, **self._position()}

    def load_state_dict(self, state: dict) -> None:
        """Continue the sequence saved by :meth:`state_dict` (of this backend kind)."""
        if state.get("kind") != self.kind:
            raise InputValueError(f"random state of kind {state.get('kind')!r} cannot be restored on backend "
                                  f"{self.backend.spec} (which needs {self.kind!r})")
        self.seed = int(state["seed"])
        self._reseed()
        self._restore(state)

    # -- the generator steps a library's subclass overrides ------------------------------------------------
    def _reseed(self) -> None:
        self._gen = np.random.default_rng(self.seed)

    def _draw(self, shape: tuple[int, ...]):
        b = self.backend
        return b.asarray(self._gen.random(shape, dtype=b.dtype_name))

    def _position(self) -> dict:
        return {"state": self._gen.bit_generator.state}

    def _restore(self, state: dict) -> None:
        self._gen.bit_generator.state = state["state"]
