"""Helpers shared by the commands: the command-line error; for ``train``, ``evaluate`` and ``predict`` data,
models, threads and checkpoints."""
from __future__ import annotations

import importlib.util
from typing import Any, ContextManager

from ..checkpoint import Checkpoint
from ..data import Dataset, Normalizer
from ..datasets import DATASETS, DEFAULT_MODELS, load_dataset
from ..models import MODELS, build_model
from ..errors import InputError, InputValueError
from ..threads import limit_blas, splits_ops, step_threads
from ._types import non_negative, positive


class CLIError(InputError):
    """A bad command line: printed as one line, exit status 2."""


def add_backend_arguments(parser) -> None:
    parser.add_argument("--backend", default=None, help="numpy (default), cupy, cupy:1, array_api_strict, torch")
    parser.add_argument("--threads", type=non_negative, default=None, metavar="N",
                        help="CPU threads: BLAS's, and xpcnn's worker threads on NumPy (default 1: fastest for "
                             "these small matrices on a busy machine; 0 keeps the library default); needs "
                             "threadpoolctl")


def add_data_arguments(parser) -> None:
    parser.add_argument("--dataset", default=None, choices=DATASETS, metavar="NAME",
                        help=f"one of {', '.join(DATASETS)} (default: digits, bundled)")
    parser.add_argument("--data-dir", default=None, metavar="DIR",
                        help="directory with the data set's files (FILE.h5 for h5); nothing is downloaded")
    parser.add_argument("--limit", type=positive, default=None, metavar="N",
                        help="use only the first N training and N test examples (quick runs)")


def load_data(name: str, data_dir: str | None, limit: int | None) -> tuple[Dataset, Dataset]:
    train, test = load_dataset(name, data_dir)
    if limit is not None:
        if limit < 1:
            raise InputValueError(f"--limit must be >= 1, got {limit}")
        train, test = train.subset(limit), test.subset(limit)
    return train, test


def make_model(name: str | None, dataset: str, shape: tuple[int, int, int], num_classes: int, backend: str,
               dtype: str, seed: int):
    name = name or DEFAULT_MODELS[dataset]
    if name not in MODELS:
        raise InputValueError(f"unknown model {name!r}; valid models are {', '.join(MODELS)}")
    c, h, w = shape
    if h != w:
        raise InputValueError(f"model {name!r} needs square images, the data set has {h}x{w}")
    return build_model(name, c, num_classes, h, backend=backend, dtype=dtype, seed=seed), \
        {"in_channels": c, "num_classes": num_classes, "image_size": h}


def model_from_checkpoint(ckpt: Checkpoint, backend: str | None):
    """Rebuild the saved architecture on ``backend`` and load the weights."""
    arch, args = ckpt.meta.get("architecture"), ckpt.meta.get("model_args")
    if not arch or not args:
        raise InputValueError(f"{ckpt.path}: the checkpoint does not name its architecture (saved from Python?); "
                              "load it with xpcnn.load_checkpoint(path, model)")
    if arch not in MODELS:
        raise InputValueError(f"{ckpt.path}: unknown architecture {arch!r}; valid models are {', '.join(MODELS)}")
    ckpt.require("normalizer")
    model = build_model(arch, args["in_channels"], args["num_classes"], args["image_size"],
                        backend=backend or "numpy", dtype=ckpt.meta.get("dtype", "float32"))
    ckpt.load_into(model)
    model.eval()
    return model, Normalizer.from_dict(ckpt.meta["normalizer"])


def command_threads(n: int | None) -> ContextManager[None]:
    """``--threads N`` for the duration of a command: N BLAS threads (and so N worker threads on NumPy); by
    default 1 where threadpoolctl is installed; 0: as the library has it. An explicit N needs threadpoolctl."""
    if n and importlib.util.find_spec("threadpoolctl") is None:
        raise CLIError(f"--threads {n} needs threadpoolctl: pip install threadpoolctl")
    return limit_blas(None if n == 0 else 1 if n is None else n, required=False)


def describe_parallel(model, ranks: int = 1) -> str:
    """How a training step runs, for the command's first line: MPI ranks, and threads per process on NumPy."""
    where = f", {ranks} MPI ranks" if ranks > 1 else ""
    if not splits_ops(model.backend.xp):
        return where
    n = step_threads()
    return where + (", 1 thread" if n <= 1 else f", {n} threads") + (" each" if ranks > 1 else "")


def fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)
