"""Parity across devices: NumPy against a second backend on the same seed and inputs.

The second backend is ``array_api_strict:device1`` everywhere (a simulated
second device: any array created on the default device, or any hidden host
round trip that lands on the wrong device, raises) and CuPy where a GPU exists
(``gpu`` marker; skipped with the reason otherwise, see ``gpu_support.py``).

Tolerances, on the maximum difference relative to the array's largest
magnitude (``xpcnn.tools.parity.difference``):

* ``TOL_F64 = 1e-10``: float64 has ~1e-16 unit round-off; different summation
  orders (NumPy's BLAS vs cuBLAS, tree vs pairwise reductions) move results by
  a few 1e-16 per op and by ~1e-13 after 50 training steps; 1e-10 still flags
  any real discrepancy (a wrong index or a dropped term gives O(1e-3..1)).
* ``TOL_F32 = 1e-4``: float32 has ~6e-8 unit round-off; per-op differences
  are ~1e-7 relative and grow through a deep net and 50 SGD steps to ~1e-5
  (measured NumPy vs torch-CPU here: 5e-6 worst after 50 steps of lenet);
  1e-4 is the loosest the project allows and keeps a 10x margin.

NumPy vs array_api_strict is bit-identical (strict wraps NumPy), so on this
machine the numbers prove the absence of device and standard violations; the
tolerance is what the CuPy run is held to.
"""
from __future__ import annotations

import numpy as np
import pytest

import xpcnn
from gpu_support import HAVE_CUPY, requires_cupy
from xpcnn.tools import parity
from xpcnn.cli import main

TOL_F64 = 1e-10
TOL_F32 = 1e-4

OTHER = [pytest.param("array_api_strict:device1", id="strict-device1"),
         pytest.param("cupy", marks=requires_cupy, id="cupy")]
DTYPES = [pytest.param("float64", id="f64"), pytest.param("float32", id="f32")]


def test_tolerances_are_the_libraries():
    assert parity.TOLERANCES == {"float64": TOL_F64, "float32": TOL_F32}


def _check(report: parity.ParityReport, dtype: str) -> None:
    assert report.tol == (TOL_F64 if dtype == "float64" else TOL_F32)
    assert report.rows, "nothing was compared"
    assert report.ok, "\n" + report.format()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("other", OTHER)
def test_every_op_forward_and_backward(other, dtype):
    report = parity.compare_ops(("numpy", other), dtype)
    _check(report, dtype)
    names = {r.name.rsplit(" ", 1)[0] for r in report.rows}
    for op in ("conv2d", "max_pool2d k3 s2 p1", "avg_pool2d k3 s2 p1", "batch_norm 4-D train", "linear",
               "cross_entropy", "im2col/col2im", "dropout", "log_softmax"):
        assert op in names


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("other", OTHER)
def test_every_layer(other, dtype, train):
    report = parity.compare_layers(("numpy", other), dtype, train=train)
    _check(report, dtype)
    whats = {(r.what, r.name.split(" ")[0]) for r in report.rows}
    assert ("grad_param", "Conv2d") in whats and ("buffer", "BatchNorm2d") in whats
    assert ("grad_input", "Dropout") in whats


@pytest.mark.parametrize("model", ["lenet", "vgg-small", "allcnn-gap"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("other", OTHER)
def test_full_training_step_layer_by_layer(other, dtype, model):
    report = parity.compare_models(("numpy", other), model, dtype, batch_size=2, steps=1)
    _check(report, dtype)
    n_layers = len(parity.build_pair(model, ("numpy", "numpy"), dtype)[0].layers)
    assert sum(r.what == "forward" for r in report.rows) == n_layers
    assert sum(r.what == "grad_input" for r in report.rows) == n_layers
    assert any(r.what == "buffer" for r in report.rows) == (model != "lenet")


@pytest.mark.parametrize("other", OTHER)
def test_resnet20_training_step_layer_by_layer(other):
    """Residual blocks nested in the model, compared block by block (float32 only: a few seconds)."""
    report = parity.compare_models(("numpy", other), "resnet20", "float32", batch_size=2, steps=1)
    _check(report, "float32")
    assert sum(r.what == "forward" and "Residual" in r.name for r in report.rows) == 9
    assert any(r.what == "grad_param" and r.name == "19.body.3.weight" for r in report.rows)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("other", OTHER)
def test_fifty_training_steps_of_a_small_cnn(other, dtype):
    report = parity.compare_models(("numpy", other), "digits-cnn", dtype, batch_size=8, steps=50)
    _check(report, dtype)
    assert any("after 51 steps" in r.name for r in report.rows)


def test_difference_measure():
    a = np.array([1.0, -4.0, 0.0])
    d = parity.difference(a, a + np.array([0.0, 0.0, 4e-6]), "x", "y", 1e-6)
    assert d.max_abs == pytest.approx(4e-6) and d.max_rel == pytest.approx(1e-6) and d.ok
    assert not parity.difference(a, a[:2], "x", "y", 1.0).ok  # shape mismatch
    assert not parity.difference(a, np.array([1.0, np.nan, 0.0]), "x", "y", 1.0).ok
    assert parity.difference(np.zeros(3), np.zeros(3), "x", "y", 0.0).ok


@pytest.fixture
def skewed_maxpool_backward(monkeypatch):
    """Make MaxPool2d's backward off by 1e-6 relative on array_api_strict only: a planted device bug."""
    from xpcnn.layers.pool import MaxPool2d

    original = MaxPool2d._backward

    def skewed(dy, ctx):
        dx = original(dy, ctx)
        return dx * (1 + 1e-6) if "array_api_strict" in type(dx).__module__ else dx

    monkeypatch.setattr(MaxPool2d, "_backward", staticmethod(skewed))


def test_parity_catches_a_planted_discrepancy(skewed_maxpool_backward):
    report = parity.compare_models(("numpy", "array_api_strict:device1"), "lenet", "float64")
    assert not report.ok
    bad = [r for r in report.rows if not r.ok]
    assert bad[0].what == "grad_input" and bad[0].name == "5 MaxPool2d"
    assert all(r.ok for r in report.rows if r.what == "forward")
    assert "FAIL" in report.format()


def test_parity_command_exit_codes(capsys, tmp_path, skewed_maxpool_backward):
    out = tmp_path / "parity.json"
    assert main(["parity", "--backends", "numpy,array_api_strict:device1", "--model", "lenet",
                 "--json", str(out)]) == 1
    text = capsys.readouterr()
    assert "5 MaxPool2d" in text.out and "FAIL" in text.out and "FAILED" in text.err
    import json
    assert json.loads(out.read_text())["ok"] is False


def test_parity_command_ok(capsys):
    assert main(["parity", "--backends", "numpy,array_api_strict:device1", "--model", "digits-cnn",
                 "--dtype", "float32", "--steps", "2", "--ops"]) == 0
    out = capsys.readouterr().out
    for what in ("forward", "grad_input", "grad_param", "0 Conv2d", "every functional op", "every layer"):
        assert what in out
    assert out.rstrip().endswith("parity: OK")
    assert main(["parity", "--backends", "numpy,array_api_strict", "--model", "lenet", "--quiet"]) == 0


def test_parity_command_usage_errors(capsys):
    assert main(["parity", "--backends", "numpy"]) == 2
    assert "exactly two" in capsys.readouterr().err
    assert main(["parity", "--backends", "numpy,nosuch"]) == 2
    assert "unknown backend 'nosuch'" in capsys.readouterr().err


@pytest.mark.skipif(HAVE_CUPY, reason="CuPy is usable here")
def test_parity_without_a_gpu_says_what_to_run_instead(capsys):
    assert main(["parity"]) == 2  # default: numpy,cupy
    err = capsys.readouterr().err
    assert "cupy" in err and "--backends numpy,array_api_strict:device1" in err


def test_dropout_masks_are_shared_for_parity():
    """Same masks on both sides: every dropout layer keeps the same values, bit for bit (the masks are host
    draws, independent of the thread count and summation order), so the outputs agree to float32 rounding.
    The outputs themselves are not compared bit for bit: NumPy's GEMMs sum in another order when the batch is
    split over threads."""
    ma, mb = parity.build_pair("vgg-small", ("numpy", "array_api_strict:device1"), "float32")
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32))
    ya, yb = xpcnn.to_numpy(ma(x)), xpcnn.to_numpy(mb(x))
    drops = [(a, b) for a, b in zip(ma, mb) if isinstance(a, xpcnn.Dropout)]
    assert drops and all(a._ctx is not None for a, _ in drops), "vgg-small trains with dropout"
    for a, b in drops:
        keep = xpcnn.to_numpy(a._ctx)
        assert 0 < keep.mean() < 1
        np.testing.assert_array_equal(keep, xpcnn.to_numpy(b._ctx))
    np.testing.assert_allclose(ya, yb, rtol=1e-4, atol=1e-5 * np.abs(ya).max())
