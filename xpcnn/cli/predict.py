"""``xpcnn predict``: the class and probabilities a checkpoint gives one image (Pillow) or an array (.npy)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..backend import to_numpy
from ..checkpoint import Checkpoint
from ._common import CLIError, add_backend_arguments, command_threads, model_from_checkpoint
from ..errors import InputValueError
from ._types import positive

HELP = "predict the class of an image (JPEG, PNG, BMP, ...: needs Pillow) or a .npy array with a checkpoint"


def add_arguments(parser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="PATH", help="a checkpoint from `xpcnn train`")
    add_backend_arguments(parser)
    parser.add_argument("input", metavar="IMAGE|FILE.npy",
                        help="an image Pillow reads (converted to the model's channels and size, alpha dropped) or "
                             "a .npy array of raw pixel values in the data set's range: (H, W), (C, H, W) or a batch "
                             "(N, C, H, W)")
    parser.add_argument("--top", type=positive, default=3, help="how many classes to list (default 3)")


def load_input(path: str, channels: int, size: int, scale: float) -> np.ndarray:
    """Raw images ``(N, C, H, W)`` in the data set's units (0..scale)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"input {path!r} does not exist")
    if not p.is_file():
        raise InputValueError(f"input {path!r} is not a regular file")
    if p.suffix.lower() == ".npy":
        return _read_npy(path, channels, size)
    from ..images import pillow, read_image, to_model_input

    try:
        pillow()
    except ImportError as e:
        raise CLIError(str(e)) from None
    x = to_model_input(read_image(p), channels, size) * scale
    return x[None]


def _read_npy(path: str, channels: int, size: int) -> np.ndarray:
    """A real, finite, non-empty array; memory-mapped first, so a header can never ask for more than the file."""
    try:
        x = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise InputValueError(f"{path}: not a readable .npy array ({e})") from None
    if x.dtype.kind not in "iuf":
        raise InputValueError(f"{path}: expected real numbers (integers or floats), got dtype {x.dtype}")
    if x.ndim == 2:
        x = x[None, None]
    elif x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[1:] != (channels, size, size) or x.shape[0] == 0:
        raise InputValueError(f"{path}: expected an array of shape ({size}, {size}), ({channels}, {size}, {size}) "
                              f"or (N, {channels}, {size}, {size}) with N >= 1, got {x.shape}")
    x = np.array(x, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        raise InputValueError(f"{path}: the array holds NaN or infinite values")
    return x


def run(args) -> int:
    ckpt = Checkpoint(args.checkpoint)
    with command_threads(args.threads):
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
