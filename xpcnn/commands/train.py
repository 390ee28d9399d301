"""``xpcnn train``: train a named CNN on a data set, with progress, metrics, plots and checkpoints.

With no arguments it trains ``digits-cnn`` on the bundled 8x8 digits and reports
the test accuracy. ``--resume PATH`` restores the saved options (explicit ones
win), weights, optimizer and RNG state, and continues exactly where it stopped.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from .. import optim
from ..checkpoint import Checkpoint, save_checkpoint
from ..cli import CLIError
from ..data import Augment, DataLoader, Normalizer
from ..layers import CrossEntropyLoss
from ..train import NonFiniteLossError, TrainingInterrupted, cosine_schedule, evaluate, fit
from ._common import (add_backend_arguments, add_data_arguments, blas_threads, describe_parallel, load_data,
                      make_model)
from ..errors import InputValueError

HELP = "train a CNN (default: digits-cnn on the bundled 8x8 digits, about 10 seconds on a CPU)"

DEFAULTS = {"backend": "numpy", "dataset": "digits", "data_dir": None, "model": None, "epochs": 20,
            "batch_size": 32, "optimizer": "sgd", "lr": None, "weight_decay": 5e-4, "seed": 0,
            "dtype": "float32", "limit": None, "augment": None}
DEFAULT_LR = {"sgd": 0.05, "adam": 1e-3, "adamw": 1e-3}
OPTIONS = tuple(DEFAULTS)  # saved in checkpoints, restored by --resume
AUGMENTED = ("cifar10",)  # data sets trained with --augment unless --no-augment
FLIPPED = ("fashion-mnist", "cifar10")  # where a mirrored image is still of its class (not digits)


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
    parser.add_argument("--epochs", type=int, default=None, help=f"epochs in all (default {DEFAULTS['epochs']})")
    parser.add_argument("--batch-size", type=int, default=None, help=f"default {DEFAULTS['batch_size']}")
    parser.add_argument("--optimizer", choices=("sgd", "adam", "adamw"), default=None,
                        help="sgd (Nesterov momentum 0.9, default), adam or adamw")
    parser.add_argument("--lr", type=float, default=None, help="initial learning rate, cosine-decayed "
                                                               "(default 0.05 for sgd, 0.001 for adam/adamw)")
    parser.add_argument("--weight-decay", type=float, default=None, help="default 5e-4")
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                        help="random crops of the zero-padded images (padding: the image size // 8, 4 at 32x32, "
                             "3 at 28x28) and, except for digits and mnist, horizontal flips (default: on for "
                             "cifar10, off elsewhere)")
    parser.add_argument("--seed", type=int, default=None, help="weights and shuffling (default 0)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default=None, help="default float32")
    parser.add_argument("--checkpoint", metavar="PATH", help="save a checkpoint here after every epoch (atomic)")
    parser.add_argument("--resume", metavar="PATH", help="continue training from this checkpoint")
    parser.add_argument("--metrics", metavar="FILE", help="append one JSON object per epoch to FILE")
    parser.add_argument("--plot", metavar="FILE", help="write a PNG of the loss and accuracy curves (matplotlib)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar and no per-epoch lines")


def resolve_options(args, saved: dict | None) -> dict:
    """Explicit options, else those saved in the resumed checkpoint, else the defaults."""
    opts = {}
    for key in OPTIONS:
        value = getattr(args, key, None)
        if value is None and saved is not None:
            value = saved.get(key)
        opts[key] = DEFAULTS[key] if value is None else value
    if opts["lr"] is None:
        opts["lr"] = DEFAULT_LR[opts["optimizer"]]
    if opts["augment"] is None:
        opts["augment"] = opts["dataset"] in AUGMENTED
    for key in ("epochs", "batch_size"):
        if opts[key] < 1:
            raise InputValueError(f"--{key.replace('_', '-')} must be >= 1, got {opts[key]}")
    if not opts["lr"] > 0 or opts["weight_decay"] < 0:
        raise InputValueError(f"--lr must be > 0 and --weight-decay >= 0, got {opts['lr']} and {opts['weight_decay']}")
    return opts


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
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(args) -> int:
    if args.threads is not None and args.threads < 0:
        raise CLIError(f"--threads must be >= 0, got {args.threads}")
    _check_plot_available(args.plot)
    with blas_threads(args.threads, args.parallel):
        return _train(args)


def _train(args) -> int:
    ckpt = Checkpoint(args.resume) if args.resume else None
    saved = ckpt.meta.get("options") if ckpt else None
    if ckpt is not None and saved is None:
        raise CLIError(f"{args.resume}: this checkpoint was not written by `xpcnn train`; resume it from Python")
    o = resolve_options(args, saved)
    train_set, test_set = load_data(o["dataset"], o["data_dir"], o["limit"])
    model, model_args = make_model(o["model"], o["dataset"], train_set.shape, train_set.num_classes, o["backend"],
                                   o["dtype"], o["seed"])
    o["model"] = model.architecture
    normalizer = Normalizer.from_dict(ckpt.meta["normalizer"]) if ckpt else Normalizer.fit(train_set)
    train_loader = DataLoader(train_set, o["batch_size"], shuffle=True, seed=o["seed"], backend=model.backend,
                              normalizer=normalizer,
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
    loss_fn = CrossEntropyLoss()
    say = (lambda *a: None) if args.quiet else print
    say(f"training {o['model']} ({model.num_parameters():,} parameters) on {o['dataset']} "
        f"({len(train_set)} train / {len(test_set)} test images) with {model.backend.spec}, {o['dtype']}"
        f"{describe_parallel(model, o['batch_size'])}, "
        f"{o['optimizer']} lr {o['lr']:g}" + (f", augment {train_loader.augment}" if o["augment"] else "")
        + (f", resuming after epoch {start}" if ckpt else ""))

    def meta() -> dict:
        return {"architecture": o["model"], "model_args": model_args, "options": o,
                "normalizer": normalizer.to_dict(), "class_names": list(train_set.class_names or []),
                "history": history}

    def save(epoch: int) -> None:
        if args.checkpoint:
            save_checkpoint(args.checkpoint, model, opt, epoch=epoch, loader=train_loader, metadata=meta())

    def on_epoch(record: dict) -> None:
        history.append(record)
        say(f"epoch {record['epoch']}/{o['epochs']}: train loss {record['train_loss']:.4f} "
            f"acc {record['train_accuracy']:.4f} | test loss {record['test_loss']:.4f} "
            f"acc {record['test_accuracy']:.4f} | {record['seconds']:.1f}s, "
            f"{record['images_per_second']:,.0f} img/s")
        if args.metrics:
            with open(args.metrics, "a") as f:
                f.write(json.dumps(record) + "\n")
        save(record["epoch"])

    try:
        with np.errstate(over="ignore", invalid="ignore"):  # a diverging run is reported once, below
            fit(model, opt, loss_fn, train_loader, epochs=o["epochs"], val_data=test_loader, callbacks=[on_epoch],
                initial_epoch=start, progress=False if args.quiet else None,
                lr_schedule=cosine_schedule(o["lr"], o["epochs"]))
    except NonFiniteLossError as e:
        kept = f"; {args.checkpoint} still holds epoch {history[-1]['epoch']}" if args.checkpoint and history else ""
        raise CLIError(f"{e}{kept}") from None
    except TrainingInterrupted as e:
        if args.checkpoint:
            save(e.epoch - 1)
            print(f"xpcnn train: {e}; saved {args.checkpoint} (continue with --resume {args.checkpoint})",
                  file=sys.stderr)
        else:
            print(f"xpcnn train: {e}; nothing saved (no --checkpoint)", file=sys.stderr)
        return 130
    if args.plot and history:
        write_plot(args.plot, history)
    final = history[-1] if history else {"test_accuracy": evaluate(model, loss_fn, test_loader)["accuracy"]}
    print(f"test accuracy {final['test_accuracy']:.4f} ({len(test_set)} images)"
          + (f"; checkpoint {args.checkpoint}" if args.checkpoint else ""))
    if args.plot:
        print(f"plot {Path(args.plot)}")
    return 0
