"""Module paths that moved in the redesign of 2026-12 (issue 19), kept importable for code written against them.

``import xpcnn.train`` (or ``from xpcnn.torch_compat import to_torch``) still works and warns
(DeprecationWarning) with the new path: the old name is a thin module that forwards every attribute to the new
one, imported only when the old name is. Nothing in xpcnn itself uses these names.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

MOVED = {
    "xpcnn.model": "xpcnn.sequential",
    "xpcnn.train": "xpcnn.training",
    "xpcnn.parallel": "xpcnn.threads",
    "xpcnn.bench": "xpcnn.tools.bench",
    "xpcnn.parity": "xpcnn.tools.parity",
    "xpcnn.opcount": "xpcnn.tools.opcount",
    "xpcnn.torch_compat": "xpcnn.tools.torch_compat",
    "xpcnn.commands": "xpcnn.cli",
}


def new_name(name: str) -> str | None:
    """Where module ``name`` lives now (also for a submodule of a moved package), or None if it did not move."""
    for old, new in MOVED.items():
        if name == old or name.startswith(old + "."):
            return new + name[len(old):]
    return None


class MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds the old names (after every other finder, so a real module always wins) and loads forwarders."""

    def find_spec(self, name, path=None, target=None):
        new = new_name(name)
        if new is None or importlib.util.find_spec(new) is None:
            return None
        return importlib.util.spec_from_loader(name, self, is_package=True)

    def create_module(self, spec):
        return None  # a plain module, filled by exec_module

    def exec_module(self, module) -> None:
        new = new_name(module.__name__)
        warnings.warn(f"{module.__name__} has moved to {new}; import that instead", DeprecationWarning,
                      stacklevel=2)
        target = importlib.import_module(new)
        module.__doc__ = f"Moved to :mod:`{new}`: this name forwards to it."
        module.__getattr__ = lambda attr: getattr(target, attr)  # PEP 562
        module.__dir__ = lambda: dir(target)
        module.__path__ = []  # submodules of a moved package are found by new_name, not on a path


def install() -> None:
    if not any(isinstance(f, MovedModules) for f in sys.meta_path):
        sys.meta_path.append(MovedModules())
