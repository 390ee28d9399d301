"""NumPy on the CPU (``"numpy"``): the default backend, and the one the fast kernels and threads serve."""
from __future__ import annotations

from typing import Any

import numpy as np

from .. import malloc
from ..errors import InputValueError
from .base import Backend
from .registry import register


@register
class NumpyBackend(Backend):
    name = "numpy"

    @classmethod
    def load_namespace(cls):
        from array_api_compat import array_namespace

        return array_namespace(np.empty(0))

    def resolve_device(self, device: Any):
        if device not in (None, "cpu"):
            raise InputValueError(f"backend 'numpy' has only the device 'cpu', got {device!r}")
        return "cpu"

    @property
    def spec(self) -> str:
        return "numpy"

    def start_step(self) -> None:
        malloc.keep_freed_memory()  # once per process: buffers freed by one step are reused by the next

    @staticmethod
    def is_array(a: Any) -> bool:
        return isinstance(a, np.ndarray)

    @staticmethod
    def host_copy(a: Any) -> np.ndarray:
        return a.copy()
