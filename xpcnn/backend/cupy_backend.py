"""CuPy on a CUDA GPU (``"cupy[:i]"``).

CuPy's creation functions ignore ``device=`` and allocate on the *current* CUDA device, so every host copy
and draw here runs under its device; its random state is restored by replaying the logged draw shapes.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from array_api_compat import is_cupy_array

from ..errors import InputValueError
from .base import Backend, BackendError, import_library
from .registry import register
from .uniform import UniformSource


class CupyUniformSource(UniformSource):
    """Draws on the GPU; its state is the seed and the logged draw shapes, replayed to restore (cheap there)."""

    kind = "replay"

    def __init__(self, backend: Any, seed: int):
        self._draws: list[list] = []  # [[shape, count], ...] since seeding
        super().__init__(backend, seed)

    def _reseed(self) -> None:
        import cupy as cp
        with self.backend.device:
            self._gen = cp.random.default_rng(self.seed)

    def _draw(self, shape):
        if self._draws and tuple(self._draws[-1][0]) == shape:
            self._draws[-1][1] += 1
        else:
            self._draws.append([list(shape), 1])
        with self.backend.device:
            return self._gen.random(shape, dtype=self.backend.dtype_name)

    def _position(self) -> dict:
        return {"draws": [list(d) for d in self._draws]}

    def _restore(self, state: dict) -> None:
        self._draws = []
        for shape, count in state["draws"]:
            for _ in range(int(count)):
                self(shape)


@register
class CupyBackend(Backend):
    name = "cupy"
    uniform_source_class = CupyUniformSource

    @classmethod
    def load_namespace(cls):
        cp = import_library("cupy", 'install the CUDA extra: pip install "xpcnn[cuda12]" or "xpcnn[cuda13]"')
        try:
            n = cp.cuda.runtime.getDeviceCount()
        except Exception as e:  # CUDA driver missing or broken
            raise BackendError(f"backend 'cupy': CuPy is installed but no CUDA device is usable ({e}); "
                               "check the NVIDIA driver and `nvidia-smi`") from e
        if n == 0:
            raise BackendError("backend 'cupy': CuPy is installed but no CUDA device was found; check `nvidia-smi`")
        import array_api_compat.cupy as xp
        return xp

    def resolve_device(self, device: Any):
        import cupy as cp
        if device is None:
            return cp.cuda.Device()
        if isinstance(device, str):
            device = int(device)
        if isinstance(device, int):
            count = cp.cuda.runtime.getDeviceCount()
            if not 0 <= device < count:
                raise InputValueError(f"backend 'cupy': device {device} does not exist ({count} CUDA device(s) found)")
            return cp.cuda.Device(device)
        return device

    @property
    def spec(self) -> str:
        return f"cupy:{self.device.id}"

    @property
    def is_gpu(self) -> bool:
        return True

    def activate(self):
        return self.device

    def synchronize(self) -> None:
        self.device.synchronize()

    @staticmethod
    def is_array(a: Any) -> bool:
        return is_cupy_array(a)

    @staticmethod
    def host_copy(a: Any) -> np.ndarray:
        return a.get()

    @staticmethod
    def array_on_gpu(a: Any) -> bool:
        return True

    @staticmethod
    def array_device_context(a: Any):
        return a.device

    @staticmethod
    def copy_from_host(host: np.ndarray, xp: Any, device: Any, dtype: Any):
        import cupy as cp
        with device:
            return cp.asarray(host, dtype=dtype)
