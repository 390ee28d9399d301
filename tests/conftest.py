"""Backends every op and layer test runs on, and helpers to move data to them and back.

* ``numpy``             NumPy, float64 (the full parameter grids run here).
* ``strict``            array_api_strict on its CPU_DEVICE, float64: nothing outside the standard.
* ``strict-device1``    array_api_strict on the simulated ``device1``, float64: no hidden host round
                        trip or default-device allocation (mixing devices raises).
* ``strict-no_float64`` array_api_strict on ``no_float64``, float32 only: no float64 leak. Compared with the
                        float64 references at the stated looser tolerance ``F32_TOL``.
* ``torch``             PyTorch CPU tensors through array-api-compat, float64, where torch is installed (it
                        rejects some things strict accepts, e.g. a tuple axis in ``expand_dims``); skipped otherwise.

``Env.get`` asserts that every result is on the backend's device and (for floating arrays) in its dtype
before it hands back a NumPy float64 copy.
"""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))  # tests/reference.py, tests/gradcheck.py

import xpcnn  # noqa: E402

F64_TOL = 1e-7  # float64 against the loop references and numerical gradients
F32_TOL = 3e-5  # float32 (the no_float64 device) against float64 references: ~250 float32 ulps of the max (seen: <= 5e-6)


class Env:
    """One backend under test: ``put`` NumPy data there, ``get`` results back (checking device and dtype)."""

    def __init__(self, key: str, spec: str, dtype: str):
        self.key, self.spec, self.dtype_name = key, spec, dtype
        self.backend = xpcnn.Backend(spec, dtype=dtype)
        self.xp = self.backend.xp
        self.dtype = self.backend.dtype
        self.tol = F64_TOL if dtype == "float64" else F32_TOL

    def __repr__(self) -> str:
        return f"Env({self.key})"

    def put(self, a, dtype=None):
        """NumPy -> backend array (floating data cast to the backend dtype); always a copy (on NumPy too)."""
        return self.backend.asarray(np.asarray(a), dtype=dtype, copy=True)

    def get(self, a, floating: bool = True) -> np.ndarray:
        """Backend array -> NumPy float64, asserting it stayed on this backend, device and dtype."""
        assert self.backend.owns(a), f"result is a {self.backend.describe(a)}, expected one on {self.backend.spec}"
        if floating:
            assert a.dtype == self.dtype, f"result dtype {a.dtype}, expected {self.dtype}"
        return np.asarray(xpcnn.to_numpy(a), dtype=np.float64)

    def model(self, *layers, seed: int = 0) -> xpcnn.Sequential:
        return xpcnn.Sequential(*layers, backend=self.backend, seed=seed)

    def ref_input(self, a: np.ndarray) -> np.ndarray:
        """What the backend actually computes on: ``a`` rounded to its dtype, as float64 for the references."""
        return np.asarray(a, dtype=self.dtype_name).astype(np.float64)


ENVS = {
    "numpy": ("numpy", "float64"),
    "strict": ("array_api_strict", "float64"),
    "strict-device1": ("array_api_strict:device1", "float64"),
    "strict-no_float64": ("array_api_strict:no_float64", "float32"),
}
try:
    import torch  # noqa: F401
    HAVE_TORCH = True
except ImportError:
    HAVE_TORCH = False
ENVS["torch"] = ("torch", "float64")
# the representative op grids run here besides NumPy's full grid
STRICT = [k for k in ENVS if k != "numpy" and (k != "torch" or HAVE_TORCH)]


def make_env(key: str) -> Env:
    return Env(key, *ENVS[key])


@pytest.fixture(params=[k if k != "torch" else pytest.param(
    k, marks=pytest.mark.skipif(not HAVE_TORCH, reason="torch not installed (optional)")) for k in ENVS])
def env(request) -> Env:
    """Every backend (use for layer and op tests with one or a few configurations each)."""
    return make_env(request.param)


@pytest.fixture(autouse=True)
def scoped_settings(request):
    """Every test runs inside ``xpcnn.using()``: what it sets (``config.set_*``, ``xpcnn.using``) ends with it,
    pass or fail. Code on a new ``threading.Thread`` sees the process defaults (xpcnn's worker threads take the
    caller's settings). A test marked ``process_settings`` (tests/test_config.py: the defaults themselves) runs
    outside any block."""
    if request.node.get_closest_marker("process_settings"):
        yield
        return
    with xpcnn.using():
        yield


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory):
    """A checkpoint written by `xpcnn train` (digits, one short epoch), for tests that only read it."""
    from xpcnn.cli import main
    p = tmp_path_factory.mktemp("trained") / "run.ckpt"
    assert main(["train", "--epochs", "1", "--limit", "40", "--quiet", "--threads", "1", "--checkpoint", str(p)]) == 0
    return p


@pytest.fixture
def one_blas_thread():
    """Small GEMMs on a shared 2-core machine: one BLAS thread is fastest and steadiest (threadpoolctl, optional)."""
    from xpcnn.threads import limit_blas

    with limit_blas(1, required=False):
        yield


@pytest.fixture
def np_env() -> Env:
    return make_env("numpy")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
