"""The interleaving of the benchmarks' one timer (xpcnn.tools.bench.timing), as ``benchmarks/bench_cpu.py`` and
``xpcnn bench`` use it: blocks of timed calls, each after untimed calls per switch."""
from __future__ import annotations

import importlib.util
import os

from xpcnn.tools.bench import timing


def _bench_cpu():
    path = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "bench_cpu.py")
    spec = importlib.util.spec_from_file_location("bench_cpu", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _recorder():
    calls = []
    return calls, {k: (lambda k=k: calls.append(k)) for k in "ab"}


def test_bench_cpu_alternates_blocks_after_an_untimed_call():
    calls, fns = _recorder()
    times = _bench_cpu().time_steps(fns, reps=5, warmup=1, block=2)
    assert [len(t) for t in times.values()] == [5, 5]
    # warm-up a b; then per turn: one untimed call and up to 2 timed ones
    assert "".join(calls) == "ab" + "aaa" + "bbb" + "aaa" + "bbb" + "aa" + "bb"
    calls.clear()
    only = _bench_cpu().time_steps({"a": fns["a"]}, reps=4, warmup=0, block=3)
    assert len(only["a"]) == 4 and "".join(calls) == "aaaa"  # one function: nothing untimed


def test_bench_cpu_block_1_alternates_single_steps_with_nothing_untimed():
    calls, fns = _recorder()
    times = _bench_cpu().time_steps(fns, reps=3, warmup=0, block=1)
    assert [len(t) for t in times.values()] == [3, 3] and "".join(calls) == "ababab"


def test_xpcnn_bench_alternates_blocks_of_half_the_repeats():
    calls, fns = _recorder()
    times = timing.time_interleaved([fns["a"], fns["b"]], [lambda: None] * 2, warmup=1, repeats=4, settle=0)
    assert [len(t) for t in times] == [4, 4]
    assert "".join(calls) == "a" + "b" + "aaa" + "bbb" + "aaa" + "bbb"


def test_xpcnn_bench_settles_each_turn_for_the_settle_time(monkeypatch):
    """Each turn starts with untimed calls for at least ``settle`` seconds (the other framework's threads go
    idle meanwhile), then its block of timed calls. On a clock that each call advances by 2**-10 s (exact in
    binary), so that the test depends on no scheduler: the turn's settle covers 11 calls (10.7 ms >= 10 ms)."""
    clock = [0.0]
    monkeypatch.setattr(timing.time, "perf_counter", lambda: clock[0])
    log = []

    def make(name):
        def fn():
            log.append((name, clock[0]))
            clock[0] += 2.0 ** -10
        return fn
    times = timing.time_interleaved([make("a"), make("b")], [lambda: None] * 2, warmup=0, repeats=4, settle=0.01)
    assert [len(t) for t in times] == [4, 4] and all(t == [2.0 ** -10] * 4 for t in times)
    turns = []  # (name, [call start times]) per run of one function
    for name, t in log:
        if not turns or turns[-1][0] != name:
            turns.append((name, []))
        turns[-1][1].append(t)
    assert [name for name, _ in turns] == ["a", "b", "a", "b"]
    for _, starts in turns:
        untimed = len(starts) - 2  # blocks of two timed calls
        assert untimed == 11  # the first call that ends at or past start + 10 ms is the last untimed one
        assert starts[untimed] - starts[0] >= 0.01
