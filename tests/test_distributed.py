"""Data parallelism over MPI (xpcnn.distributed): N ranks against one process, under a real ``mpiexec``.

Each test launches few jobs (an mpiexec start costs about a second). Skipped with the reason where mpi4py or
mpiexec is missing (``pip install -e ".[mpi]"``).
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import xpcnn
from xpcnn import distributed
from xpcnn.checkpoint import Checkpoint
from xpcnn.cli import main

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import mpi_job  # noqa: E402

try:
    MPIEXEC = distributed.find_mpiexec()
    WHY_NOT = None
except distributed.MPIUnavailable as e:
    MPIEXEC, WHY_NOT = None, str(e)
needs_mpi = pytest.mark.skipif(MPIEXEC is None, reason=f"no MPI here: {WHY_NOT}")
TIMEOUT = 120  # s: a hung job fails the test instead of hanging the suite


def mpiexec(n: int, *args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([MPIEXEC, "-n", str(n), sys.executable, *args], capture_output=True, text=True,
                          timeout=TIMEOUT, **kw)


def _rel(a, b) -> float:
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300)) if np.size(b) else 0.0


def test_shards_partition_every_batch_longer_ones_first():
    for n in range(1, 12):
        for size in range(1, 5):
            parts = [distributed.shard_range(n, r, size) for r in range(size)]
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
            lengths = [b - a for a, b in parts]
            assert max(lengths) - min(lengths) <= 1 and lengths == sorted(lengths, reverse=True)


def test_the_optimizer_wrapper_is_the_optimizer_to_its_callers():
    import copy

    import xpcnn
    model = xpcnn.build_model("digits-cnn", 1, 10, 8)
    inner = xpcnn.optim.SGD(model.parameters(), lr=0.1)
    opt = distributed.DistributedOptimizer(inner)
    opt.lr = 0.25  # fit's schedule sets it
    assert inner.lr == 0.25 and opt.params is inner.params and opt.state_dict()["lr"] == 0.25
    assert copy.deepcopy(opt).lr == 0.25


def test_one_process_hooks_are_no_ops():
    comm = distributed.Communicator()
    v = np.arange(3.0)
    assert distributed.batch_sum(v, 7) == (v, 7) and distributed.batch_rows(5) == (0, 5)
    with distributed.sharded_batch(distributed.Shard(0, 2, 4, comm)):  # one rank: not sharded at all
        assert distributed.batch_sum(v, 7)[1] == 7 and distributed.batch_rows(5) == (0, 5)
    assert not comm.any(False) and comm.any(True)


class _TwinRanks(distributed.Communicator):
    """Two ranks holding the same values, without MPI: the all-reduce sums a buffer with its copy."""
    size = 2

    def __init__(self):
        self.reduced = []

    def allreduce_(self, buf):
        self.reduced.append(buf)
        buf *= 2
        return buf


def test_allreduce_flat_reduces_one_flat_buffer_in_place_and_several_arrays_through_one_buffer():
    comm, rng = _TwinRanks(), np.random.default_rng(0)
    flat = rng.standard_normal(10)
    expected = 2 * (0.25 * flat)
    comm.allreduce_flat([flat], 0.25)  # a flat optimizer's gradients: reduced where they lie
    np.testing.assert_array_equal(flat, expected)
    assert len(comm.reduced) == 1 and np.shares_memory(comm.reduced[0], flat)
    grid = rng.standard_normal((4, 6))
    parts = [rng.standard_normal((2, 3)), grid[:, ::2], rng.standard_normal(5)]  # one of them strided
    expected = [2 * (0.5 * p) for p in parts]
    comm.allreduce_flat(parts, 0.5)
    for p, e in zip(parts, expected):
        np.testing.assert_array_equal(p, e)
    assert len(comm.reduced) == 2 and comm.reduced[1].size == sum(p.size for p in parts)


@needs_mpi
def test_two_and_three_ranks_train_as_one_process_and_reruns_are_bit_identical(tmp_path):
    """LeNet (SGD, Nesterov, weight decay) and a batch-norm + dropout model (Adam), 10 steps, float64, unequal
    shards and an uneven last batch: weights, buffers and optimizer state equal one process's to 1e-10."""
    ref = mpi_job.train_states(distributed.Communicator())
    runs = {}
    for n, tag in ((2, "a"), (3, "a"), (2, "b")):
        out = tmp_path / f"{n}{tag}.npz"
        r = mpiexec(n, "-m", "mpi4py", str(HERE / "mpi_job.py"), str(out))
        assert r.returncode == 0, r.stderr
        runs[n, tag] = dict(np.load(out))
    for n in (2, 3):
        got = runs[n, "a"]
        assert int(got["ranks"]) == n and bool(got["ranks_agree"])  # every rank holds the same bits
        assert "bn_strict.1.running_var" in got or "bn_strict.1.running_var" not in ref
        for name in ("lenet", "bn"):  # rank 0 trained on its shard only: 10 -> 5 (2 ranks) or 4 (3), 5 -> 3 or 2
            assert list(got[f"{name}.shard_sizes"]) == ([5, 5, 5, 3] * 3 if n == 2 else [4, 4, 4, 2] * 3)[:10]
        for key, want in ref.items():
            if not key.endswith("shard_sizes"):
                assert _rel(got[key], want) <= 1e-10, (n, key)
    assert set(runs[2, "a"]) == set(runs[2, "b"])
    for key in runs[2, "a"]:
        assert np.array_equal(runs[2, "a"][key], runs[2, "b"][key]), key  # reruns: the same bits


@needs_mpi
def test_ranks_train_as_one_process_on_the_gpu_plan(tmp_path):
    """The same jobs on the GPU plan (batch norm's plain form: its sums reduced over the ranks in forward and
    backward, the backward's two in one allreduce): 2 and 3 ranks equal one process to 1e-10."""
    with xpcnn.using(plan="gpu"):  # here; the ranks' processes get it by XPCNN_PLAN
        ref = mpi_job.train_states(distributed.Communicator())
    for n in (2, 3):
        out = tmp_path / f"{n}.npz"
        r = mpiexec(n, "-m", "mpi4py", str(HERE / "mpi_job.py"), str(out), env={**os.environ, "XPCNN_PLAN": "gpu"})
        assert r.returncode == 0, r.stderr
        got = dict(np.load(out))
        assert int(got["ranks"]) == n and bool(got["ranks_agree"]) and bool(got["gpu_plan"])
        for key, want in ref.items():
            if not key.endswith("shard_sizes"):
                assert _rel(got[key], want) <= 1e-10, (n, key)


TRAIN = ["train", "--limit", "120", "--batch-size", "25", "--dtype", "float64", "--quiet"]


@needs_mpi
def test_workers_train_as_one_process_and_rank_0_alone_writes(tmp_path, capsys):
    """`xpcnn train --workers 2` (mpiexec underneath) against one process: the same checkpoint, one metrics line
    per epoch, one set of lines on stdout, no stray files."""
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    opts = TRAIN + ["--epochs", "2"]
    assert main(opts + ["--checkpoint", str(one / "run.ckpt"), "--metrics", str(one / "m.jsonl")]) == 0
    capsys.readouterr()
    r = subprocess.run([sys.executable, "-m", "xpcnn.cli", *opts, "--workers", "2", "--checkpoint",
                        str(two / "run.ckpt"), "--metrics", str(two / "m.jsonl")],
                       capture_output=True, text=True, timeout=TIMEOUT, cwd=two)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("xpcnn train: starting 2 MPI ranks: mpiexec -n 2")
    assert r.stdout.count("test accuracy") == 1
    # rank 0's outputs and the locks it held on them (xpcnn.files), nothing from the other rank
    assert sorted(p.name for p in two.iterdir()) == [".m.jsonl.lock", ".run.ckpt.lock", "m.jsonl", "run.ckpt"]
    lines = [json.loads(line) for line in (two / "m.jsonl").read_text().splitlines()]
    want = [json.loads(line) for line in (one / "m.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2]
    for a, b in zip(lines, want):
        for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy"):
            assert a[key] == pytest.approx(b[key], rel=1e-10), key
    a, b = Checkpoint(two / "run.ckpt"), Checkpoint(one / "run.ckpt")
    for key, value in b.model_state.items():
        assert _rel(a.model_state[key], value) <= 1e-10, key
    for key, value in b.optimizer_tensors.items():
        assert _rel(a.optimizer_tensors[key], value) <= 1e-10, key


def _wait_for(path: Path, proc: subprocess.Popen, lines: int = 1) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not (path.exists() and len(path.read_text().splitlines()) >= lines):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the job never wrote its first epoch"
        time.sleep(0.02)


@needs_mpi
def test_ctrl_c_stops_every_rank_saves_once_and_resume_equals_the_uninterrupted_run(tmp_path):
    opts = TRAIN + ["--epochs", "20", "--limit", "60", "--batch-size", "10"]
    full, part = tmp_path / "full.ckpt", tmp_path / "part.ckpt"
    r = mpiexec(2, "-m", "xpcnn.cli", *opts, "--checkpoint", str(full))
    assert r.returncode == 0, r.stderr
    metrics = tmp_path / "m.jsonl"
    proc = subprocess.Popen([MPIEXEC, "-n", "2", sys.executable, "-m", "xpcnn.cli", *opts, "--checkpoint",
                             str(part), "--metrics", str(metrics)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    _wait_for(metrics, proc)
    proc.send_signal(signal.SIGINT)  # mpiexec forwards it to every rank
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 130, err
    assert err.count("saved") == 1 and "interrupted in epoch" in err  # rank 0 alone saved, once
    stopped = Checkpoint(part).epoch
    assert stopped < 20
    r = mpiexec(2, "-m", "xpcnn.cli", *opts, "--checkpoint", str(part), "--resume", str(part))
    assert r.returncode == 0, r.stderr
    a, b = Checkpoint(part), Checkpoint(full)
    assert a.epoch == b.epoch == 20
    for key, value in b.model_state.items():
        assert np.array_equal(a.model_state[key], value), key  # same ranks, same shards: the same bits
    for key, value in b.optimizer_tensors.items():
        assert np.array_equal(a.optimizer_tensors[key], value), key


def _rank_pid(tag: str, rank: int) -> int | None:
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                env = (d / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"XPCNN_TEST_TAG={tag}".encode() in env and f"PMI_RANK={rank}".encode() in env:
                return int(d.name)
    return None


@needs_mpi
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the rank's process through /proc")
def test_a_killed_rank_ends_the_job_and_the_last_checkpoint_stays_intact(tmp_path):
    tag = f"{os.getpid()}-{time.monotonic_ns()}"
    ckpt, metrics = tmp_path / "run.ckpt", tmp_path / "m.jsonl"
    proc = subprocess.Popen([MPIEXEC, "-n", "2", sys.executable, "-m", "xpcnn.cli", *TRAIN, "--epochs", "1000",
                             "--limit", "100", "--batch-size", "10", "--checkpoint", str(ckpt),
                             "--metrics", str(metrics)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, XPCNN_TEST_TAG=tag))
    _wait_for(metrics, proc, lines=2)  # epoch 1's checkpoint is saved after its metrics line
    pid = _rank_pid(tag, 1)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    start = time.monotonic()
    out, err = proc.communicate(timeout=30)  # ends within 30 s, never hangs
    assert time.monotonic() - start < 30 and proc.returncode != 0
    # who says so is a race: mpiexec ("BAD TERMINATION ... KILLED BY SIGNAL: 9"), or the surviving rank, whose
    # collective with the dead one fails first ("Abort ... Fatal error in internal_Allreduce_c ...")
    said = r"BAD TERMINATION|killed|signal 9|Fatal error in \w*(Allreduce|Barrier)"
    assert re.search(said, out + err, re.I), (out, err)
    assert Checkpoint(ckpt).epoch >= 1  # intact and loadable


@needs_mpi
def test_a_nan_loss_stops_every_rank_at_the_same_step(tmp_path):
    r = mpiexec(2, "-m", "xpcnn.cli", *TRAIN, "--epochs", "3", "--lr", "1e30")
    assert r.returncode == 2, r.stderr
    assert len(re.findall(r"error: loss is (nan|inf)", r.stderr)) == 1, r.stderr  # said once, by rank 0


@needs_mpi
def test_the_interleaved_benchmark_times_every_configuration_in_one_job():
    sys.path.insert(0, str(HERE.parent / "benchmarks"))
    import bench_mpi
    run = bench_mpi.run_interleaved("digits-cnn", 2, reps=2, rounds=2)
    assert list(run["configs"]) == list(bench_mpi.INTERLEAVED)
    for name, c in run["configs"].items():  # each round's speed-up is one / it, measured in that round
        assert len(c["rounds_ms"]) == len(c["speedups"]) == 2 and min(c["rounds_ms"]) > 0, name
        assert min(c["speedups"]) - 5e-4 <= c["speedup_vs_one"] <= max(c["speedups"]) + 5e-4, name  # 3 decimals
        assert min(c["speedups"]) > 0, name
    assert run["configs"]["one"]["speedups"] == [1.0, 1.0]
    jitter = run["lockstep_ranks"]  # both ranks' own times: the slowest waits nothing, the spread is at least that
    assert len(jitter["own_median_ms"]) == 2 and 0 <= jitter["wait_ms"] <= jitter["spread_ms"]


def test_workers_without_mpi_is_one_clear_line(monkeypatch, capsys):
    monkeypatch.setattr(distributed, "find_mpiexec", lambda: (_ for _ in ()).throw(
        distributed.MPIUnavailable("no mpiexec next to this Python or on PATH")))
    assert main(["train", "--workers", "2", "--epochs", "1", "--limit", "64"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["xpcnn train: error: no mpiexec next to this Python or on PATH"]
    with pytest.raises(SystemExit) as e:  # argparse's type check, one line
        main(["train", "--workers", "0"])
    assert e.value.code == 2 and "argument --workers: must be >= 1, got 0" in capsys.readouterr().err


@needs_mpi
def test_the_readme_example_runs_as_written_on_two_ranks(tmp_path):
    readme = (HERE.parent / "README.md").read_text()
    after = readme.split("From Python (`mpiexec -n 2 python example.py`", 1)[1]
    code = after.split("```python\n", 1)[1].split("```", 1)[0]
    assert len(code.strip().splitlines()) <= 10
    (tmp_path / "example.py").write_text(code)
    r = mpiexec(2, str(tmp_path / "example.py"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert re.fullmatch(r"2 ranks: train loss \d\.\d{4}\n", r.stdout), r.stdout  # printed by rank 0 alone
