"""``xpcnn predict``: the class and probabilities a checkpoint gives one image (PNG) or an array (.npy)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..backend import to_numpy
from ..checkpoint import Checkpoint
from ._common import add_backend_arguments, blas_threads, model_from_checkpoint
from ..errors import InputValueError

HELP = "predict the class of an image (PNG) or a .npy array with a checkpoint"


def add_arguments(parser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="PATH", help="a checkpoint from `xpcnn train`")
    add_backend_arguments(parser)
    parser.add_argument("input", metavar="IMAGE.png|FILE.npy",
                        help="a PNG (converted to the model's channels and size) or a .npy array of raw pixel "
                             "values in the data set's range: (H, W), (C, H, W) or a batch (N, C, H, W)")
    parser.add_argument("--top", type=int, default=3, help="how many classes to list (default 3)")


def load_input(path: str, channels: int, size: int, scale: float) -> np.ndarray:
    """Raw images ``(N, C, H, W)`` in the data set's units (0..scale)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"input {path!r} does not exist")
    if p.suffix.lower() == ".npy":
        try:
            x = np.load(p, allow_pickle=False)
        except ValueError as e:
            raise InputValueError(f"{path}: not a readable .npy array ({e})") from None
        if x.ndim == 2:
            x = x[None, None]
        elif x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[1:] != (channels, size, size):
            raise InputValueError(f"{path}: expected an array of shape ({size}, {size}), ({channels}, {size}, {size}) "
                             f"or (N, {channels}, {size}, {size}), got {x.shape}")
        return x
    from ..png import read_png, to_model_input

    x = to_model_input(read_png(p), channels, size) * scale
    return x[None]


def run(args) -> int:
    ckpt = Checkpoint(args.checkpoint)
    with blas_threads(args.threads):
        model, normalizer = model_from_checkpoint(ckpt, args.backend)
        margs = ckpt.meta["model_args"]
        x = load_input(args.input, margs["in_channels"], margs["image_size"], normalizer.scale)
        logits = to_numpy(model(normalizer.apply(x.astype(np.float64), model.backend))).astype(np.float64)
    z = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    names = ckpt.meta.get("class_names") or [str(i) for i in range(probs.shape[1])]
    for i, p in enumerate(probs):
        order = np.argsort(-p)[:max(1, args.top)]
        best = int(order[0])
        prefix = f"[{i}] " if len(probs) > 1 else ""
        print(f"{prefix}class {best} ({names[best]}), probability {p[best]:.4f}; "
              + ", ".join(f"{int(k)} ({names[int(k)]}): {p[int(k)]:.4f}" for k in order))
    return 0
