"""The backend registry: each library's class is what ``Backend(spec)`` builds; an unknown spec names the known ones."""
from __future__ import annotations

import pickle

import numpy as np
import pytest

import xpcnn
from xpcnn.backend import (ArrayApiStrictBackend, Backend, BackendError, CupyBackend, NumpyBackend, TorchBackend,
                           UniformSource, registry, to_numpy)

# spec -> the class that must build it (a spec whose library cannot run here is skipped with the reason)
SPECS = {"numpy": NumpyBackend, "cupy": CupyBackend, "cupy:0": CupyBackend, "array_api_strict": ArrayApiStrictBackend,
         "array_api_strict:device1": ArrayApiStrictBackend, "torch": TorchBackend, "torch:cpu": TorchBackend}


def test_the_registry_lists_every_library_once_in_order():
    assert registry.names() == ("numpy", "cupy", "array_api_strict", "torch") == xpcnn.backend.BACKENDS
    assert tuple(registry.classes()) == (NumpyBackend, CupyBackend, ArrayApiStrictBackend, TorchBackend)
    for cls in registry.classes():
        assert issubclass(cls, Backend) and registry.backend_class(cls.name) is cls


@pytest.mark.parametrize("spec", SPECS)
def test_backend_picks_the_class_of_a_spec_even_where_the_library_is_missing(spec):
    assert type(Backend.__new__(Backend, spec)) is SPECS[spec]  # the choice alone, before the library is imported


@pytest.mark.parametrize("spec", SPECS)
def test_backend_of_a_spec_is_its_library_class(spec):
    try:
        b = xpcnn.Backend(spec, dtype="float32")
    except BackendError as e:
        pytest.skip(f"{spec} cannot run here: {e}")
    assert type(b) is SPECS[spec] and isinstance(b, Backend)
    assert type(xpcnn.get_backend(spec)) is SPECS[spec]
    assert b.spec.split(":")[0] == b.name == spec.split(":")[0]
    twin = pickle.loads(pickle.dumps(b))
    assert type(twin) is type(b) and twin == b and repr(twin) == repr(b) == f"Backend({b.spec!r}, dtype='float32')"
    assert type(Backend(b)) is type(b) and Backend(b).spec == b.spec
    assert type(b.uniform_source(0)) is type(b).uniform_source_class is type(UniformSource(b, 0))
    a = b.asarray(np.arange(6.0).reshape(2, 3))
    assert Backend.library_of(a) is type(b) and b.owns(a)
    np.testing.assert_array_equal(to_numpy(a), np.arange(6.0).reshape(2, 3))


def test_unknown_spec_names_the_known_ones():
    known = "numpy, cupy, array_api_strict, torch"
    for spec in ("jax", "jax:0", "numpyy"):
        with pytest.raises(ValueError, match=rf"unknown backend '{spec.split(':')[0]}'; valid backends are {known}$"):
            Backend(spec)
    with pytest.raises(TypeError, match="backend must be a name such as 'numpy' or 'cupy', got int"):
        Backend(3)


def test_a_library_class_refuses_another_librarys_spec():
    with pytest.raises(ValueError, match="ArrayApiStrictBackend is the backend 'array_api_strict', not 'numpy'"):
        ArrayApiStrictBackend("numpy")
    assert type(ArrayApiStrictBackend("array_api_strict:device1")) is ArrayApiStrictBackend


def test_arrays_of_no_library_take_the_defaults():
    for host in (3, 2.5, [1, 2], np.float32(2)):
        assert Backend.library_of(host) is Backend
        np.testing.assert_array_equal(to_numpy(host), np.asarray(host))
    assert not xpcnn.backend.on_gpu([1.0])


def test_moves_between_libraries_go_through_the_host():
    src = Backend("array_api_strict:device1", dtype="float64")
    a = src.asarray([[1.0, 2.0]])
    b = Backend("numpy", dtype="float32").asarray(a)
    assert isinstance(b, np.ndarray) and b.dtype == np.float32 and b.tolist() == [[1.0, 2.0]]
    back = xpcnn.backend.asarray_like(b, a)
    assert src.owns(back) and to_numpy(back).tolist() == [[1.0, 2.0]]
