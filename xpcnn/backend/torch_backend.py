"""PyTorch tensors through array-api-compat (``"torch[:device]"``, e.g. ``"torch:cpu"``, ``"torch:cuda"``):
for comparisons with PyTorch on the same arrays; a random source of its own (``torch.Generator``)."""
from __future__ import annotations

from typing import Any

import numpy as np
from array_api_compat import is_torch_array

from .base import Backend, BackendError, import_library
from .registry import register
from .uniform import UniformSource


class TorchUniformSource(UniformSource):
    """Draws with a ``torch.Generator`` on the backend's device; its state is the generator's bytes."""

    kind = "torch"

    def _reseed(self) -> None:
        import torch
        self._gen = torch.Generator(device=self.backend.device)
        self._gen.manual_seed(self.seed % 2 ** 63)

    def _draw(self, shape):
        import torch
        b = self.backend
        return torch.rand(shape, generator=self._gen, dtype=b.dtype, device=b.device)

    def _position(self) -> dict:
        return {"state": bytes(self._gen.get_state().tolist()).hex()}

    def _restore(self, state: dict) -> None:
        import torch
        self._gen.set_state(torch.tensor(list(bytes.fromhex(state["state"])), dtype=torch.uint8))


@register
class TorchBackend(Backend):
    name = "torch"
    uniform_source_class = TorchUniformSource

    @classmethod
    def load_namespace(cls):
        import_library("torch", "pip install torch (optional: used for comparisons)")
        import array_api_compat.torch as xp
        return xp

    def resolve_device(self, device: Any):
        import torch
        dev = torch.device("cpu" if device is None else device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise BackendError("backend 'torch:cuda': torch has no usable CUDA device")
        return dev

    @property
    def is_gpu(self) -> bool:
        return self.device.type == "cuda"

    def synchronize(self) -> None:
        if self.is_gpu:
            import torch
            torch.cuda.synchronize(self.device)

    @staticmethod
    def is_array(a: Any) -> bool:
        return is_torch_array(a)

    @staticmethod
    def host_copy(a: Any) -> np.ndarray:
        return a.detach().cpu().numpy().copy()

    @staticmethod
    def array_on_gpu(a: Any) -> bool:
        return a.device.type == "cuda"
