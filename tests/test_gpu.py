"""CuPy-only behaviour: moving models and optimizer state, device errors, no host sync in a training step.

Every test but the first needs CuPy and a CUDA device (``gpu`` marker; skipped
with the reason otherwise: see ``gpu_support.py``). Numerical parity with NumPy
is in ``test_parity.py``.
"""
from __future__ import annotations

import contextlib

import numpy as np
import pytest

import xpcnn
from gpu_support import HAVE_CUPY, gpu_count, needs_cupy
from xpcnn.models import build_model

TOL_F64 = 1e-10  # float64 NumPy vs CuPy, relative to the largest magnitude (see test_parity.py)


@pytest.mark.skipif(HAVE_CUPY, reason="CuPy is usable here, so the missing-CuPy error cannot be shown")
def test_missing_cupy_is_a_clear_error():
    with pytest.raises((ImportError, RuntimeError)) as e:
        xpcnn.Sequential(xpcnn.Linear(3, 2), backend="cupy")
    msg = str(e.value)
    assert "cupy" in msg and ("cuda12" in msg or "nvidia-smi" in msg)
    with pytest.raises((ImportError, RuntimeError)):
        xpcnn.Sequential(xpcnn.Linear(3, 2)).to("cupy")


# ------------------------------------------------------------------------------------------------
# everything below needs a GPU
# ------------------------------------------------------------------------------------------------
def _data(n=8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 1, 8, 8)), rng.integers(0, 10, n)


def _train(model, opt, steps, seed=0):
    loss_fn = xpcnn.CrossEntropyLoss()
    for s in range(steps):
        x, y = _data(seed=seed + s)
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        model.backward(loss_fn.backward())
        opt.step()
    return loss


def _rel(a, b) -> float:
    a, b = xpcnn.to_numpy(a).astype(np.float64), xpcnn.to_numpy(b).astype(np.float64)
    scale = max(np.abs(a).max(), np.abs(b).max(), 1e-300)
    return float(np.abs(a - b).max() / scale)


def _digits_bn(backend):
    return xpcnn.Sequential(
        xpcnn.Conv2d(1, 8, 3, padding=1), xpcnn.BatchNorm2d(8), xpcnn.ReLU(), xpcnn.MaxPool2d(2),
        xpcnn.Flatten(), xpcnn.Linear(8 * 16, 32), xpcnn.ReLU(), xpcnn.Dropout(0.0), xpcnn.Linear(32, 10),
        backend=backend, dtype="float64", seed=3)


@pytest.mark.parametrize("opt_name", ["SGD", "Adam"])
@needs_cupy
def test_round_trip_numpy_cupy_numpy_continues_training(opt_name):
    import cupy as cp

    make_opt = {"SGD": lambda ps: xpcnn.optim.SGD(ps, lr=0.05, momentum=0.9),
                "Adam": lambda ps: xpcnn.optim.Adam(ps, lr=1e-3)}[opt_name]
    ref = _digits_bn("numpy")
    ref_opt = make_opt(ref.parameters())
    _train(ref, ref_opt, 9)

    moved = _digits_bn("numpy")
    opt = make_opt(moved.parameters())
    _train(moved, opt, 3)
    assert moved.to("cupy") is moved
    assert moved.backend.spec == "cupy:0"
    for p in moved.parameters():
        assert isinstance(p.data, cp.ndarray) and isinstance(p.grad, cp.ndarray)
    for _, buf in moved.named_buffers():
        assert isinstance(buf, cp.ndarray)
    _train(moved, opt, 3, seed=3)
    for st in opt.state:  # optimizer state followed the parameters at the first step after the move
        for v in st.values():
            assert isinstance(v, cp.ndarray)
    moved.to("numpy")
    _train(moved, opt, 3, seed=6)
    for st in opt.state:
        for v in st.values():
            assert isinstance(v, np.ndarray)
    sd_ref, sd = ref.state_dict(), moved.state_dict()
    for k in sd_ref:
        assert _rel(sd_ref[k], sd[k]) < TOL_F64, k


@needs_cupy
def test_wrong_device_input_is_a_clear_error_and_host_input_is_moved():
    import cupy as cp

    gpu_model = _digits_bn("cupy")
    x, _ = _data()
    y = gpu_model(x)  # host NumPy input is moved automatically
    assert isinstance(y, cp.ndarray)
    assert y.device == cp.cuda.Device(0)

    cpu_model = _digits_bn("numpy")
    with pytest.raises(ValueError) as e:
        cpu_model(cp.asarray(x))
    assert "numpy" in str(e.value) and "model.to" in str(e.value) and "cupy" in str(e.value)

    import array_api_strict as xs
    with pytest.raises(ValueError) as e:
        gpu_model(xs.asarray(x))
    assert "cupy:0" in str(e.value) and "model.to" in str(e.value)


@needs_cupy
def test_training_step_makes_no_host_round_trip(monkeypatch):
    """Data on the device, a full step (forward, loss, backward, SGD) must not copy to the host or sync.

    ``cupyx.allow_synchronize(False)`` makes CuPy raise on any synchronisation it performs
    (device-to-host copies, ``float()``/``int()``/``bool()`` of a device array, stream syncs);
    on top, the ndarray conversions are patched to raise where CuPy lets us.
    """
    import cupy as cp
    import cupyx

    model = build_model("vgg-small", 3, 10, 32, backend="cupy", seed=0)
    rng = np.random.default_rng(0)
    x = model.backend.asarray(rng.standard_normal((4, 3, 32, 32)))
    labels = model.backend.asarray(rng.integers(0, 10, 4))
    loss_fn = xpcnn.CrossEntropyLoss()
    opt = xpcnn.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    # first step outside the guard: kernels compile, the pool grows, optimizer state is created
    for _ in range(2):
        opt.zero_grad()
        loss_fn(model(x), labels)
        model.backward(loss_fn.backward())
        opt.step()
    cp.cuda.Device().synchronize()

    def forbidden(*args, **kwargs):
        raise AssertionError("host round trip inside the training step")

    for name in ("get", "item", "tolist", "__float__", "__int__", "__bool__", "__index__"):
        try:
            monkeypatch.setattr(cp.ndarray, name, forbidden)
        except (TypeError, AttributeError):  # an immutable extension type: allow_synchronize still guards
            pass
    monkeypatch.setattr(cp, "asnumpy", forbidden)
    guard = cupyx.allow_synchronize(False) if hasattr(cupyx, "allow_synchronize") else contextlib.nullcontext()
    with guard:
        opt.zero_grad()
        loss = loss_fn(model(x), labels)
        model.backward(loss_fn.backward())
        opt.step()
    monkeypatch.undo()
    cp.cuda.Device().synchronize()
    assert np.isfinite(float(loss))


@needs_cupy
def test_dropout_and_batchnorm_train_on_the_gpu():
    import cupy as cp

    model = build_model("vgg-small", 3, 10, 32, backend="cupy", seed=0)
    opt = xpcnn.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = xpcnn.CrossEntropyLoss()
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((8, 3, 32, 32)), rng.integers(0, 10, 8)
    losses = []
    for _ in range(5):
        opt.zero_grad()
        losses.append(float(loss_fn(model(x), y)))
        model.backward(loss_fn.backward())
        opt.step()
    assert losses[-1] < losses[0]
    assert isinstance(model.state_dict()["1.running_mean"], cp.ndarray)
    assert int(model.state_dict()["1.num_batches_tracked"]) == 5


@needs_cupy
def test_conv_chunks_are_bounded_by_the_gpu_workspace_only():
    """On a GPU a convolution's batch is not cut into CPU cache-sized chunks: vgg-small's 32 -> 32 conv (1.2 MB
    of float32 columns a sample) runs a batch of 64 in one chunk (on a CPU: one sample a chunk); the results
    match NumPy's."""
    import cupy as cp
    from xpcnn.functional import conv2d_backward, conv2d_forward
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 32, 32, 32)).astype(np.float32)
    w = rng.standard_normal((32, 32, 3, 3)).astype(np.float32)
    y_gpu, ctx = conv2d_forward(cp.asarray(x), cp.asarray(w), None, 1, 1)
    assert ctx.nb == 64
    y_cpu, ctx_cpu = conv2d_forward(x, w, None, 1, 1)
    assert ctx_cpu.nb == 1
    assert _rel(y_gpu, y_cpu) < 1e-5
    dy = rng.standard_normal(y_cpu.shape).astype(np.float32)
    for g, c in zip(conv2d_backward(cp.asarray(dy), ctx), conv2d_backward(dy, ctx_cpu)):
        if c is not None:
            assert _rel(g, c) < 1e-5


@pytest.mark.skipif(gpu_count() < 2, reason="needs two CUDA devices (cupy:1)")
@needs_cupy
def test_second_gpu_is_respected():
    import cupy as cp

    model = _digits_bn("cupy:1")
    opt = xpcnn.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    with cp.cuda.Device(0):  # the current device is 0: everything must still live on 1
        _train(model, opt, 2)
    for p in model.parameters():
        assert p.data.device.id == 1 and p.grad.device.id == 1
    for st in opt.state:
        for v in st.values():
            assert v.device.id == 1
    ref = _digits_bn("numpy")
    _train(ref, xpcnn.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9), 2)
    for k, v in ref.state_dict().items():
        assert _rel(v, model.state_dict()[k]) < TOL_F64, k


@needs_cupy
def test_bench_measures_cupy_memory_and_parity_command(capsys):
    from xpcnn.tools.bench import run_benchmark
    from xpcnn.cli import main

    report = run_benchmark(["numpy", "cupy"], ["digits-cnn"], [4], repeats=2, layers=True, log=lambda m: None)
    rows = {r["backend"]: r for r in report["results"]}
    assert rows["cupy:0"]["peak_memory_bytes"] > 0 and "cupy" in rows["cupy:0"]["peak_memory_method"]
    assert any(lay["backend"] == "cupy:0" for lay in report["layers"])
    assert isinstance(report["machine"]["gpus"], list)
    assert main(["parity", "--backends", "numpy,cupy", "--model", "lenet", "--steps", "3"]) == 0
    assert main(["parity", "--backends", "numpy,cupy", "--model", "vgg-small", "--dtype", "float32"]) == 0
