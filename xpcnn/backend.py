"""Backends: which array library, which device, which compute dtype.

A :class:`Backend` bundles an Array-API namespace (through ``array-api-compat``),
a device and a floating dtype. Models own one; everything below the model takes
its namespace from the arrays it is given. Names: ``"numpy"``, ``"cupy"``,
``"array_api_strict"`` and ``"torch"``, optionally with a device after a colon
(``"cupy:1"``, ``"array_api_strict:device1"``, ``"torch:cuda"``).
"""
from __future__ import annotations

import contextlib
import importlib
from typing import Any

import numpy as np

from .errors import InputError, InputTypeError, InputValueError

BACKENDS = ("numpy", "cupy", "array_api_strict", "torch")
DTYPES = ("float32", "float64")


class BackendError(InputError, ImportError):
    """A backend that exists but cannot be used here (missing package or device)."""


def _import(name: str, hint: str):
    try:
        return importlib.import_module(name)
    except ImportError as e:  # pragma: no cover - depends on the machine
        raise BackendError(f"backend {name!r} needs the package {name!r}, which is not installed: {hint} ({e})") from e


def _namespace(name: str):
    from array_api_compat import array_namespace

    if name == "numpy":
        return array_namespace(np.empty(0)), "cpu"
    if name == "cupy":
        cp = _import("cupy", 'install the CUDA extra: pip install "xpcnn[cuda12]" or "xpcnn[cuda13]"')
        try:
            n = cp.cuda.runtime.getDeviceCount()
        except Exception as e:  # CUDA driver missing or broken
            raise BackendError(f"backend 'cupy': CuPy is installed but no CUDA device is usable ({e}); "
                               "check the NVIDIA driver and `nvidia-smi`") from e
        if n == 0:
            raise BackendError("backend 'cupy': CuPy is installed but no CUDA device was found; check `nvidia-smi`")
        import array_api_compat.cupy as xp
        return xp, None
    if name == "array_api_strict":
        xp = _import("array_api_strict", 'pip install "xpcnn[test]" or pip install array-api-strict')
        return xp, None
    if name == "torch":
        _import("torch", "pip install torch (optional: used for comparisons)")
        import array_api_compat.torch as xp
        return xp, "cpu"
    raise InputValueError(f"unknown backend {name!r}; valid backends are {', '.join(BACKENDS)}")


def _resolve_device(name: str, xp, device: Any):
    """Turn a user's device spec (None, str, int, native object) into a native device."""
    if name == "numpy":
        if device not in (None, "cpu"):
            raise InputValueError(f"backend 'numpy' has only the device 'cpu', got {device!r}")
        return "cpu"
    if name == "cupy":
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
    if name == "array_api_strict":
        if device is None:
            return xp.Device("CPU_DEVICE")
        if isinstance(device, str):
            valid = [d for d in xp.__array_namespace_info__().devices()]
            found = [d for d in valid if str(d) == device or repr(d).endswith(f"('{device}')")]
            if not found:
                raise InputValueError(f"backend 'array_api_strict' has no device {device!r}; valid: {valid}")
            return found[0]
        return device
    if name == "torch":
        import torch
        dev = torch.device("cpu" if device is None else device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise BackendError("backend 'torch:cuda': torch has no usable CUDA device")
        return dev
    raise AssertionError(name)


class Backend:
    """An array namespace, a device and a compute dtype, plus host<->device moves.

    >>> b = Backend("numpy", dtype="float32")
    >>> b.asarray([1, 2]).dtype
    dtype('float32')
    """

    def __init__(self, name: str = "numpy", device: Any = None, dtype: str = "float32"):
        if isinstance(name, Backend):
            device = name.device if device is None else device
            name = name.name
        if not isinstance(name, str):
            raise InputTypeError(f"backend must be a name such as 'numpy' or 'cupy', got {type(name).__name__}")
        if ":" in name and device is None:
            name, device = name.split(":", 1)
        if name not in BACKENDS:
            raise InputValueError(f"unknown backend {name!r}; valid backends are {', '.join(BACKENDS)}")
        if dtype not in DTYPES:
            dtype = getattr(dtype, "name", str(dtype))
            if dtype not in DTYPES:
                raise InputValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        self.name = name
        self.xp, _ = _namespace(name)
        self.device = _resolve_device(name, self.xp, device)
        self.dtype_name = dtype
        self.dtype = getattr(self.xp, dtype)
        info = self.xp.__array_namespace_info__()
        supported = info.dtypes(device=self.device, kind="real floating")
        if dtype not in supported:
            raise InputValueError(f"backend {self} does not support {dtype} (it supports {', '.join(supported)})")
        self.index_dtype = info.default_dtypes(device=self.device)["indexing"]

    def __reduce__(self):
        """Pickled as its spec and dtype (the array namespace is a module): rebuilt where it is unpickled."""
        return Backend, (self.spec, None, self.dtype_name)

    # -- identity -------------------------------------------------------
    def __repr__(self) -> str:
        return f"Backend({self.spec!r}, dtype={self.dtype_name!r})"

    @property
    def spec(self) -> str:
        """The backend name with its device, e.g. ``"cupy:0"``."""
        if self.name == "numpy":
            return "numpy"
        if self.name == "cupy":
            return f"cupy:{self.device.id}"
        if self.name == "array_api_strict":
            return f"array_api_strict:{_strict_device_name(self.device)}"
        return f"torch:{self.device}"

    @property
    def is_gpu(self) -> bool:
        return self.name == "cupy" or (self.name == "torch" and self.device.type == "cuda")

    def owns(self, a: Any) -> bool:
        """True when ``a`` is an array of this backend on this device."""
        from array_api_compat import array_namespace, device

        try:
            xp = array_namespace(a)
        except TypeError:
            return False
        return xp is self.xp and device(a) == self.device

    def describe(self, a: Any) -> str:
        """Where an array lives, in words (for error messages)."""
        from array_api_compat import array_namespace, device

        try:
            xp = array_namespace(a)
        except TypeError:
            return type(a).__name__
        return f"{xp.__name__.replace('array_api_compat.', '')} array on {device(a)}"

    # -- moving data ----------------------------------------------------
    def asarray(self, a: Any, dtype: Any = None, copy: bool = False):
        """Move ``a`` (NumPy array, nested list, or an array of any backend) here.

        ``dtype=None`` casts floating data to the model dtype and keeps other
        dtypes; arrays already here with the right dtype are returned as they are
        unless ``copy``. Host data is always copied.
        """
        if self.owns(a):
            if dtype is None and self.xp.isdtype(a.dtype, "real floating"):
                dtype = self.dtype
            if dtype is not None and a.dtype != dtype:
                return self.xp.astype(a, dtype)
            return self.xp.asarray(a, copy=True) if copy else a
        host = a if isinstance(a, np.ndarray) else to_numpy(a)
        if dtype is None:
            dtype = self.dtype if host.dtype.kind == "f" else self._native_dtype(host.dtype)
        if self.name == "cupy":
            import cupy as cp
            with self.device:
                return cp.asarray(host, dtype=dtype)
        return self.xp.asarray(host, dtype=dtype, device=self.device, copy=True)

    def _native_dtype(self, np_dtype):
        name = np.dtype(np_dtype).name
        dt = getattr(self.xp, name, None)
        if dt is None:
            raise InputTypeError(f"dtype {name} is not supported by backend {self.spec}")
        return dt

    def zeros(self, shape, dtype: Any = None):
        with self.activate():
            return self.xp.zeros(shape, dtype=self.dtype if dtype is None else dtype, device=self.device)

    def activate(self):
        """A context that makes this backend's device current.

        CuPy's creation functions (``zeros``, ``empty``, ``full`` ...) ignore
        ``device=`` and allocate on the *current* CUDA device, and its kernels
        refuse arrays of another device; so work on ``"cupy:1"`` runs inside
        ``with backend.activate():``. A no-op for every other backend.
        """
        return self.device if self.name == "cupy" else contextlib.nullcontext()

    def uniform_source(self, seed: int) -> "UniformSource":
        """A seeded generator ``shape -> uniform [0, 1) array`` on this device (for dropout masks).

        Its ``state_dict()``/``load_state_dict()`` let checkpoints resume the exact mask sequence.
        """
        return UniformSource(self, seed)

    def synchronize(self) -> None:
        """Wait for queued device work (before reading a clock)."""
        if self.name == "cupy":
            self.device.synchronize()
        elif self.name == "torch" and self.device.type == "cuda":
            import torch
            torch.cuda.synchronize(self.device)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Backend) and (self.name, self.spec, self.dtype_name) == (
            other.name, other.spec, other.dtype_name)

    def __hash__(self) -> int:
        return hash((self.name, self.spec, self.dtype_name))


class UniformSource:
    """Seeded uniform [0, 1) draws on a backend's device, with a savable state.

    CuPy draws on the GPU (its state is restored by replaying the logged draw
    shapes, which is cheap there); torch uses a ``torch.Generator``; the other
    backends draw on the host with NumPy (state: the bit generator's dict).
    """

    def __init__(self, backend: Backend, seed: int):
        self.backend, self.seed = backend, int(seed)
        self._draws: list[list] = []  # CuPy only: [[shape, count], ...] since seeding
        self._reseed()

    def _reseed(self) -> None:
        b = self.backend
        if b.name == "cupy":
            import cupy as cp
            with b.device:
                self._gen = cp.random.default_rng(self.seed)
        elif b.name == "torch":
            import torch
            self._gen = torch.Generator(device=b.device)
            self._gen.manual_seed(self.seed % 2 ** 63)
        else:
            self._gen = np.random.default_rng(self.seed)

    def __call__(self, shape):
        b = self.backend
        shape = tuple(int(d) for d in shape)
        if b.name == "cupy":
            if self._draws and tuple(self._draws[-1][0]) == shape:
                self._draws[-1][1] += 1
            else:
                self._draws.append([list(shape), 1])
            with b.device:
                return self._gen.random(shape, dtype=b.dtype_name)
        if b.name == "torch":
            import torch
            return torch.rand(shape, generator=self._gen, dtype=b.dtype, device=b.device)
        return b.asarray(self._gen.random(shape, dtype=b.dtype_name))

    def state_dict(self) -> dict:
        """A JSON-able description of where the sequence stands."""
        if self.backend.name == "cupy":
            return {"kind": "replay", "seed": self.seed, "draws": [list(d) for d in self._draws]}
        if self.backend.name == "torch":
            return {"kind": "torch", "seed": self.seed, "state": bytes(self._gen.get_state().tolist()).hex()}
        return {"kind": "numpy", "seed": self.seed, "state": self._gen.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        """Continue the sequence saved by :meth:`state_dict` (of this backend kind)."""
        kind = {"cupy": "replay", "torch": "torch"}.get(self.backend.name, "numpy")
        if state.get("kind") != kind:
            raise InputValueError(f"random state of kind {state.get('kind')!r} cannot be restored on backend "
                                  f"{self.backend.spec} (which needs {kind!r})")
        self.seed = int(state["seed"])
        self._reseed()
        if kind == "replay":
            self._draws = []
            for shape, count in state["draws"]:
                for _ in range(int(count)):
                    self(shape)
        elif kind == "torch":
            import torch
            self._gen.set_state(torch.tensor(list(bytes.fromhex(state["state"])), dtype=torch.uint8))
        else:
            self._gen.bit_generator.state = state["state"]


def _strict_device_name(d) -> str:
    r = repr(d)
    return r[r.find("('") + 2: r.rfind("')")] if "('" in r else str(d)


def get_backend(backend: "str | Backend" = "numpy", dtype: str | None = None, device: Any = None) -> Backend:
    """Resolve a name (or an existing :class:`Backend`) with a dtype to a Backend."""
    if isinstance(backend, Backend):
        if dtype is None or dtype == backend.dtype_name:
            if device is None:
                return backend
        return Backend(backend.name, device if device is not None else backend.device, dtype or backend.dtype_name)
    return Backend(backend, device, dtype or "float32")


def available_backends() -> dict[str, str]:
    """Name -> "ok" or the reason it cannot be used here."""
    out = {}
    for name in BACKENDS:
        try:
            Backend(name)
            out[name] = "ok"
        except Exception as e:  # report, don't raise
            out[name] = str(e)
    return out


def on_gpu(a: Any) -> bool:
    """Whether ``a`` lives on a GPU (CuPy, or torch on CUDA)."""
    from array_api_compat import is_cupy_array, is_torch_array

    return is_cupy_array(a) or (is_torch_array(a) and a.device.type == "cuda")


def device_context(a: Any):
    """``with device_context(a):`` makes the CUDA device of CuPy array ``a`` current; a no-op otherwise."""
    from array_api_compat import is_cupy_array

    return a.device if is_cupy_array(a) else contextlib.nullcontext()


def asarray_like(host: np.ndarray, ref: Any, dtype: Any = None):
    """A copy of host NumPy data on ``ref``'s namespace and device (``dtype=None``: the host dtype).

    CuPy's creation functions ignore ``device=``, so for CuPy the copy is made under ``ref``'s GPU.
    """
    from array_api_compat import array_namespace, device, is_cupy_array

    if is_cupy_array(ref):
        import cupy as cp
        with ref.device:
            return cp.asarray(host, dtype=dtype)
    return array_namespace(ref).asarray(host, dtype=dtype, device=device(ref), copy=True)


def to_numpy(a: Any) -> np.ndarray:
    """A host NumPy copy of an array of any backend."""
    if isinstance(a, np.ndarray):
        return a.copy()
    if isinstance(a, (int, float, bool, list, tuple)):
        return np.asarray(a)
    from array_api_compat import is_cupy_array, is_torch_array

    if is_cupy_array(a):
        return a.get()
    if is_torch_array(a):
        return a.detach().cpu().numpy().copy()
    if hasattr(a, "__dlpack__"):
        return np.from_dlpack(a).copy()
    return np.array(a, copy=True)
