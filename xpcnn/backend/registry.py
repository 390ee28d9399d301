"""The one registry of array libraries: a spec string ("numpy", "cupy:1", "torch:cpu") -> its backend class.

Each library's module registers its class with :func:`register`; :mod:`xpcnn.backend` imports those modules in
the order error messages list them.
"""
from __future__ import annotations

from typing import Any, Iterable

from ..errors import InputValueError

_CLASSES: dict[str, type] = {}  # library name -> its Backend subclass, in registration order


def register(cls: type) -> type:
    """Class decorator: make ``cls`` (a Backend subclass with a ``name``) the backend of specs naming it."""
    _CLASSES[cls.name] = cls
    return cls


def names() -> tuple[str, ...]:
    """The registered library names, e.g. ``("numpy", "cupy", "array_api_strict", "torch")``."""
    return tuple(_CLASSES)


def classes() -> Iterable[type]:
    """The registered backend classes, in the order of :func:`names` (a live view: no copy per call)."""
    return _CLASSES.values()


def split_spec(spec: str, device: Any = None) -> tuple[str, Any]:
    """``"cupy:1"`` -> ``("cupy", "1")``; a device given separately wins (and the spec is then a bare name)."""
    if ":" in spec and device is None:
        spec, device = spec.split(":", 1)
    return spec, device


def backend_class(name: str) -> type:
    """The class registered for library ``name``; an unknown name is an error that lists the known ones."""
    try:
        return _CLASSES[name]
    except KeyError:
        raise InputValueError(f"unknown backend {name!r}; valid backends are {', '.join(_CLASSES)}") from None
