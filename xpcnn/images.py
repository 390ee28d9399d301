"""Reading images for ``xpcnn predict`` with Pillow: JPEG, PNG (every colour type and depth), BMP, GIF, TIFF, ...

:func:`read_image` returns ``(H, W, C)`` floats in [0, 1]; :func:`to_model_input` converts that to the
model's channels and size. Every unreadable, corrupt (PNG CRCs are checked) or oversized file raises
one :class:`~xpcnn.errors.InputValueError` naming it.
"""
from __future__ import annotations

import os
import warnings

import numpy as np

from .errors import InputValueError

# Pillow's decompression-bomb limit (about 89 million pixels, a 0.25 GiB RGB image), made an error rather than
# Pillow's warning: a small file declaring a huge image is refused before it is decoded.
MAX_PIXELS = 89_478_485
_GREY = ("1", "L", "LA", "La")
_SIXTEEN_BIT = ("I", "I;16", "I;16B", "I;16L", "I;16N")


def pillow():
    """``PIL.Image``; ImportError saying what to install without it."""
    try:
        from PIL import Image
    except ImportError:
        raise ImportError('reading images needs Pillow: pip install "xpcnn[image]" (or give a .npy array)') from None
    return Image


def read_image(path: str | os.PathLike) -> np.ndarray:
    """The image as ``(H, W, C)`` float64 in [0, 1]: C is 1 (grey) or 3 (RGB); alpha is dropped."""
    Image = pillow()
    where = os.fspath(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:  # reads the header; verify() checks PNG chunk CRCs, IDAT's too
                img.verify()
            with Image.open(path) as img:  # verify() leaves the image unusable: open it again
                width, height = img.size
                if width * height > MAX_PIXELS:
                    raise InputValueError(f"{where}: {width}x{height} image is larger than the "
                                          f"{MAX_PIXELS:,}-pixel limit")
                if width == 0 or height == 0:
                    raise InputValueError(f"{where}: empty image ({width}x{height})")
                img.load()
                return _to_array(img, where)
    except InputValueError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise InputValueError(f"{where}: image larger than the pixel limit ({e})") from None
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - Pillow reports a malformed file with many types: OSError,
        # SyntaxError (bad PNG CRC), struct.error, ValueError, IndexError, EOFError, zlib.error ...
        raise InputValueError(f"{where}: not a readable image ({type(e).__name__}: {e})") from None


def _to_array(img, where: str) -> np.ndarray:
    """8-bit grey or RGB (palettes expanded, alpha dropped); 16-bit grey keeps its precision."""
    if img.mode in _SIXTEEN_BIT:  # 16-bit grey PNG/TIFF (Pillow's "I;16", or "I" in some versions)
        a = np.asarray(img, dtype=np.float64)
        if a.min(initial=0) < 0 or a.max(initial=0) > 65535:
            raise InputValueError(f"{where}: {img.mode} image with values outside 0..65535")
        return a[:, :, None] / 65535.0
    if img.mode == "F":
        raise InputValueError(f"{where}: floating-point images are not supported; give a .npy array instead")
    if img.mode in ("P", "PA"):  # an index past the palette's end is an error (PNG spec); Pillow paints it black
        entries = len(img.getpalette() or []) // 3
        used = int(np.asarray(img.getchannel(0)).max(initial=0))
        if used >= entries:
            raise InputValueError(f"{where}: pixel uses colour {used} of a {entries}-colour palette")
    grey = img.mode in _GREY
    return np.asarray(img.convert("L" if grey else "RGB"), dtype=np.float64).reshape(img.height, img.width, -1) / 255.0


def to_model_input(img: np.ndarray, channels: int, size: int) -> np.ndarray:
    """``(H, W, C)`` in [0, 1] -> ``(channels, size, size)``: drop alpha, grey<->RGB, area-average resize."""
    if img.shape[2] in (2, 4):
        img = img[:, :, :-1]
    if channels == 1 and img.shape[2] == 3:
        img = img @ np.array([0.299, 0.587, 0.114])[:, None]
    elif channels == 3 and img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    return np.stack([_resize(img[:, :, c], size) for c in range(channels)])


def _resize(plane: np.ndarray, size: int) -> np.ndarray:
    """Resize one plane to ``size x size`` by averaging the source pixels that fall in each target cell."""
    h, w = plane.shape
    rows = np.minimum((np.arange(h) * size) // h, size - 1)
    cols = np.minimum((np.arange(w) * size) // w, size - 1)
    if h >= size and w >= size:  # shrink: mean of each cell
        cell = (rows[:, None] * size + cols[None, :]).ravel()
        total = np.bincount(cell, weights=plane.ravel(), minlength=size * size)
        count = np.bincount(cell, minlength=size * size)
        return (total / count).reshape(size, size)
    ys = np.minimum((np.arange(size) * h) // size, h - 1)  # enlarge: nearest
    xs = np.minimum((np.arange(size) * w) // size, w - 1)
    return plane[ys[:, None], xs[None, :]]
