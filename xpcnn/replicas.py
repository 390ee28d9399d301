"""Data parallelism over worker processes: each process runs the whole model on its shard of the batch.

Why: the per-op threads of :mod:`xpcnn.parallel` share one interpreter. Every NumPy call takes the GIL
to start, and when the two threads collide the waiting one sleeps and must be woken (tens of microseconds
on a VM); a LeNet step is hundreds of short calls, so two 64-sample halves on two threads took 9.7 ms
where one took 5.6 ms alone. Two processes share no GIL: two 64-sample steps side by side took 5.7 ms each
(2-core VM, 1 BLAS thread each). This is Chainer's ``MultiprocessParallelUpdater`` and PyTorch's
``DistributedDataParallel`` on one machine, inside ``Sequential.forward`` and ``backward``.

How (``config.set_parallel_mode("processes")``, n workers from ``set_num_threads`` or the BLAS thread count):

* ``n - 1`` worker processes (``python -m xpcnn._worker``, started on first use, one BLAS thread each) get a
  pickled copy of the model. Its parameters and buffers then live in a shared memory file that this process
  refreshes before every forward, and each worker writes its parameter gradients into its own part of it.
* ``forward`` splits the batch into n contiguous shards: this process runs the first, the workers the
  others (their input shard through shared memory, their output back through a pipe), and the outputs
  are concatenated. ``backward`` sends each worker its shard of ``dy``, runs this process's shard, then adds
  each worker's gradients into ``Parameter.grad`` in shard order. Loss, optimizer and everything else
  stay in this process, unchanged: results equal the single-process ones up to float rounding.
* Batch norm in training needs the whole batch's statistics: its per-channel sums go through
  ``parallel.batch_sum``, which here sends each worker's part to this process and the total back (two
  exchanges per batch norm forward, one per backward), so every process normalises with the whole batch's
  mean and variance and updates its running statistics with them. Dropout in training draws the whole
  batch's mask in every process, from the generator state this process sends with each forward, and keeps
  its rows (``parallel.batch_shard``): the same masks as in one process.
* Layers xpcnn does not know (user-defined modules), other backends, batches of fewer than
  ``2 * MIN_SHARD`` samples and non-POSIX systems use per-op threads instead (:func:`why_not` says why).
  A worker's error is raised here with its traceback; a worker that dies, or an interrupted call, stops all
  of them (the next step starts fresh ones).
"""
from __future__ import annotations

import mmap
import os
import pickle
import subprocess
import sys
import tempfile
import time
import weakref
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from . import config, parallel

MIN_SHARD = 16  # samples per process at least: smaller shards run in this process (startup, pipe latency)
ALIGN = 64
SPIN_S = 0.002  # seconds a process polls a pipe before it sleeps on it (measured, see _receive)


def _receive(conn: Connection, spin: float):
    """The next message on ``conn``, polled for up to ``spin`` seconds before a blocking read.

    A process asleep in a blocking read wakes 0.1-0.2 ms after the message arrives on this 2-core VM, twice
    per call (the worker for the request, this process for the reply) and once more per batch norm
    exchange. Polling first, as OpenMP runtimes spin before they sleep: LeNet step on 2 processes, batch 32
    3.05-3.07 -> 2.66-2.70 ms, batch 128 6.33-6.45 -> 6.02-6.08 (alternating runs). Only where every process
    has a core of its own (:func:`_spin_time`): a spinning process would take one from a working one. The
    polling holds this process's GIL, so another Python thread of it may wait up to ``spin`` meanwhile."""
    if spin > 0:
        end = time.perf_counter() + spin
        while not conn.poll(0) and time.perf_counter() < end:
            pass
    return conn.recv()


def _spin_time(processes: int) -> float:
    """:data:`SPIN_S` where ``processes`` fit the CPUs this process may use, else 0 (block at once)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return SPIN_S if processes <= cpus else 0.0


def why_not(model) -> str | None:
    """Why ``model`` cannot run its batch on worker processes, or None where it can."""
    from .layers import (AdaptiveAvgPool2d, AvgPool2d, Conv2d, Dropout, Flatten, LeakyReLU, Linear, MaxPool2d,
                         ReLU, Residual, Sigmoid, Tanh, ZeroPadShortcut)
    from .layers.norm import _BatchNorm
    from .model import Sequential

    if os.name != "posix" or not sys.executable:
        return "worker processes need a POSIX system and a Python executable"
    if model.backend is None or model.backend.name != "numpy":
        return "worker processes run the NumPy backend only"
    # layers that treat samples independently, and two that do not but know how to run split: batch norm sums
    # its statistics over the processes (parallel.batch_sum); dropout draws the whole batch's mask in every
    # process from the same generator state and keeps its rows (parallel.batch_shard)
    supported = (Sequential, Conv2d, Linear, Flatten, ReLU, Sigmoid, Tanh, LeakyReLU, MaxPool2d, AvgPool2d,
                 AdaptiveAvgPool2d, _BatchNorm, Dropout, Residual, ZeroPadShortcut)
    for m in model.modules():
        if not isinstance(m, supported):
            return f"{m.label()} is not known to treat the samples of a batch independently"
    return None


def processes_for(model, batch: int) -> int:
    """How many processes (this one included) run a batch of ``batch`` samples now; 1: this process alone."""
    if config.get_parallel_mode() != "processes" or parallel._shard is not None:  # not inside a shard's forward
        return 1
    n = min(config.get_num_threads() or parallel.blas_threads(), batch // MIN_SHARD)
    return n if n > 1 and why_not(model) is None else 1


def cpu_use(model, batch: int) -> tuple[int, int, str | None]:
    """``(processes, threads, why)`` for a NumPy step of ``batch`` samples now: processes > 1 where worker
    processes run it, else ``threads`` per-op threads; ``why`` says why not processes in "processes" mode."""
    n = config.get_num_threads() or parallel.blas_threads()
    procs, why = processes_for(model, batch), None
    if procs <= 1 and n > 1 and config.get_parallel_mode() == "processes":
        why = why_not(model) or f"batches of {batch} are too small to split (at least {2 * MIN_SHARD})"
    return procs, n, why


def plan(model, batch: int) -> "Replicas | None":
    """The model's worker processes for a batch of ``batch`` samples, started or restarted as needed; None
    where the batch runs in this process."""
    current = model.__dict__.get("_replicas")
    n = processes_for(model, batch)
    if n <= 1:
        return None
    sig = _signature(model)
    if current is not None and current.pid != os.getpid():  # a forked copy of this process: not its workers
        current = None
    if current is not None and (current.signature != sig or len(current.workers) != n - 1 or current.closed):
        current.close()
        current = None
    if current is None:
        current = model._replicas = Replicas(model, n - 1, sig)
    return current


def _signature(model) -> tuple:
    """What a worker's copy must match: each module (identity, repr), its arrays' shapes and dtypes."""
    return tuple((id(m), repr(m) if m is not model else "", tuple((a.shape, a.dtype)
                  for a in _arrays(m))) for m in model.modules())


def _arrays(m) -> list:
    """A module's own parameter and buffer arrays, in a fixed order."""
    return [getattr(m, k).data for k in m._param_names] + [getattr(m, k) for k in m._buffer_names]


class _SharedFile:
    """A file in shared memory (``/dev/shm`` where there is one and it has room, else the temporary directory),
    mapped; unlinked once every user mapped it. Its space is reserved up front: a full ``/dev/shm`` (64 MiB in
    a default Docker container) is an error here, not a SIGBUS in the middle of a step."""

    def __init__(self, nbytes: int, path: str | None = None):
        self.nbytes = max(nbytes, 1)
        if path is None:
            fd, self.path = _reserve(self.nbytes)
        else:
            self.path = path
            fd = os.open(path, os.O_RDWR)
        try:
            self.map = mmap.mmap(fd, self.nbytes)
        finally:
            os.close(fd)

    def array(self, offset: int, shape, dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        return np.frombuffer(self.map, dtype, count, offset).reshape(shape)

    def unlink(self) -> None:
        if self.path is not None:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            self.path = None


def _reserve(nbytes: int) -> tuple[int, str]:
    """An open file of ``nbytes`` reserved bytes and its path, in ``/dev/shm`` or else the temporary directory."""
    tried = []
    for where in (["/dev/shm"] if os.path.isdir("/dev/shm") else []) + [tempfile.gettempdir()]:
        fd, path = tempfile.mkstemp(prefix="xpcnn-", dir=where)
        try:
            if hasattr(os, "posix_fallocate"):
                os.posix_fallocate(fd, 0, nbytes)
            else:
                os.ftruncate(fd, nbytes)
            return fd, path
        except OSError as e:
            os.close(fd)
            os.unlink(path)
            tried.append(f"{where}: {e.strerror}")
    raise RuntimeError(f"worker processes need {nbytes / 2 ** 20:.1f} MiB of shared memory, and none could be "
                       f"reserved ({'; '.join(tried)}); free some, or use config.set_parallel_mode('threads')")


def _layout(model, workers: int) -> tuple[list, list, int]:
    """Offsets in the state file: every parameter and buffer (read by all workers), then one gradient region
    per worker. Returns ``(values, grads, nbytes)``: ``values`` as ``(offset, shape, dtype)`` per array of
    :func:`_arrays`, module by module; ``grads[k]`` the offsets of worker k's parameter gradients."""
    offset = 0

    def place(arrays) -> list:
        nonlocal offset
        out = []
        for a in arrays:
            out.append((offset, tuple(a.shape), str(a.dtype)))
            offset += -(-a.nbytes // ALIGN) * ALIGN
        return out
    values = place(a for m in model.modules() for a in _arrays(m))
    params = [p.data for p in model.parameters()]
    return values, [place(params) for _ in range(workers)], offset


class _Worker:
    """One worker process and its pipes; ``io`` is the shared file its input shard (and input gradient) use."""

    def __init__(self):
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # this xpcnn, whatever the cwd
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        env["PYTHONPATH"] = os.pathsep.join([here] + [p for p in [os.environ.get("PYTHONPATH")] if p])
        to_child, from_parent = os.pipe()
        to_parent, from_child = os.pipe()
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", "xpcnn._worker", str(to_child), str(from_child)],
                                         pass_fds=(to_child, from_child), env=env, cwd=here,
                                         stdin=subprocess.DEVNULL)
        finally:
            os.close(to_child)
            os.close(from_child)
        self.send_conn = Connection(from_parent, readable=False)
        self.recv_conn = Connection(to_parent, writable=False)
        self.io: _SharedFile | None = None
        self.spin = 0.0  # seconds to poll for a reply before sleeping (_receive)

    def send(self, msg, what: str) -> None:
        try:
            self.send_conn.send(msg)
        except OSError as e:
            raise self._exited(what) from e

    def _exited(self, what: str) -> RuntimeError:
        try:
            code = self.proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            code = None
        return RuntimeError(f"xpcnn worker process {self.proc.pid} exited during {what} (exit code {code})")

    def receive(self, what: str):
        """The worker's next message; its death is raised here as a RuntimeError."""
        try:
            return _receive(self.recv_conn, self.spin)
        except (EOFError, OSError) as e:
            raise self._exited(what) from e

    def result(self, msg, what: str):
        """The value of a final reply; a worker's exception is raised here as a RuntimeError."""
        if msg[0] == "error":
            raise RuntimeError(f"xpcnn worker process {self.proc.pid} failed during {what}: {msg[1]}\n"
                               f"--- worker traceback ---\n{msg[2]}")
        return msg[1]

    def io_for(self, nbytes: int) -> str | None:
        """Make ``io`` hold ``nbytes``; returns the path of a new file (the worker maps it) or None."""
        if self.io is not None and self.io.nbytes >= nbytes:
            return None
        self.io = _SharedFile(max(nbytes, 2 * (self.io.nbytes if self.io else 0)))
        return self.io.path


def _stop(workers: list, state: _SharedFile, pid: int) -> None:
    if os.getpid() != pid:  # a forked copy of the process that started them: leave them to it
        return
    for w in workers:
        for c in (w.send_conn, w.recv_conn):
            c.close()  # the worker sees end-of-file and exits
    for w in workers:
        try:
            w.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            w.proc.kill()
            w.proc.wait()
        if w.io is not None:
            w.io.unlink()
    state.unlink()


class Replicas:
    """``workers`` worker processes holding copies of ``model`` (see the module docstring)."""

    def __init__(self, model, workers: int, signature: tuple):
        self.signature, self.closed, self.pid = signature, False, os.getpid()
        self.values, self.grads, nbytes = _layout(model, workers)
        self.state = _SharedFile(nbytes)
        self.workers: list[_Worker] = []
        self._finalizer = weakref.finalize(self, _stop, self.workers, self.state, self.pid)
        payload = pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)
        spin = _spin_time(workers + 1)
        try:
            for k in range(workers):
                self.workers.append(_Worker())
                self.workers[-1].spin = spin
                self.workers[-1].send(("init", payload, self.state.path, nbytes, self.values, self.grads[k], spin),
                                      "start-up")
            for w in self.workers:
                w.result(w.receive("start-up"), "start-up")
        except BaseException:
            self.close()
            raise
        self.state.unlink()  # every worker mapped it
        self.views = [self.state.array(*v) for v in self.values]
        self.grad_views = [[self.state.array(*g) for g in gk] for gk in self.grads]
        self.parts: list[tuple[int, int]] | None = None

    def close(self) -> None:
        self.closed = True
        self._finalizer()

    def _call(self, msgs: list, local, what: str):
        """Send each worker its message, run ``local()`` here meanwhile (its batch norm statistics summed with
        the workers', :meth:`_sum_shards`), then collect every final reply, even when ``local`` raised, so that
        the pipes stay in step. Returns ``(local's result, replies)``."""
        self._final: list = [None] * len(self.workers)
        self._waiting = [False] * len(self.workers)  # sent its part of a sum, waits for the total
        try:
            for w, msg in zip(self.workers, msgs):
                w.send(msg, what)
            try:
                with parallel.split(batch_sum=self._sum_shards):
                    mine = local()
            finally:
                died = self._collect(what)
            if died is not None:
                raise died
            return mine, [w.result(m, what) for w, m in zip(self.workers, self._final)]
        except BaseException as e:
            if not isinstance(e, (ValueError, TypeError)):
                self.close()  # a worker may be gone, or still busy: its next reply would answer the wrong call
            raise

    def _collect(self, what: str) -> RuntimeError | None:
        """Read each worker's final reply; a worker still waiting for a sum is told to stop (this process left
        the step early). Returns the error of a worker that died, if one did."""
        died = None
        for k, w in enumerate(self.workers):
            try:
                if self._waiting[k]:
                    self._waiting[k] = False
                    w.send(("abort",), what)
                while self._final[k] is None:
                    msg = w.receive(what)
                    if msg[0] == "reduce":
                        w.send(("abort",), what)
                    else:
                        self._final[k] = msg
            except RuntimeError as e:
                died = died or e
                self._final[k] = ("error", str(e), "")
                self.close()
        return died

    def _sum_shards(self, v, count: int) -> tuple:
        """``parallel.batch_sum`` in this process during a split step: this shard's ``(v, count)`` plus each
        worker's, in shard order; every worker gets the total."""
        parts, counts = [v], [count]
        for k, w in enumerate(self.workers):
            msg = w.receive("batch norm statistics")
            if msg[0] != "reduce":  # the worker failed before it got here: stop the others, raise its error
                self._final[k] = msg
                w.result(msg, "forward" if msg[0] == "error" else "batch norm statistics")
                raise RuntimeError(f"xpcnn worker process {w.proc.pid} finished a step without the batch "
                                   "statistics this process asked for (the model differs between processes)")
            self._waiting[k] = True
            parts.append(msg[1])
            counts.append(msg[2])
        total = parts[0]
        for p in parts[1:]:
            total = total + p
        n = sum(counts)
        for k, w in enumerate(self.workers):
            w.send(("total", total, n), "batch norm statistics")
            self._waiting[k] = False
        return total, n

    def settings(self) -> list:
        """Each worker's ``(config.snapshot(), numpy.geterr())`` as of its last forward."""
        return self._call([("settings",)] * len(self.workers), lambda: None, "settings")[1]

    def trace_memory(self, on: bool) -> list:
        """Start (``on``) or stop tracemalloc in every worker; stopping returns each one's peak of new
        allocations (bytes) since the start (``xpcnn bench``'s peak memory)."""
        return self._call([("trace", on)] * len(self.workers), lambda: None, "trace")[1]

    def forward(self, model, x, run_local):
        """Model output for the batch ``x`` (a NumPy array), this process running ``run_local(x_shard)``."""
        for view, a in zip(self.views, (a for m in model.modules() for a in _arrays(m))):
            view[...] = a
        training = [m.training for m in model.modules()]
        settings = (config.snapshot(), np.geterr())  # the workers compute as this process would
        randoms = [(i, m.source().state_dict()) for i, m in enumerate(model.modules())
                   if m.training and hasattr(m, "source")]  # dropout: every process at the same point
        self.parts = parallel.even_ranges(0, x.shape[0], len(self.workers) + 1)
        msgs = []
        for w, (a, b) in zip(self.workers, self.parts[1:]):
            shard = x[a:b]
            path = w.io_for(shard.nbytes)
            w.io.array(0, shard.shape, shard.dtype)[...] = shard
            msgs.append(("forward", path, w.io.nbytes, tuple(shard.shape), str(shard.dtype), training, settings,
                         randoms, (a, x.shape[0])))
        a, b = self.parts[0]

        def local():
            with parallel.split(shard=(a, x.shape[0])):
                return run_local(x[a:b])
        mine, outs = self._call(msgs, local, "forward")
        for w in self.workers:
            w.io.unlink()  # a new file: the worker mapped it (else already unlinked)
        return np.concatenate([mine] + outs, axis=0)

    def backward(self, model, dy, input_grad: bool, run_local):
        """Input gradient (or None) for the last forward's batch; parameter gradients accumulate as usual."""
        if self.parts is None or self.parts[-1][1] != dy.shape[0]:
            raise ValueError(f"backward: the gradient has {dy.shape[0]} samples, the forward had "
                             f"{self.parts[-1][1] if self.parts else 0}")
        msgs = [("backward", np.ascontiguousarray(dy[a:b]), input_grad) for a, b in self.parts[1:]]
        a, b = self.parts[0]
        mine, shapes = self._call(msgs, lambda: run_local(dy[a:b]), "backward")
        for grads in self.grad_views:
            for p, g in zip(model.parameters(), grads):
                p.grad += g
        if not input_grad:
            return None
        parts = [mine] + [w.io.array(0, s, mine.dtype) for w, s in zip(self.workers, shapes)]
        return np.concatenate(parts, axis=0)


def serve(read_fd: int, write_fd: int) -> None:
    """A worker process's loop (``python -m xpcnn._worker``): answer forward/backward calls until end-of-file."""
    import signal
    import traceback

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it stops the workers
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(1)
    except ImportError:  # the environment already asks for one BLAS thread
        pass
    config.set_num_threads(1)
    inbox, outbox = Connection(read_fd, writable=False), Connection(write_fd, readable=False)

    spin = 0.0  # seconds to poll for the next message before sleeping (_receive), set by "init"

    def batch_sum(v, count):  # parallel.batch_sum here: send this shard's part, wait for the whole batch's
        outbox.send(("reduce", np.asarray(v), count))
        msg = _receive(inbox, spin)
        if msg[0] != "total":
            raise RuntimeError("the step was stopped in the parent process")
        return msg[1], msg[2]

    model = slots = io = None
    traced = 0
    while True:
        try:
            msg = _receive(inbox, spin)
        except (EOFError, OSError):
            return
        op = msg[0]
        if op == "abort":  # a stop for a sum this worker no longer waits for
            continue
        try:
            if op == "init":
                model, slots = _attach(*msg[1:6])
                spin = msg[6]
                result = None
            elif op == "forward":
                _, path, nbytes, shape, dtype, training, (settings, errors), randoms, shard = msg
                if path is not None:
                    io = _SharedFile(nbytes, path)
                modules = list(model.modules())
                for m, flag in zip(modules, training):
                    m.training = flag
                for i, state in randoms:
                    modules[i].source().load_state_dict(state)
                _point(slots)
                config.restore(settings)
                np.seterr(**errors)
                with parallel.split(batch_sum, shard):
                    result = np.asarray(model.forward(io.array(0, shape, dtype)))
            elif op == "backward":
                _, dy, input_grad = msg
                model.zero_grad()  # the gradient views in the shared state: this shard's alone
                with parallel.split(batch_sum):
                    dx = model.backward(dy, input_grad=input_grad)
                result = None
                if dx is not None:
                    io.array(0, dx.shape, dx.dtype)[...] = dx
                    result = tuple(dx.shape)
            elif op == "settings":  # what the last forward ran with
                result = (config.snapshot(), np.geterr())
            elif op == "trace":  # tracemalloc on (msg[1] True) or off, returning the peak in between
                import tracemalloc
                if msg[1]:
                    tracemalloc.start()
                    tracemalloc.reset_peak()
                    traced = tracemalloc.get_traced_memory()[0]
                    result = None
                else:
                    result = tracemalloc.get_traced_memory()[1] - traced
                    tracemalloc.stop()
            else:
                raise ValueError(f"unknown request {op!r}")
            reply = ("ok", result)
        except Exception as e:  # reported to the parent, which raises it
            reply = ("error", f"{type(e).__name__}: {e}", traceback.format_exc())
        try:
            outbox.send(reply)
        except OSError:  # the parent stopped listening
            return


def _attach(payload: bytes, path: str, nbytes: int, values: list, grads: list) -> tuple[Any, list]:
    """Unpickle the model; returns it and its slots ``(module, name, value view, gradient view or None)``: every
    parameter and buffer as a view of the shared state file (:func:`_point` sets them)."""
    model = pickle.loads(payload)
    state = _SharedFile(nbytes, path)
    views = iter([state.array(*v) for v in values])
    grad_views = iter([state.array(*g) for g in grads])
    slots = []
    for m in model.modules():
        slots += [(m, k, next(views), next(grad_views)) for k in m._param_names]
        slots += [(m, k, next(views), None) for k in m._buffer_names]
    _point(slots)
    return model, slots


def _point(slots: list) -> None:
    """Point the worker's parameters, gradients and buffers at the shared state again (batch norm replaces its
    running statistics with new arrays in training)."""
    for m, name, value, grad in slots:
        if grad is None:
            setattr(m, name, value)
        else:
            p = getattr(m, name)
            p.data, p.grad = value, grad
