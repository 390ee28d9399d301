"""array_api_strict (``"array_api_strict[:device]"``): nothing outside the Array API standard, on its CPU device
or the simulated ``device1`` and ``no_float64`` (the tests' guard against NumPy-only code)."""
from __future__ import annotations

from typing import Any

from ..errors import InputValueError
from .base import Backend, import_library
from .registry import register


@register
class ArrayApiStrictBackend(Backend):
    name = "array_api_strict"

    @classmethod
    def load_namespace(cls):
        return import_library("array_api_strict", 'pip install "xpcnn[test]" or pip install array-api-strict')

    def resolve_device(self, device: Any):
        xp = self.xp
        if device is None:
            return xp.Device("CPU_DEVICE")
        if isinstance(device, str):
            valid = [d for d in xp.__array_namespace_info__().devices()]
            found = [d for d in valid if str(d) == device or repr(d).endswith(f"('{device}')")]
            if not found:
                raise InputValueError(f"backend 'array_api_strict' has no device {device!r}; valid: {valid}")
            return found[0]
        return device

    @property
    def spec(self) -> str:
        return f"array_api_strict:{_device_name(self.device)}"

    @staticmethod
    def is_array(a: Any) -> bool:
        return type(a).__module__.startswith("array_api_strict.")


def _device_name(d) -> str:
    """``Device('device1')`` -> ``device1``."""
    r = repr(d)
    return r[r.find("('") + 2: r.rfind("')")] if "('" in r else str(d)
