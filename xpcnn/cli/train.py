"""``xpcnn train``: train a named CNN on a data set, with progress, metrics, plots and checkpoints.

With no arguments it trains ``digits-cnn`` on the bundled 8x8 digits and reports
the test accuracy. ``--resume PATH`` restores the saved options (explicit ones
win), weights, optimizer and RNG state, and continues exactly where it stopped.
Under ``mpiexec -n N`` (or with ``--workers N``) it trains data-parallel on N ranks
(:mod:`xpcnn.distributed`): every rank loads, rank 0 alone prints and writes files.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
from contextlib import nullcontext
from pathlib import Path

import numpy as np

from .. import distributed, optim
from ..checkpoint import TRAIN_KEYS, Checkpoint, save_checkpoint
from ..data import Augment, DataLoader, Normalizer
from ..distributed import DistributedOptimizer, ShardedLoader
from ..layers import CrossEntropyLoss
from ..training import NonFiniteLossError, TrainingInterrupted, cosine_schedule, evaluate, fit
from ._common import (CLIError, add_backend_arguments, add_data_arguments, command_threads, describe_parallel,
                      load_data, make_model)
from ..errors import InputError, InputValueError
from ._types import non_negative, positive, real, seed
from ..files import append_line, atomic_write, output_locks

HELP = "train a CNN (default: digits-cnn on the bundled 8x8 digits, about 10 seconds on a CPU)"

DEFAULTS = {"backend": "numpy", "dataset": "digits", "data_dir": None, "model": None, "epochs": 20,
            "batch_size": 32, "optimizer": "sgd", "lr": None, "weight_decay": 5e-4, "seed": 0,
            "dtype": "float32", "limit": None, "threads": None, "augment": None}
DEFAULT_LR = {"sgd": 0.05, "adam": 1e-3, "adamw": 1e-3}
OPTIONS = tuple(DEFAULTS)  # saved in checkpoints, restored by --resume (so are the threads: same bits on resume)
# the numeric options' types: they check what is typed, and what a resumed checkpoint says
NUMBERS = {"epochs": positive, "batch_size": positive, "lr": real(0.0, inclusive=False), "weight_decay": real(0.0),
           "seed": seed, "limit": positive, "threads": non_negative}
AUGMENTED = ("cifar10",)  # data sets trained with --augment unless --no-augment
FLIPPED = ("fashion-mnist", "cifar10")  # where a mirrored image is still of its class (not digits)
FLAGS = ("augment",)  # the boolean options


def augmentation(dataset: str, image_size: int) -> Augment:
    """What ``--augment`` does: crops padded by an eighth of the image (He et al.'s 4 pixels at 32x32), flips
    where they keep the class."""
    return Augment(crop=max(1, image_size // 8), flip=dataset in FLIPPED)


def add_arguments(parser) -> None:
    add_backend_arguments(parser)
    add_data_arguments(parser)
    parser.add_argument("--model", default=None, metavar="NAME",
                        help="digits-cnn, lenet, vgg-small, allcnn-gap, resnet20, resnet32, resnet56 "
                             "(default: the data set's)")
    parser.add_argument("--epochs", type=NUMBERS["epochs"], default=None,
                        help=f"epochs in all (default {DEFAULTS['epochs']})")
    parser.add_argument("--batch-size", type=NUMBERS["batch_size"], default=None,
                        help=f"default {DEFAULTS['batch_size']}")
    parser.add_argument("--optimizer", choices=("sgd", "adam", "adamw"), default=None,
                        help="sgd (Nesterov momentum 0.9, default), adam or adamw")
    parser.add_argument("--lr", type=NUMBERS["lr"], default=None,
                        help="initial learning rate, cosine-decayed (default 0.05 for sgd, 0.001 for adam/adamw)")
    parser.add_argument("--weight-decay", type=NUMBERS["weight_decay"], default=None, help="default 5e-4")
    parser.add_argument("--seed", type=NUMBERS["seed"], default=None, help="weights and shuffling (default 0)")
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                        help="random crops of the zero-padded images (padding: the image size // 8, 4 at 32x32, "
                             "3 at 28x28) and, except for digits and mnist, horizontal flips (default: on for "
                             "cifar10, off elsewhere)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default=None, help="default float32")
    parser.add_argument("--checkpoint", metavar="PATH", help="save a checkpoint here after every epoch (atomic)")
    parser.add_argument("--resume", metavar="PATH", help="continue training from this checkpoint")
    parser.add_argument("--metrics", metavar="FILE", help="append one JSON object per epoch to FILE")
    parser.add_argument("--plot", metavar="FILE", help="write a PNG of the loss and accuracy curves (matplotlib)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar and no per-epoch lines")
    parser.add_argument("--workers", type=positive, default=None, metavar="N",
                        help="train data-parallel on N MPI ranks: starts `mpiexec -n N` itself (needs .[mpi]); "
                             "the same as `mpiexec -n N xpcnn train ...`")


def resolve_options(args, saved: dict | None, source: str = "checkpoint") -> dict:
    """Explicit options, else those saved in the resumed checkpoint ``source``, else the defaults."""
    saved = {k: _saved_option(k, v, source) for k, v in (saved or {}).items() if k in OPTIONS and v is not None}
    opts = {}
    for key in OPTIONS:
        value = getattr(args, key, None)
        opts[key] = value if value is not None else saved.get(key, DEFAULTS[key])
    if args.data_dir is not None:  # stored absolute: evaluate and resume work from any directory
        opts["data_dir"] = str(Path(args.data_dir).expanduser().resolve())
    if opts["lr"] is None:
        opts["lr"] = DEFAULT_LR.get(opts["optimizer"])
    if opts["lr"] is None:
        raise InputValueError(f"{source}: unknown optimizer {opts['optimizer']!r}; valid are {', '.join(DEFAULT_LR)}")
    if opts["augment"] is None:
        opts["augment"] = opts["dataset"] in AUGMENTED
    return opts


def _saved_option(key: str, value, source: str):
    """A resumed checkpoint's option, checked as the typed option would be (the file may have been edited)."""
    check = NUMBERS.get(key)
    if key in FLAGS:
        if not isinstance(value, bool):
            raise InputValueError(f"{source}: saved option {key!r} must be true or false, got {value!r}")
        return value
    if check is None:
        if not isinstance(value, str):
            raise InputValueError(f"{source}: saved option {key!r} must be a string, got {value!r}")
        return value
    wanted = int if check.__name__ == "integer" else (int, float)
    if isinstance(value, bool) or not isinstance(value, wanted):
        raise InputValueError(f"{source}: saved option {key!r} must be a number, got {value!r}")
    try:
        return check(value)
    except argparse.ArgumentTypeError as e:
        raise InputValueError(f"{source}: saved option {key!r} {e}") from None


def make_optimizer(name: str, params, lr: float, weight_decay: float):
    if name == "sgd":
        return optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    if name == "adam":
        return optim.Adam(params, lr=lr, weight_decay=weight_decay)
    return optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def _check_plot_available(path: str | None) -> None:
    if path:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise CLIError('--plot needs matplotlib: pip install "xpcnn[plot]"') from None
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        if _plot_format(path) not in FigureCanvasAgg.get_supported_filetypes():
            raise CLIError(f"--plot {path}: unknown image type {_plot_format(path)!r}; use .png, .pdf or .svg")


def _plot_format(path: str) -> str:
    return Path(path).suffix[1:].lower() or "png"


def write_plot(path: str, history: list[dict]) -> None:
    """Loss and accuracy per epoch (train and test) as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, key, title in ((ax1, "loss", "loss"), (ax2, "accuracy", "accuracy")):
        ax.plot(epochs, [r[f"train_{key}"] for r in history], "o-", label="train")
        if all(f"test_{key}" in r for r in history):
            ax.plot(epochs, [r[f"test_{key}"] for r in history], "o-", label="test")
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    image = io.BytesIO()
    fig.savefig(image, format=_plot_format(path), dpi=100)
    plt.close(fig)
    atomic_write(path, image.getvalue())


def run(args) -> int:
    if args.workers is not None:
        return _launch(args)
    comm = distributed.world()
    if comm.size == 1:
        return _prepare(args, comm)
    try:
        code = _prepare(args, comm)
        comm.barrier()  # rank 0 may still be saving: leave together
        return code
    except BaseException as e:  # one rank failing must not leave the others waiting in a collective
        if isinstance(e, (InputError, OSError)) or not isinstance(e, Exception):
            print(f"xpcnn train (rank {comm.rank} of {comm.size}): error: {e}", file=sys.stderr, flush=True)
        else:
            import traceback
            traceback.print_exc()
        comm.abort(2 if isinstance(e, (InputError, OSError)) else 1)
        raise


def _prepare(args, comm) -> int:
    """Read the resumed checkpoint and the options, hold the output locks (rank 0: it alone writes), train."""
    ckpt = Checkpoint(args.resume) if args.resume else None
    saved = ckpt.meta.get("options") if ckpt else None
    if ckpt is not None and not isinstance(saved, dict):
        raise CLIError(f"{args.resume}: this checkpoint was not written by `xpcnn train`; resume it from Python")
    if ckpt is not None:
        ckpt.require(*TRAIN_KEYS)
    o = resolve_options(args, saved, args.resume)
    locks = output_locks(args.checkpoint, args.metrics, args.plot) if comm.rank == 0 else nullcontext()
    with locks, command_threads(o["threads"]):
        _check_plot_available(args.plot)
        return _train(args, ckpt, o)


def _rank_backend(backend: str, comm) -> str:
    """One GPU per rank: a plain ``cupy`` becomes ``cupy:LOCAL_RANK`` on several ranks."""
    return f"cupy:{distributed.local_rank()}" if backend == "cupy" and comm.size > 1 else backend


def _launch(args) -> int:
    """``--workers N``: this command again under ``mpiexec -n N`` (without ``--workers``)."""
    if distributed.launched():
        raise CLIError("--workers N starts mpiexec itself: under mpiexec, leave it out")
    argv, rest = list(args._argv), []
    while argv:
        a = argv.pop(0)
        if a == "--workers":
            argv.pop(0)
        elif not a.startswith("--workers="):
            rest.append(a)
    module = ["xpcnn.cli"] + rest
    distributed.find_mpiexec()  # no MPI: one clear line before anything starts
    print(f"xpcnn train: starting {args.workers} MPI ranks: mpiexec -n {args.workers} python -m {' '.join(module)}",
          flush=True)
    return distributed.launch(args.workers, module)[1]


def _train(args, ckpt: Checkpoint | None, o: dict) -> int:
    train_set, test_set = load_data(o["dataset"], o["data_dir"], o["limit"])
    comm = distributed.world()
    model, model_args = make_model(o["model"], o["dataset"], train_set.shape, train_set.num_classes,
                                   _rank_backend(o["backend"], comm), o["dtype"], o["seed"])
    o["model"] = model.architecture
    normalizer = Normalizer.from_dict(ckpt.meta["normalizer"]) if ckpt else Normalizer.fit(train_set)
    train_loader = ShardedLoader(train_set, o["batch_size"], shuffle=True, seed=o["seed"], backend=model.backend,
                                 normalizer=normalizer, comm=comm,  # this rank's shard of every global batch
                                 augment=augmentation(o["dataset"], train_set.shape[1]) if o["augment"] else None)
    test_loader = DataLoader(test_set, min(256, len(test_set)), backend=model.backend, normalizer=normalizer)
    opt = make_optimizer(o["optimizer"], model.parameters(), o["lr"], o["weight_decay"])
    history: list[dict] = []
    start = 0
    if ckpt is not None:
        ckpt.load_into(model, opt, train_loader)
        start, history = ckpt.epoch, list(ckpt.meta.get("history", []))
        if start >= o["epochs"] and train_loader.position == 0:
            raise CLIError(f"{args.resume} already holds {start} epoch(s); pass a larger --epochs to continue")
        planned = ckpt.meta["options"].get("epochs")
        if planned != o["epochs"] and not args.quiet:
            print(f"xpcnn train: note: {args.resume} was planned for {planned} epochs; the learning rate follows a "
                  f"cosine over {o['epochs']} from epoch {start + 1} on (the same bits as one run only with the "
                  f"same --epochs)", file=sys.stderr)
    loss_fn = CrossEntropyLoss()
    root = comm.rank == 0  # writes the files and prints
    say = print if root and not args.quiet else (lambda *a: None)
    say(f"training {o['model']} ({model.num_parameters():,} parameters) on {o['dataset']} "
        f"({len(train_set)} train / {len(test_set)} test images) with {model.backend.spec}, {o['dtype']}"
        f"{describe_parallel(model, comm.size)}, "
        f"{o['optimizer']} lr {o['lr']:g}" + (f", augment {train_loader.augment}" if o["augment"] else "")
        + (f", resuming after epoch {start}" if ckpt else ""))

    def meta() -> dict:
        return {"architecture": o["model"], "model_args": model_args, "options": o,
                "normalizer": normalizer.to_dict(), "class_names": list(train_set.class_names or []),
                "history": history}

    def save(epoch: int, tally: dict | None = None) -> None:
        if args.checkpoint and root:
            extra = {"epoch_tally": tally} if tally is not None else {}
            save_checkpoint(args.checkpoint, model, opt, epoch=epoch, loader=train_loader, metadata=meta() | extra)

    def on_epoch(record: dict) -> None:
        history.append(record)
        say(f"epoch {record['epoch']}/{o['epochs']}: train loss {record['train_loss']:.4f} "
            f"acc {record['train_accuracy']:.4f} | test loss {record['test_loss']:.4f} "
            f"acc {record['test_accuracy']:.4f} | {record['seconds']:.1f}s, "
            f"{record['images_per_second']:,.0f} img/s")
        if args.metrics and root:
            append_line(args.metrics, json.dumps(record))
        save(record["epoch"])

    try:
        with np.errstate(over="ignore", invalid="ignore"):  # a diverging run is reported once, below
            fit(model, DistributedOptimizer(opt, comm) if comm.size > 1 else opt, loss_fn, train_loader,
                epochs=o["epochs"], val_data=test_loader, callbacks=[on_epoch], initial_epoch=start,
                progress=False if args.quiet else None,
                lr_schedule=cosine_schedule(o["lr"], o["epochs"]),
                initial_tally=ckpt.meta.get("epoch_tally") if ckpt is not None else None)
    except NonFiniteLossError as e:
        if not args.checkpoint:
            kept = "nothing saved (no --checkpoint)"
        elif history:
            kept = f"{args.checkpoint} still holds epoch {history[-1]['epoch']}"
        else:
            kept = f"no epoch finished, {args.checkpoint} not written"
        if root:  # every rank stopped at the same step; rank 0 says why
            print(f"xpcnn train: error: {e}; {kept}", file=sys.stderr)
        return 2
    except TrainingInterrupted as e:
        if not root:
            return 130
        if args.checkpoint:
            save(e.epoch - 1, e.tally)
            print(f"xpcnn train: {e}; saved {args.checkpoint} (continue with --resume {args.checkpoint})",
                  file=sys.stderr)
        else:
            print(f"xpcnn train: {e}; nothing saved (no --checkpoint)", file=sys.stderr)
        return 130
    if not root:
        return 0
    if args.plot and history:
        write_plot(args.plot, history)
    final = history[-1] if history else {"test_accuracy": evaluate(model, loss_fn, test_loader)["accuracy"]}
    print(f"test accuracy {final['test_accuracy']:.4f} ({len(test_set)} images)"
          + (f"; checkpoint {args.checkpoint}" if args.checkpoint else ""))
    if args.plot:
        print(f"plot {Path(args.plot)}")
    return 0
