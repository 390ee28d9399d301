"""The backend protocol: what each array library's class provides, and the behaviour they all share.

A :class:`Backend` bundles an Array-API namespace (through ``array-api-compat``), a device and a floating
dtype. ``Backend(spec, dtype=...)`` builds the class registered for the spec's library
(:mod:`~xpcnn.backend.registry`), so ``isinstance(b, Backend)`` holds for every one. A library's class
sets ``name`` and overrides only what differs from the defaults here:

=========================  =====================================================================
``load_namespace()``       import the library, check it can run here (else :class:`BackendError`)
``resolve_device(d)``      a user's device (None, str, int, native) -> the native device
``spec``, ``is_gpu``       identity: the name with its device; whether the device is a GPU
``activate()``             a context making the device current (CuPy); ``synchronize()``
``start_step()``           what the library needs before a model step (NumPy: keep freed memory)
``copy_from_host(...)``    host NumPy data -> an array on a device of the library
``uniform_source_class``   its :class:`~xpcnn.backend.uniform.UniformSource`
``is_array(a)`` ...        array level: whether ``a`` is the library's, ``host_copy``,
                           ``array_on_gpu``, ``array_device_context``
=========================  =====================================================================
"""
from __future__ import annotations

import contextlib
import importlib
from typing import Any, ClassVar

import numpy as np
from array_api_compat import array_namespace, device

from ..errors import InputError, InputTypeError, InputValueError
from . import registry
from .uniform import UniformSource

DTYPES = ("float32", "float64")


class BackendError(InputError, ImportError):
    """A backend that exists but cannot be used here (missing package or device)."""


def import_library(name: str, hint: str):
    """Import the package ``name`` of a backend, or raise a :class:`BackendError` that says how to install it."""
    try:
        return importlib.import_module(name)
    except ImportError as e:  # pragma: no cover - depends on the machine
        raise BackendError(f"backend {name!r} needs the package {name!r}, which is not installed: {hint} ({e})") from e


class Backend:
    """An array namespace, a device and a compute dtype, plus host<->device moves.

    >>> b = Backend("numpy", dtype="float32")
    >>> b.asarray([1, 2]).dtype
    dtype('float32')
    """

    name: ClassVar[str]  # the library's name in specs; set by each library's class
    uniform_source_class: ClassVar[type] = UniformSource

    def __new__(cls, name: "str | Backend" = "numpy", device: Any = None, dtype: str = "float32"):
        if cls is Backend:  # pick the library's class from the spec
            cls = registry.backend_class(Backend._split(name, device)[0])
        return super().__new__(cls)

    def __init__(self, name: "str | Backend" = "numpy", device: Any = None, dtype: str = "float32"):
        library, device = self._split(name, device)
        if library != self.name:
            raise InputValueError(f"{type(self).__name__} is the backend {self.name!r}, not {library!r}")
        if dtype not in DTYPES:
            dtype = getattr(dtype, "name", str(dtype))
            if dtype not in DTYPES:
                raise InputValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        self.xp = self.load_namespace()
        self.device = self.resolve_device(device)
        self.dtype_name = dtype
        self.dtype = getattr(self.xp, dtype)
        info = self.xp.__array_namespace_info__()
        supported = info.dtypes(device=self.device, kind="real floating")
        if dtype not in supported:
            raise InputValueError(f"backend {self} does not support {dtype} (it supports {', '.join(supported)})")
        self.index_dtype = info.default_dtypes(device=self.device)["indexing"]

    @staticmethod
    def _split(spec: "str | Backend", device: Any) -> tuple[str, Any]:
        """(library name, device) of a spec such as ``"cupy:1"``, or of another Backend (its name and device)."""
        if isinstance(spec, Backend):
            return spec.name, spec.device if device is None else device
        if not isinstance(spec, str):
            raise InputTypeError(f"backend must be a name such as 'numpy' or 'cupy', got {type(spec).__name__}")
        return registry.split_spec(spec, device)

    def __reduce__(self):
        """Pickled as its spec and dtype (the array namespace is a module): rebuilt where it is unpickled."""
        return Backend, (self.spec, None, self.dtype_name)

    # -- what a library's class provides ----------------------------------------------------------------
    @classmethod
    def load_namespace(cls):
        """The library's Array-API namespace; raises :class:`BackendError` where it cannot run here."""
        raise NotImplementedError

    def resolve_device(self, device: Any):
        """Turn a user's device spec (None, str, int, native object) into a native device."""
        raise NotImplementedError

    # -- identity -------------------------------------------------------
    def __repr__(self) -> str:
        return f"Backend({self.spec!r}, dtype={self.dtype_name!r})"

    @property
    def spec(self) -> str:
        """The backend name with its device, e.g. ``"cupy:0"``."""
        return f"{self.name}:{self.device}"

    @property
    def is_gpu(self) -> bool:
        return False

    def owns(self, a: Any) -> bool:
        """True when ``a`` is an array of this backend on this device."""
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
        host = a if isinstance(a, np.ndarray) else self.library_of(a).host_copy(a)
        if dtype is None:
            dtype = self.dtype if host.dtype.kind == "f" else self._native_dtype(host.dtype)
        return self.copy_from_host(host, self.xp, self.device, dtype)

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
        return contextlib.nullcontext()

    def start_step(self) -> None:
        """What the library needs before a model step (the model calls it first); nothing by default."""

    def uniform_source(self, seed: int) -> UniformSource:
        """A seeded generator ``shape -> uniform [0, 1) array`` on this device (for dropout masks).

        Its ``state_dict()``/``load_state_dict()`` let checkpoints resume the exact mask sequence.
        """
        return self.uniform_source_class(self, seed)

    def synchronize(self) -> None:
        """Wait for queued device work (before reading a clock); nothing to wait for by default."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Backend) and (self.name, self.spec, self.dtype_name) == (
            other.name, other.spec, other.dtype_name)

    def __hash__(self) -> int:
        return hash((self.name, self.spec, self.dtype_name))

    # -- the library's arrays (class level: no Backend instance needed) --------------------------------
    @staticmethod
    def library_of(a: Any) -> "type[Backend]":
        """The registered class whose :meth:`is_array` claims ``a``; Backend itself (the defaults) if none does."""
        for cls in registry.classes():
            if cls.is_array(a):
                return cls
        return Backend

    @staticmethod
    def is_array(a: Any) -> bool:
        """Whether ``a`` is an array of this library."""
        return False

    @staticmethod
    def host_copy(a: Any) -> np.ndarray:
        """A host NumPy copy of ``a`` (by default: Python data as it is, else through DLPack or ``np.array``)."""
        if isinstance(a, (int, float, bool, list, tuple)):
            return np.asarray(a)
        if hasattr(a, "__dlpack__"):
            return np.from_dlpack(a).copy()
        return np.array(a, copy=True)

    @staticmethod
    def array_on_gpu(a: Any) -> bool:
        """Whether array ``a`` of this library lives on a GPU."""
        return False

    @staticmethod
    def array_device_context(a: Any):
        """A context making the device of array ``a`` current (a no-op by default)."""
        return contextlib.nullcontext()

    @staticmethod
    def copy_from_host(host: np.ndarray, xp: Any, device: Any, dtype: Any):
        """A copy of host NumPy data as an array of namespace ``xp`` on ``device``."""
        return xp.asarray(host, dtype=dtype, device=device, copy=True)


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
    for name in registry.names():
        try:
            Backend(name)
            out[name] = "ok"
        except Exception as e:  # report, don't raise
            out[name] = str(e)
    return out
