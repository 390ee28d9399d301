"""Data-parallel training over MPI (mpi4py): N ranks compute what one process computes on the global batch.

Every rank builds the same model from the same seed, shuffles with the same seed and takes its contiguous
shard of every global batch (:class:`ShardedLoader`). :class:`DistributedOptimizer` sums the ranks' gradients
with one allreduce of one flat buffer before each update, so every rank applies the same update and the
weights stay identical; the model never knows. Two hooks in the layers make the sharded forward and backward
equal the global batch's: batch norm sums its per-channel statistics over the ranks (:func:`batch_sum`, forward
and backward), and Dropout draws the global batch's mask and keeps its rows (:func:`batch_rows`). Both are
no-ops outside a sharded batch, so one process (or ``mpiexec -n 1``) runs exactly the single-process code.

Shards may be unequal (the last batch of an epoch): rank r holds ``n_r`` of the global batch's ``B`` samples and
its loss is the mean over its own ``n_r``, so its gradients are weighted by its share ``w_r = n_r / B`` before
they are summed: ``sum_r w_r * grad(mean_r) = grad(mean over B)``. Batch norm's backward sums of the output
gradient are weighted the same way (:func:`batch_sum` with ``gradient=True``).

MPI starts only under a launcher (``mpiexec`` sets ``PMI_SIZE`` and the like) or after :func:`init`; otherwise
:func:`world` is the one-process :class:`Communicator` and mpi4py is never imported. Device arrays (CuPy) are
reduced through host buffers (:meth:`Communicator.allreduce_flat`); an NCCL communicator can take that over.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np

from .backend import as_numpy, asarray_like
from .data import DataLoader
from .errors import InputError, InputValueError

LAUNCHER_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK")  # MPICH/Hydra, Open MPI, PMIx launchers
LOCAL_RANK_VARIABLES = ("MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "PMI_LOCAL_RANK")


class MPIUnavailable(InputError, ImportError):
    """mpi4py (or an MPI library) is missing where a distributed run needs it."""


class Communicator:
    """One process: every collective returns its input. :class:`MPICommunicator` is the real one."""

    rank, size = 0, 1

    def allreduce_(self, buf: np.ndarray) -> np.ndarray:
        """Sum a host NumPy buffer over the ranks, in place; returns it."""
        return buf

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any rank (a one-value allreduce: every rank gets the same answer)."""
        return bool(flag)

    def allreduce_flat(self, arrays: Sequence[Any], weight: float = 1.0) -> None:
        """Replace each array by the sum over the ranks of ``weight * array``, in place, with ONE allreduce of a
        flat host buffer (arrays of any backend; device arrays go through the host). An NCCL communicator
        would override this to reduce on the device."""
        if self.size == 1 and weight == 1.0:
            return
        if len(arrays) == 1 and isinstance(arrays[0], np.ndarray) and arrays[0].flags.c_contiguous:
            whole = arrays[0].reshape(-1)  # one host buffer already (a flat optimizer's): reduce it where it is
            if weight != 1.0:
                np.multiply(whole, weight, out=whole)
            self.allreduce_(whole)
            return
        hosts = [as_numpy(a).reshape(-1) for a in arrays]
        key = (sum(h.size for h in hosts), hosts[0].dtype)
        if getattr(self, "_flat_key", None) != key:  # one buffer, kept between steps
            self._flat, self._flat_key = np.empty(key[0], dtype=key[1]), key
        flat, offset = self._flat, 0
        for h in hosts:
            np.multiply(h, weight, out=flat[offset:offset + h.size])
            offset += h.size
        self.allreduce_(flat)
        offset = 0
        for a, h in zip(arrays, hosts):
            part = flat[offset:offset + h.size].reshape(a.shape)
            if isinstance(a, np.ndarray):
                np.copyto(a, part)
            else:
                a[...] = asarray_like(part, a, a.dtype)
            offset += h.size

    def barrier(self) -> None:
        pass

    def abort(self, code: int = 1) -> None:
        """End every rank of the job (MPI_Abort); one process just exits."""
        raise SystemExit(code)


class MPICommunicator(Communicator):
    """The ranks of an mpi4py communicator (``MPI.COMM_WORLD`` by default)."""

    def __init__(self, comm=None):
        from mpi4py import MPI

        self._mpi = MPI
        self.comm = comm if comm is not None else MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self._flag = np.zeros(1, dtype=np.int32)

    def allreduce_(self, buf: np.ndarray) -> np.ndarray:
        if self.size > 1:
            self.comm.Allreduce(self._mpi.IN_PLACE, buf, op=self._mpi.SUM)
        return buf

    def any(self, flag: bool) -> bool:
        if self.size == 1:
            return bool(flag)
        self._flag[0] = bool(flag)
        self.comm.Allreduce(self._mpi.IN_PLACE, self._flag, op=self._mpi.MAX)
        return bool(self._flag[0])

    def barrier(self) -> None:
        self.comm.Barrier()

    def abort(self, code: int = 1) -> None:
        self.comm.Abort(code)


_world: Communicator | None = None


def launched() -> bool:
    """Whether an MPI launcher (``mpiexec``) started this process."""
    return any(v in os.environ for v in LAUNCHER_VARIABLES)


def init(comm=None) -> Communicator:
    """Start MPI (mpi4py) and make ``comm`` (default ``MPI.COMM_WORLD``) this process's :func:`world`."""
    global _world
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        raise MPIUnavailable('distributed training needs mpi4py and an MPI: pip install -e ".[mpi]"') from None
    _world = MPICommunicator(comm)
    return _world


def world() -> Communicator:
    """The communicator of this job: MPI's under a launcher (started on first use), else one process."""
    global _world
    if _world is None:
        _world = init() if launched() else Communicator()
    return _world


def rank() -> int:
    return world().rank


def world_size() -> int:
    return world().size


def is_root() -> bool:
    """Rank 0: the one that writes files and prints."""
    return world().rank == 0


def local_rank() -> int:
    """This rank's index among the ranks on its host (which GPU it takes: ``cupy:LOCAL_RANK``)."""
    for v in LOCAL_RANK_VARIABLES:
        if v in os.environ:
            return int(os.environ[v])
    w = world()
    if isinstance(w, MPICommunicator):
        return w.comm.Split_type(w._mpi.COMM_TYPE_SHARED).Get_rank()
    return 0


# -- the global batch, sharded -------------------------------------------------------------------------------------

def shard_range(n: int, rank: int, size: int) -> tuple[int, int]:
    """``(start, stop)`` of rank ``rank``'s contiguous share of ``n`` samples; the sizes differ by at most one
    (the longer shards first)."""
    q, r = divmod(n, size)
    start = rank * q + min(rank, r)
    return start, start + q + (rank < r)


@dataclass(frozen=True)
class Shard:
    """This rank's rows ``[start, stop)`` of a global batch of ``total`` samples, shared by the ranks of ``comm``."""
    start: int
    stop: int
    total: int
    comm: Communicator

    @property
    def weight(self) -> float:
        """This rank's share of the global batch's mean loss: ``n_r / B``."""
        return (self.stop - self.start) / self.total


_batch: Shard | None = None  # the batch being trained on, sharded over the ranks (set by ShardedLoader)


@contextmanager
def sharded_batch(shard: Shard | None) -> Iterator[None]:
    """Inside, the layers' hooks treat the model's batch as ``shard`` of a global batch (``None``: not sharded).
    :class:`ShardedLoader` sets it for each batch it hands out; use it directly with your own loading."""
    global _batch
    saved, _batch = _batch, (shard if shard is not None and shard.comm.size > 1 else None)
    try:
        yield
    finally:
        _batch = saved


def batch_sharded() -> bool:
    """Whether the current batch is sharded over several ranks (the hooks below reduce only then)."""
    return _batch is not None


def batch_sum(v, count: int, gradient: bool = False) -> tuple[Any, int]:
    """``(v, count)`` summed over the ranks that share the current batch: ``v`` a per-channel sum over this rank's
    samples (any backend), ``count`` the values it summed; unchanged outside a sharded batch. Batch norm's
    statistics go through it so that they are the global batch's. ``gradient=True`` (sums of the output
    gradient, in backward) weights each rank's part by its share of the loss and answers in this rank's scale
    (``sum_s w_s v_s / w_r``), so that the backward equals the global batch's (see the module docstring)."""
    if _batch is None:
        return v, count
    host = np.empty(int(np.prod(v.shape)) + 1, dtype=np.float64)
    w = _batch.weight if gradient else 1.0
    host[:-1] = as_numpy(v).reshape(-1) * w
    host[-1] = count
    _batch.comm.allreduce_(host)
    summed = host[:-1] / w if gradient else host[:-1]
    return asarray_like(summed.reshape(tuple(v.shape)), v, v.dtype), int(round(host[-1]))


def batch_rows(n: int) -> tuple[int, int]:
    """``(start, total)``: where this rank's ``n`` samples sit in the global batch (``(0, n)`` outside a sharded
    batch). Dropout draws the global batch's mask and keeps these rows, so masks do not depend on the ranks."""
    if _batch is None:
        return 0, n
    if _batch.stop - _batch.start != n:
        raise ValueError(f"a sharded batch of {_batch.stop - _batch.start} samples is being trained on, but the "
                         f"model got {n}: run the model on the batch ShardedLoader handed out")
    return _batch.start, _batch.total


class ShardedLoader(DataLoader):
    """A :class:`~xpcnn.data.DataLoader` of the global batch that hands this rank its contiguous shard of each
    batch (and marks it as such for the layers' hooks, :func:`sharded_batch`). Every rank shuffles with the same
    seed, so the ranks' shards partition each global batch; ``len``, ``state_dict`` and resuming are the global
    loader's. Every shard must hold at least one sample: ``batch_size`` and the last batch >= the rank count."""

    def __init__(self, dataset, batch_size: int = 64, shuffle: bool = False, seed: int = 0, backend: Any = None,
                 normalizer=None, drop_last: bool = False, augment=None, comm: Communicator | None = None):
        super().__init__(dataset, batch_size, shuffle, seed, backend, normalizer, drop_last, augment)
        self.comm = comm if comm is not None else world()
        last = len(dataset) % self.batch_size if not drop_last else 0
        for what, size in (("the batch size", self.batch_size), ("the last batch", last)):
            if 0 < size < self.comm.size:
                raise InputValueError(f"{what} ({size} of {len(dataset)} samples) is smaller than the {self.comm.size}"
                                      " ranks: every rank needs a sample; pick another --batch-size or --limit")

    def _batch_positions(self, b: int, n: int) -> slice:
        batch = super()._batch_positions(b, n)
        size = batch.stop - batch.start
        start, stop = shard_range(size, self.comm.rank, self.comm.size)
        self._shard = Shard(start, stop, size, self.comm)
        return slice(batch.start + start, batch.start + stop)

    def __iter__(self):
        batches = super().__iter__()
        while True:
            try:
                with sharded_batch(None):  # loading itself is not part of a sharded step
                    x, y = next(batches)
            except StopIteration:
                return
            with sharded_batch(self._shard):
                yield x, y


class DistributedOptimizer:
    """Wraps an optimizer (ChainerMN/Horovod style): ``step()`` first sums the ranks' gradients with one
    allreduce of one flat buffer, weighted by each rank's share of the current global batch (``1/size`` outside
    a :class:`ShardedLoader` batch), then updates. Every rank applies the same update, so the weights stay equal.
    Everything else (``lr``, ``zero_grad``, ``state_dict``, ...) is the wrapped optimizer's."""

    def __init__(self, optimizer, comm: Communicator | None = None):
        object.__setattr__(self, "optimizer", optimizer)
        object.__setattr__(self, "comm", comm if comm is not None else world())

    def __getattr__(self, name: str):
        if name == "optimizer":  # not set yet (a copy being built): no recursion
            raise AttributeError(name)
        return getattr(self.optimizer, name)

    def __setattr__(self, name: str, value) -> None:
        setattr(self.optimizer, name, value)

    def allreduce_gradients(self) -> None:
        params = self.optimizer.params
        if all(p.grad is not None for p in params) and hasattr(self.optimizer, "flat_grads"):
            grads = self.optimizer.flat_grads()  # every Parameter.grad is a view into these (xpcnn.flat_params)
        else:
            grads = [p.grad for p in params if p.grad is not None]
        if self.comm.size > 1 and grads:
            self.comm.allreduce_flat(grads, _batch.weight if _batch is not None else 1.0 / self.comm.size)

    def step(self) -> None:
        self.allreduce_gradients()
        self.optimizer.step()


# -- starting a job ------------------------------------------------------------------------------------------------

def find_mpiexec() -> str:
    """``mpiexec`` next to this interpreter (a venv's, from the ``mpich`` wheel), else the first on ``PATH``."""
    import shutil
    import sys
    from pathlib import Path

    beside = Path(sys.executable).parent / "mpiexec"
    found = str(beside) if beside.is_file() and os.access(beside, os.X_OK) else shutil.which("mpiexec")
    if found is None:
        raise MPIUnavailable('no mpiexec next to this Python or on PATH: pip install -e ".[mpi]"')
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        raise MPIUnavailable('distributed training needs mpi4py: pip install -e ".[mpi]"') from None
    return found


def launch(n: int, module_args: Sequence[str]) -> tuple[list[str], int]:
    """Run ``python -m <module_args>`` on ``n`` ranks under :func:`find_mpiexec` and wait; returns the command and
    its exit status. Ctrl-C goes to mpiexec, which forwards it to every rank (this process ignores it meanwhile)."""
    import signal
    import subprocess
    import sys

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputValueError(f"the number of ranks must be a positive integer, got {n!r}")
    cmd = [find_mpiexec(), "-n", str(n), sys.executable, "-m", *module_args]
    proc = subprocess.Popen(cmd)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return cmd, proc.wait()
    finally:
        signal.signal(signal.SIGINT, previous)
