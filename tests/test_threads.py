"""Intra-op worker threads (xpcnn.threads) and the malloc setting (xpcnn.malloc) on the NumPy backend.

Ops split over workers must give what the single-threaded ops give (float64, ~1e-12: only the order of
the partial sums over shards differs), on every conv path, and the same bits on every rerun.
"""
from __future__ import annotations

import threading

import numpy as np
import pytest

import xpcnn
from xpcnn import config, malloc, threads
from xpcnn.functional import conv2d_backward, conv2d_forward
from xpcnn.models import build_model


@pytest.fixture
def workers(monkeypatch):
    """``workers(n)``: enter a step with n worker threads (config.set_num_threads), left after the test. Shards
    of any size, so that the small test arrays are split too."""
    monkeypatch.setattr(threads, "MIN_SHARD_BYTES", 1)
    stack = []

    def enter(n):
        config.set_num_threads(n)
        cm = threads.step(np)
        stack.append(cm)
        return cm.__enter__()
    yield enter
    for cm in reversed(stack):
        cm.__exit__(None, None, None)


def _needs_threadpoolctl():
    pytest.importorskip("threadpoolctl", reason="worker threads run only where threadpoolctl can set BLAS to 1 thread")


def test_ranges_split_the_batch_into_contiguous_shards(workers, monkeypatch):
    assert threads.ranges(10) == [(0, 10)]  # outside a step: one shard
    _needs_threadpoolctl()
    assert workers(3) == 3 and threads.workers() == 3
    assert threads.ranges(10) == [(0, 4), (4, 7), (7, 10)]
    assert threads.ranges(2) == [(0, 1), (1, 2)]
    assert threads.ranges(1) == [(0, 1)]
    monkeypatch.setattr(threads, "MIN_SHARD_BYTES", 1024)
    assert threads.ranges(10, item_bytes=256) == [(0, 5), (5, 10)]  # >= 4 items per shard
    assert threads.ranges(10, item_bytes=1024) == [(0, 4), (4, 7), (7, 10)]
    assert threads.ranges(10, item_bytes=1) == [(0, 10)]  # too little work to split


def test_run_keeps_shard_order_uses_threads_and_reraises(workers):
    _needs_threadpoolctl()
    workers(2)
    seen = []

    def fn(a, b):
        seen.append(threading.current_thread().name)
        return (a, b)
    assert threads.run(fn, [(0, 3), (3, 5), (5, 9)]) == [(0, 3), (3, 5), (5, 9)]
    assert threading.current_thread().name in seen and any(s.startswith("xpcnn") for s in seen)

    def boom(a, b):
        if a:
            raise ValueError(f"shard {a}")
        return a
    with pytest.raises(ValueError, match="shard 2"):
        threads.run(boom, [(0, 2), (2, 4)])


def test_step_sets_blas_to_one_thread_and_restores_it():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        with threads.step(np) as n:
            assert n == 2 and threads.workers() == 2
            assert threads.blas_threads() == 1
            with threads.step(np) as inner:  # nested (a layer inside a model step): unchanged
                assert inner == 2
        assert threads.workers() == 1 and threads.blas_threads() == 2
    with threadpoolctl.threadpool_limits(1, user_api="blas"), threads.step(np) as n:
        assert n == 1  # follows the BLAS count


def test_step_is_a_no_op_off_numpy():
    strict = pytest.importorskip("array_api_strict")
    config.set_num_threads(4)
    with threads.step(strict) as n:
        assert n == 1 and threads.ranges(8) == [(0, 8)]


def test_set_num_threads_checks_its_argument():
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="positive int"):
            config.set_num_threads(bad)


CASES = [  # x shape, w shape, stride, padding, dilation, groups, algorithm
    ((5, 4, 9, 8), (6, 4, 3, 3), 1, 1, 1, 1, "auto"),          # ow-innermost columns, banded gradient
    ((5, 16, 7, 7), (8, 16, 3, 3), 1, 1, 1, 1, "auto"),        # channels-innermost, transposed gradient
    ((5, 16, 7, 7), (8, 16, 3, 3), 1, 1, 1, 1, "im2col_nhwc"),  # channels-innermost, col2im
    ((4, 16, 9, 9), (8, 16, 3, 3), 2, 1, 1, 1, "auto"),        # strided: input gradient by phases
    ((3, 4, 7, 6), (6, 2, 2, 3), 1, 2, 1, 2, "auto"),          # grouped
    ((5, 1, 12, 12), (6, 1, 5, 5), 1, 2, 1, 1, "auto"),        # width-blocked columns (B = 4), banded gradient
    ((4, 4, 9, 8), (6, 4, 3, 3), 2, 1, 1, 1, "im2col_blocked"),  # width-blocked, strided: col2im
    ((4, 16, 9, 9), (24, 16, 3, 3), 2, 1, 1, 1, "auto"),       # strided, more filters than channels: col2im
]


@pytest.mark.parametrize("case", CASES, ids=[f"case{i}" for i in range(len(CASES))])
@pytest.mark.parametrize("limit", [None, 1])  # 1 byte: one sample per chunk, several chunks per shard
def test_conv_on_workers_matches_one_thread(case, limit, workers):
    _needs_threadpoolctl()
    xs, ws, s, p, d, g, algo = case
    rng = np.random.default_rng(3)
    x, w, b = rng.standard_normal(xs), rng.standard_normal(ws), rng.standard_normal(ws[0])
    config.set_conv_algorithm(algo)
    config.set_workspace_limit(limit)
    y, ctx = conv2d_forward(x, w, b, s, p, d, g)
    dy = rng.standard_normal(y.shape)
    ref = (y,) + tuple(conv2d_backward(dy, ctx))
    assert workers(2) == 2
    runs = []
    for _ in range(2):
        y, ctx = conv2d_forward(x, w, b, s, p, d, g)
        runs.append((y,) + tuple(conv2d_backward(dy, ctx)))
    for name, a, r, again in zip(["y", "dx", "dw", "db"], runs[0], ref, runs[1]):
        np.testing.assert_allclose(a, r, rtol=1e-12, atol=1e-12, err_msg=name)
        np.testing.assert_array_equal(a, again, err_msg=f"{name}: rerun differs")


def _train_steps(threads, steps=3):
    model = build_model("vgg-small", 3, 10, 8, backend="numpy", dtype="float64", seed=0)
    opt = xpcnn.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss_fn = xpcnn.CrossEntropyLoss()
    rng = np.random.default_rng(0)
    x, labels = rng.standard_normal((6, 3, 8, 8)), rng.integers(0, 10, 6)
    with xpcnn.using(num_threads=threads):
        for _ in range(steps):
            opt.zero_grad()
            loss_fn(model(x), labels)
            model.backward(loss_fn.backward(), input_grad=False)
            opt.step()
    return model.state_dict()


def test_training_on_two_workers_matches_one():
    _needs_threadpoolctl()
    one, two = _train_steps(1), _train_steps(2)
    for k in one:
        np.testing.assert_allclose(xpcnn.to_numpy(two[k]), xpcnn.to_numpy(one[k]), rtol=1e-10, atol=1e-12,
                                   err_msg=k)


@pytest.fixture
def fresh_malloc(monkeypatch):
    monkeypatch.setattr(malloc, "_applied", None)
    for k in [k for k in __import__("os").environ if k.startswith("MALLOC_")]:
        monkeypatch.delenv(k)


def test_keep_freed_memory_is_applied_once_on_linux(fresh_malloc, monkeypatch):
    if not __import__("sys").platform.startswith("linux"):
        pytest.skip("glibc's mallopt: Linux only")
    calls = []
    real = malloc._mallopt
    monkeypatch.setattr(malloc, "_mallopt", lambda: calls.append(1) or real())
    first = malloc.keep_freed_memory()
    assert malloc.keep_freed_memory() == first and calls == [1]


def test_keep_freed_memory_respects_the_user(fresh_malloc, monkeypatch):
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")  # the user tunes malloc himself: leave it alone
    assert malloc.keep_freed_memory() is False
    monkeypatch.setattr(malloc, "_applied", None)
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    config.set_keep_freed_memory(False)
    assert malloc.keep_freed_memory() is False and malloc._applied is None


def _elementwise_ops(rng, special=None):
    """ReLU, batch norm (train and eval, 4-D and 2-D) and max pooling, forward and backward, on channels-last
    inputs: every output as a NumPy array."""
    from xpcnn import functional as F
    x = rng.standard_normal((5, 6, 7, 4)).transpose(0, 3, 1, 2) * 2 + 0.5  # NCHW view of NHWC memory
    dy = rng.standard_normal((5, 6, 7, 4)).transpose(0, 3, 1, 2)
    if special:
        dy[0, 0, 0, 0] = {"nan": np.nan, "inf": np.inf}[special]
    out = []
    y = F.relu(x)
    out += [y, F.relu_backward(dy, y)]
    for xs, dys in ((x, dy), (x[:, :, 0, 0], dy[:, :, 0, 0])):
        c = xs.shape[1]
        w, b, rm, rv = rng.standard_normal(c), rng.standard_normal(c), rng.standard_normal(c), rng.uniform(1, 2, c)
        for training in (True, False):
            yb, nrm, nrv, ctx = F.batch_norm_forward(xs, w, b, rm, rv, training)
            out += [yb, nrm, nrv, *F.batch_norm_backward(dys, ctx)]
            yb, _, _, ctx = F.batch_norm_forward(xs, None, None, None, None, training or True)
            out += [yb, F.batch_norm_backward(dys, ctx)[0]]
    for k, s, p in ((2, 2, 0), (3, 2, 1)):
        yp, ctx = F.max_pool2d_forward(x, k, s, p)
        out += [yp, F.max_pool2d_backward(rng.standard_normal(yp.shape), ctx)]
    return out


@pytest.mark.parametrize("special", [None, "nan", "inf"])
def test_elementwise_kernels_on_workers_match_the_portable_ops(special, workers):
    """The NumPy kernels (out=, sharded) against the portable code: float64, 1e-12; the same bits on rerun and
    on one worker; inf/NaN in the gradient handled as the portable path does."""
    _needs_threadpoolctl()
    with xpcnn.using(fast_paths=False):
        ref = _elementwise_ops(np.random.default_rng(5), special)
    one = _elementwise_ops(np.random.default_rng(5), special)
    workers(2)
    two = _elementwise_ops(np.random.default_rng(5), special)
    again = _elementwise_ops(np.random.default_rng(5), special)
    for i, (r, a, b, c) in enumerate(zip(ref, one, two, again)):
        np.testing.assert_allclose(a, r, rtol=1e-12, atol=1e-12, err_msg=f"output {i}: kernel vs portable")
        np.testing.assert_allclose(b, r, rtol=1e-12, atol=1e-12, err_msg=f"output {i}: 2 workers vs portable")
        np.testing.assert_array_equal(b, c, err_msg=f"output {i}: rerun differs")
        if getattr(r, "ndim", 0) == 4:
            assert b.strides == r.strides or b.shape[1] == 1, f"output {i}: memory layout changed"


def test_nested_shards_run_inline(workers):
    """An op called inside a shard (where_zero inside a pooling shard) is not split again: the pool's threads
    are busy with the outer shards, so waiting on them would deadlock."""
    _needs_threadpoolctl()
    workers(2)
    inner = threads.run(lambda a, b: threads.ranges(8), [(0, 1), (1, 2)])
    assert inner == [[(0, 8)], [(0, 8)]]
    assert threads.ranges(8) == [(0, 4), (4, 8)]


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="os.fork: POSIX only")
def test_a_forked_child_gets_a_working_pool(workers):
    """After a fork only the forking thread exists: the child must not wait on the parent's pool threads."""
    import os
    _needs_threadpoolctl()
    workers(2)
    assert threads.run(lambda a, b: b - a, [(0, 1), (1, 3)]) == [1, 2]  # the parent's pool exists now
    pid = os.fork()
    if pid == 0:  # child: a 2-shard run must finish; exit code 0 if it does, and never return into pytest
        ok = False
        try:
            config.set_num_threads(2)
            with threads.step(np):
                ok = threads.run(lambda a, b: b - a, [(0, 1), (1, 3)]) == [1, 2]
        finally:
            os._exit(0 if ok else 1)
    for _ in range(200):  # up to 10 s
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        __import__("time").sleep(0.05)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung on the parent's worker pool")
    assert os.waitstatus_to_exitcode(status) == 0


def test_workspace_limit_holds_for_all_workers_together(workers):
    """Each worker has its own column buffer: together they stay under the workspace limit."""
    _needs_threadpoolctl()
    from xpcnn.functional.conv import planner
    x, w = np.ones((8, 4, 10, 10)), np.ones((3, 4, 3, 3))
    sample = 10 * 10 * 9 * 4 * 8  # one sample's columns, float64 bytes
    config.set_workspace_limit(4 * sample)
    assert conv2d_forward(x, w, None, 1, 1)[1].nb == 4
    workers(2)
    y, ctx = conv2d_forward(x, w, None, 1, 1)
    assert ctx.nb == 2 and planner.batch_chunk(8, sample // 8, 8, "im2col", shards=2) == 2
    np.testing.assert_allclose(y[:, :, 1:-1, 1:-1], 36.0)


def test_conv_splits_the_batch_only_where_each_shard_has_work(workers, monkeypatch):
    """A convolution runs on the worker threads, forward and backward, only where each shard gets
    MIN_SHARD_BYTES of columns (or of input, for a 1x1 convolution's input rows): smaller batches lost more to
    the handoff and the GIL than they gained (LeNet step at 2 threads, batch 16: 2.8-3.0 ms split, 2.25
    not)."""
    _needs_threadpoolctl()
    from xpcnn.functional import conv as C
    workers(2)
    monkeypatch.setattr(threads, "MIN_SHARD_BYTES", 2 ** 20)
    shard_lists = []
    real_run = threads.run
    monkeypatch.setattr(threads, "run", lambda fn, parts: shard_lists.append(len(parts)) or real_run(fn, parts))
    rng = np.random.default_rng(0)
    # float64, 1 -> 6 channels, 5x5 at 28x28: a sample's columns are 28 * 7 * 5 * 8 * 8 bytes = 62.7 KiB
    for n, forward, backward in ((16, [], [1]), (40, [2], [2])):
        x, w = rng.standard_normal((n, 1, 28, 28)), rng.standard_normal((6, 1, 5, 5))
        shard_lists.clear()
        y, ctx = conv2d_forward(x, w, None, 1, 2)
        assert ctx.algorithm == "im2col_blocked" and ctx.block == 4
        assert shard_lists == forward  # one shard and one chunk: no call at all
        C.conv2d_backward(rng.standard_normal(y.shape), ctx)
        assert shard_lists[len(forward):] == backward
    x, w = rng.standard_normal((4, 16, 100, 100)), rng.standard_normal((8, 16, 1, 1))  # input rows: 1.2 MiB a sample
    shard_lists.clear()
    conv2d_forward(x, w)
    assert shard_lists == [2]
