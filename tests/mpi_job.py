"""Ten training steps of LeNet and of a batch-norm model through ``xpcnn.distributed``, float64.

Run under ``mpiexec -n N python tests/mpi_job.py OUT.npz`` (test_distributed.py does) or called in one process
(``train_states(Communicator())``): the same code on any number of ranks. Batches of 10 from 35 samples: shards
of 5/5 (2 ranks) or 4/3/3 (3 ranks) and an uneven last batch of 5 (3/2, 2/2/1), so unequal shards are covered.
"""
from __future__ import annotations

import hashlib
import sys

import numpy as np

import xpcnn
from xpcnn import distributed, optim
from xpcnn.data import Dataset
from xpcnn.layers import BatchNorm1d, BatchNorm2d, Conv2d, Dropout, Flatten, Linear, MaxPool2d, ReLU

STEPS, BATCH, SAMPLES = 10, 10, 35


def _bn_model(backend: str = "numpy"):  # no bias in front of a batch norm: its gradient is 0, Adam amplifies rounding
    return xpcnn.Sequential(Conv2d(1, 4, 3, padding=1, bias=False), BatchNorm2d(4), ReLU(), MaxPool2d(2),
                            Flatten(), Linear(4 * 6 * 6, 16, bias=False), BatchNorm1d(16), ReLU(), Dropout(0.3),
                            Linear(16, 5), backend=backend, dtype="float64", seed=3)


def _models():
    rng = np.random.default_rng(7)
    lenet = xpcnn.build_model("lenet", 1, 5, 28, dtype="float64", seed=1)
    yield "lenet", lenet, optim.SGD(lenet.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4), \
        Dataset(rng.integers(0, 256, (SAMPLES, 1, 28, 28), dtype=np.uint8), rng.integers(0, 5, SAMPLES), 5)
    small = Dataset(rng.integers(0, 256, (SAMPLES, 1, 12, 12), dtype=np.uint8), rng.integers(0, 5, SAMPLES), 5)
    bn = _bn_model()
    yield "bn", bn, optim.Adam(bn.parameters(), lr=0.01), small
    try:  # arrays that are not NumPy's go through the host buffers (as CuPy's do)
        strict = _bn_model("array_api_strict")
    except ImportError:
        return
    yield "bn_strict", strict, optim.Adam(strict.parameters(), lr=0.01), small


def train_states(comm) -> dict[str, np.ndarray]:
    """Weights, buffers and optimizer state of both models after ``STEPS`` steps on the ranks of ``comm``."""
    out = {}
    for name, model, opt, data in _models():
        loader = distributed.ShardedLoader(data, BATCH, shuffle=True, seed=5, backend=model.backend, comm=comm)
        dopt = distributed.DistributedOptimizer(opt, comm)
        loss_fn = xpcnn.CrossEntropyLoss()
        steps, sizes = 0, []
        while steps < STEPS:
            for x, y in loader:
                sizes.append(int(y.shape[0]))
                dopt.zero_grad()
                loss_fn(model(x), y)
                model.backward(loss_fn.backward(), input_grad=False)
                dopt.step()
                steps += 1
                if steps == STEPS:
                    break
        out.update({f"{name}.{k}": xpcnn.to_numpy(v) for k, v in model.state_dict().items()})
        out.update({f"{name}.optim.{k}": np.asarray(v) for k, v in opt.state_dict()["state"].items()})
        out[f"{name}.shard_sizes"] = np.asarray(sizes)  # this rank's samples per step
    return out


def main(path: str) -> None:
    comm = distributed.world()
    states = train_states(comm)
    shared = sorted(k for k in states if not k.endswith("shard_sizes"))  # the same bits on every rank
    digest = hashlib.sha256(b"".join(np.ascontiguousarray(states[k]).tobytes() for k in shared)).hexdigest()
    digests = comm.comm.allgather(digest)
    if comm.rank == 0:
        np.savez(path, ranks=comm.size, ranks_agree=len(set(digests)) == 1, gpu_plan=xpcnn.config.gpu_plan(),
                 **states)


if __name__ == "__main__":
    main(sys.argv[1])
