"""Backends: which array library, which device, which compute dtype.

A :class:`Backend` bundles an Array-API namespace (through ``array-api-compat``), a device and a floating
dtype. Models own one; everything below the model takes its namespace from the arrays it is given. Specs:
``"numpy"``, ``"cupy"``, ``"array_api_strict"`` and ``"torch"``, optionally with a device after a colon
(``"cupy:1"``, ``"array_api_strict:device1"``, ``"torch:cuda"``).

One class per library behind one protocol (:mod:`~xpcnn.backend.base`), each in its own module and named in
the one registry (:mod:`~xpcnn.backend.registry`) that maps a spec to its class. Adding a library: a module
with its class (``@register``), imported below.
"""
from __future__ import annotations

from . import registry
from .base import DTYPES, Backend, BackendError, available_backends, get_backend, import_library
from .uniform import UniformSource
from .arrays import as_numpy, asarray_like, device_context, on_gpu, to_numpy

# isort: off
# the libraries register in import order: the order error messages and available_backends() list them
from .numpy_backend import NumpyBackend
from .cupy_backend import CupyBackend
from .strict_backend import ArrayApiStrictBackend
from .torch_backend import TorchBackend
# isort: on

BACKENDS = registry.names()

__all__ = ["BACKENDS", "DTYPES", "ArrayApiStrictBackend", "Backend", "BackendError", "CupyBackend", "NumpyBackend",
           "TorchBackend", "UniformSource", "as_numpy", "asarray_like", "available_backends", "device_context",
           "get_backend", "import_library", "on_gpu", "to_numpy"]
