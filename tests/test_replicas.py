"""Worker processes (xpcnn.replicas): the batch split over processes that each run the whole model.

What a model computes on worker processes must equal what it computes in one process (float64, ~1e-13: only
the order of the gradient sums over shards differs), for outputs, loss, parameter and input gradients, over
several training steps; models that couple the samples of a batch must stay in one process; a worker's
failure must surface as an error here and leave the model usable.
"""
from __future__ import annotations

import copy
import gc
import glob
import os
import pickle
import threading
import time
from multiprocessing import Pipe

import numpy as np
import pytest

import xpcnn
from xpcnn import config, parallel, replicas
from xpcnn.models import build_model

pytestmark = pytest.mark.skipif(os.name != "posix", reason="worker processes need a POSIX system")


@pytest.fixture
def processes():
    """``processes(n)``: n workers in all (this process and n - 1 worker processes); restored afterwards."""
    def enter(n):
        config.set_parallel_mode("processes")
        config.set_num_threads(n)
    yield enter
    config.set_parallel_mode(None)
    config.set_num_threads(None)


def _lenet(dtype="float64", seed=0):
    return build_model("lenet", 1, 10, 28, backend="numpy", dtype=dtype, seed=seed)


def _data(n, seed=1, shape=(1, 28, 28)):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n,) + shape), rng.integers(0, 10, n)


def _step(model, x, labels, input_grad=True):
    """Loss, output, input gradient and parameter gradients of one forward/backward (gradients zeroed first)."""
    model.zero_grad()
    loss_fn = xpcnn.CrossEntropyLoss()
    out = model.forward(x)
    loss = float(loss_fn(out, labels))
    dx = model.backward(loss_fn.backward(), input_grad=input_grad)
    return loss, np.array(out), dx, [np.array(p.grad) for p in model.parameters()]


def _lenet_on_workers():
    """A float64 LeNet that ran a batch of 64 on 2 processes (its workers started), and that batch."""
    model = _lenet()
    x, labels = _data(64)
    model.forward(x)
    assert model._replicas is not None
    return model, x, labels


def _in_one_process(fn, *args):
    """``fn(*args)`` with the batch in this process (per-op threads), then back to worker processes."""
    config.set_parallel_mode("threads")
    try:
        return fn(*args)
    finally:
        config.set_parallel_mode("processes")


def _assert_same(a, b):
    (la, ya, dxa, ga), (lb, yb, dxb, gb) = a, b
    assert la == pytest.approx(lb, rel=1e-13)
    np.testing.assert_allclose(ya, yb, rtol=1e-12, atol=1e-14)
    if dxa is None:
        assert dxb is None
    else:
        np.testing.assert_allclose(dxa, dxb, rtol=1e-12, atol=1e-14)
    for g, h in zip(ga, gb):
        np.testing.assert_allclose(g, h, rtol=1e-11, atol=1e-14)


@pytest.mark.parametrize("n, batch", [(2, 64), (3, 50)])
def test_processes_give_the_single_process_results(processes, n, batch):
    x, labels = _data(batch)
    one = _step(_lenet(), x, labels)
    processes(n)
    model = _lenet()
    many = _step(model, x, labels)
    assert model._replicas is not None and len(model._replicas.workers) == n - 1  # the path was taken
    assert model._replicas.parts == parallel.even_ranges(0, batch, n)
    _assert_same(many, one)
    _assert_same(_step(model, x, labels, input_grad=False), _step(_lenet(), x, labels, input_grad=False))


def test_training_steps_keep_workers_in_step_with_the_parameters(processes):
    """Each forward sends the current parameters: after SGD steps (and a load_state_dict) the results still match."""
    x, labels = _data(64)
    ref, par = _lenet(), _lenet()
    processes(2)
    for model in (ref, par):
        config.set_parallel_mode("threads" if model is ref else "processes")
        opt = xpcnn.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        losses = []
        for _ in range(3):
            losses.append(_step(model, x, labels)[0])
            opt.step()
        model.losses = losses
    assert par.losses == pytest.approx(ref.losses, rel=1e-12)
    assert par.losses[-1] < par.losses[0]
    fresh = _lenet(seed=5)
    par.load_state_dict(fresh.state_dict())
    config.set_parallel_mode("processes")
    _assert_same(_step(par, x, labels), _step(_lenet(seed=5), x, labels))


def _bn_net(seed=3, dropout=0.0):
    return xpcnn.Sequential(xpcnn.Conv2d(3, 4, 3, padding=1), xpcnn.BatchNorm2d(4), xpcnn.ReLU(),
                            xpcnn.MaxPool2d(2), xpcnn.Dropout(dropout), xpcnn.Flatten(), xpcnn.Linear(4 * 4 * 4, 8),
                            xpcnn.BatchNorm1d(8), xpcnn.ReLU(), xpcnn.Linear(8, 10),
                            backend="numpy", dtype="float64", seed=seed)


@pytest.mark.parametrize("n, batch", [(2, 64), (3, 50)])
def test_batch_norm_in_training_uses_the_whole_batch_statistics(processes, n, batch):
    """Batch norm sums its statistics over the processes' shards: outputs, gradients and running statistics
    equal one process's over training steps, and eval mode then uses the running statistics."""
    x, labels = _data(batch, shape=(3, 8, 8))
    ref, par = _bn_net(), _bn_net()
    processes(n)
    for model in (ref, par):
        config.set_parallel_mode("threads" if model is ref else "processes")
        opt = xpcnn.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        model.results = []
        for _ in range(2):
            model.results.append(_step(model, x, labels))
            opt.step()
        model.eval()
        model.results.append(np.array(model.forward(x)))
    assert par._replicas is not None and len(par._replicas.workers) == n - 1
    for a, b in zip(par.results[:2], ref.results[:2]):
        _assert_same(a, b)
    np.testing.assert_allclose(par.results[2], ref.results[2], rtol=1e-12, atol=1e-14)
    for (name, a), (_, b) in zip(par.named_buffers(), ref.named_buffers()):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14, err_msg=name)


def test_dropout_in_training_draws_the_single_process_masks(processes):
    """Every process draws the whole batch's mask from the same generator state and keeps its rows: the same
    masks, outputs and gradients as one process, and the generator ends where one process's does."""
    x, labels = _data(64, shape=(3, 8, 8))
    ref, par = _bn_net(dropout=0.5), _bn_net(dropout=0.5)
    processes(2)
    assert replicas.why_not(par) is None
    for model in (ref, par):
        config.set_parallel_mode("threads" if model is ref else "processes")
        model.results = [_step(model, x, labels) for _ in range(2)]
    assert par._replicas is not None
    for a, b in zip(par.results, ref.results):
        _assert_same(a, b)
    assert not np.array_equal(par.results[0][1], par.results[1][1])  # the masks changed between steps
    assert par.layers[4].source().state_dict() == ref.layers[4].source().state_dict()


def test_a_failure_here_stops_workers_waiting_for_batch_statistics(processes, monkeypatch):
    processes(2)
    model, ref = _bn_net(), _bn_net()
    x, labels = _data(64, shape=(3, 8, 8))
    model.forward(x)
    workers = model._replicas

    def boom(x):
        raise ValueError("boom")
    monkeypatch.setattr(model.layers[1], "forward", boom)  # this process fails before its first batch norm sum
    with pytest.raises(ValueError, match="boom"):
        model.forward(x)
    monkeypatch.undo()
    assert model._replicas is workers and not workers.closed  # the worker was stopped and answered
    _assert_same(_step(model, x, labels), _in_one_process(_step, ref, x, labels))


def test_what_stays_in_this_process(processes):
    processes(2)
    model = _lenet()
    x, _ = _data(2 * replicas.MIN_SHARD - 1)
    model.forward(x)
    assert model.__dict__.get("_replicas") is None  # too small a batch to split
    config.set_num_threads(1)
    model.forward(_data(64)[0])
    assert model.__dict__.get("_replicas") is None  # one worker
    config.set_num_threads(2)
    config.set_parallel_mode("threads")
    model.forward(_data(64)[0])
    assert model.__dict__.get("_replicas") is None  # the default mode
    custom = type("Custom", (xpcnn.Module,), {"forward": lambda self, x: x, "backward": lambda self, dy: dy})
    assert "not known to treat the samples" in replicas.why_not(xpcnn.Sequential(custom(), backend="numpy"))


def test_a_changed_model_gets_fresh_workers_and_bad_input_leaves_them_usable(processes):
    processes(2)
    model, x, labels = _lenet_on_workers()
    first = model._replicas
    model.layers[-1] = xpcnn.Linear(84, 10)
    model.layers[-1].bind(model.backend, np.random.default_rng(7))
    ref = copy.deepcopy(model)
    got = _step(model, x, labels)
    assert model._replicas is not first and first.closed
    _assert_same(got, _in_one_process(_step, ref, x, labels))
    with pytest.raises(ValueError, match="input channels"):
        model.forward(np.zeros((64, 3, 28, 28)))
    with pytest.raises(ValueError, match=r"gradient of shape \(32, 10\) does not match the output \(64, 10\)"):
        model.forward(x)
        model.backward(np.zeros((32, 10)))
    want = _in_one_process(_step, ref, x, labels)
    _assert_same(_step(model, x, labels), want)


def test_a_dead_worker_is_an_error_and_the_next_step_starts_new_ones(processes):
    processes(2)
    model, x, labels = _lenet_on_workers()
    dead = model._replicas
    dead.workers[0].proc.kill()
    dead.workers[0].proc.wait()
    with pytest.raises(RuntimeError, match="worker process .* exited"):
        model.forward(x)
    assert dead.closed
    _assert_same(_step(model, x, labels), _in_one_process(_step, _lenet(), x, labels))
    assert model._replicas is not dead


def test_workers_and_their_shared_files_go_with_the_model(processes):
    processes(2)
    model = _lenet()
    model.forward(_data(64)[0])
    procs = [w.proc for w in model._replicas.workers]
    paths = [model._replicas.state.path] + [w.io.path for w in model._replicas.workers]
    assert paths == [None] * len(paths)  # unlinked once the workers mapped them
    del model
    gc.collect()
    for p in procs:
        assert p.wait(timeout=10) == 0


def test_models_pickle_and_copy_without_caches_or_workers(processes):
    processes(2)
    model, x, labels = _lenet_on_workers()
    clone = pickle.loads(pickle.dumps(model))
    assert "_replicas" not in clone.__dict__ and clone.backend.spec == "numpy"
    assert all(getattr(m, "_ctx", None) is None for m in clone.modules())
    config.set_parallel_mode("threads")
    _assert_same(_step(clone, x, labels), _step(_lenet(), x, labels))
    drop = xpcnn.Sequential(xpcnn.Flatten(), xpcnn.Dropout(0.5), backend="numpy", dtype="float64")
    first = drop.forward(x)
    again = copy.deepcopy(drop)  # continues the mask stream where the original stands
    np.testing.assert_array_equal(again.forward(x), drop.forward(x))
    assert not np.array_equal(again.forward(x), first)


def test_parallel_mode_is_validated():
    with pytest.raises(ValueError, match="parallel mode"):
        config.set_parallel_mode("gpus")
    config.set_parallel_mode(None)
    assert config.get_parallel_mode() == "threads"


def test_no_shared_files_are_left_behind():
    gc.collect()
    assert not glob.glob("/dev/shm/xpcnn-*")


def test_workers_compute_with_this_process_settings(processes):
    """The library settings and NumPy's floating-point error handling travel with each forward."""
    processes(2)
    model = _lenet("float32")
    x, _ = _data(64)
    try:
        config.set_conv_algorithm("im2col")
        config.set_workspace_limit(4096)
        with np.errstate(over="raise", invalid="ignore"):
            model.forward(x)
            want = (config.snapshot(), np.geterr())
        assert model._replicas.settings() == [want]
        assert want[0]["conv_algorithm"] == "im2col" and want[1]["over"] == "raise"
    finally:
        config.set_conv_algorithm(None)
        config.set_workspace_limit(None)
    model.forward(x)
    assert model._replicas.settings() == [(config.snapshot(), np.geterr())] != [want]
    config.restore(want[0])
    assert config.snapshot() == want[0]
    config.set_conv_algorithm(None)
    config.set_workspace_limit(None)


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")  # Python 3.12+ on fork
def test_a_forked_copy_of_this_process_starts_its_own_workers(processes):
    processes(2)
    model, x, labels = _lenet_on_workers()
    mine = model._replicas
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its own workers, the parent's untouched
        ok = False
        try:
            model.forward(x)
            ok = model._replicas is not mine and model._replicas.pid == os.getpid()
        finally:
            os.write(write, b"1" if ok else b"0")
            os._exit(0)
    os.close(write)
    assert os.read(read, 1) == b"1"
    os.waitpid(pid, 0)
    assert model._replicas is mine and not mine.closed
    _assert_same(_step(model, x, labels), _in_one_process(_step, _lenet(), x, labels))


def test_no_room_for_shared_memory_is_a_clear_error(monkeypatch):
    def full(fd, offset, length):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "posix_fallocate", full, raising=False)  # /dev/shm and the temporary directory full
    with pytest.raises(RuntimeError, match="MiB of shared memory.*No space left.*set_parallel_mode"):
        replicas._SharedFile(10 * 2 ** 20)
    import tempfile
    assert not glob.glob("/dev/shm/xpcnn-*") + glob.glob(os.path.join(tempfile.gettempdir(), "xpcnn-*"))


def test_a_nested_sequential_runs_inside_its_parent_s_shards(processes):
    def net():
        inner = xpcnn.Sequential(xpcnn.Conv2d(3, 4, 3), xpcnn.BatchNorm2d(4), xpcnn.ReLU(), backend="numpy",
                                 dtype="float64", seed=1)
        return xpcnn.Sequential(inner, xpcnn.Flatten(), xpcnn.Linear(4 * 6 * 6, 10), backend="numpy",
                                dtype="float64", seed=2)
    x, labels = _data(64, shape=(3, 8, 8))
    processes(2)
    model = net()
    got = _step(model, x, labels)
    assert model._replicas is not None and model.layers[0].__dict__.get("_replicas") is None
    _assert_same(got, _in_one_process(_step, net(), x, labels))


def test_pipes_are_polled_before_a_blocking_read(processes, monkeypatch):
    """A process polls its pipe for up to the spin time, then reads blocking (a later message still arrives);
    it spins only where every process has a CPU of its own, and the workers get this process's choice."""
    reader, writer = Pipe(duplex=False)
    writer.send("waiting")
    assert replicas._receive(reader, 0.5) == "waiting"
    timer = threading.Timer(0.05, lambda: writer.send("later"))
    timer.start()
    start = time.perf_counter()
    assert replicas._receive(reader, 0.001) == "later"
    assert time.perf_counter() - start >= 0.04
    timer.join()
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert (replicas._spin_time(2), replicas._spin_time(3)) == (replicas.SPIN_S, 0.0)
    processes(2)
    model, x, labels = _lenet_on_workers()
    assert [w.spin for w in model._replicas.workers] == [replicas.SPIN_S]
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)  # fewer CPUs than processes
    fresh, _, _ = _lenet_on_workers()
    assert [w.spin for w in fresh._replicas.workers] == [0.0]
    assert np.allclose(fresh.forward(x), model.forward(x))
