"""A small PNG reader (standard library + NumPy), so ``xpcnn predict`` needs no imaging package.

Reads non-interlaced PNGs of 8 or 16 bits per sample: greyscale, grey+alpha, RGB, RGBA and
8-bit palette images; returns ``(H, W, C)`` floats in [0, 1]. Interlaced and low-bit-depth
files raise a ``ValueError`` that says so.
"""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from .errors import InputValueError

SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel


def _chunks(data: bytes, path: str):
    pos = len(SIGNATURE)
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if len(body) != length:
            raise InputValueError(f"{path}: truncated PNG ({kind.decode('latin-1')} chunk)")
        yield kind, body
        pos += 12 + length


def _unfilter(raw: bytes, height: int, stride: int, bpp: int) -> np.ndarray:
    """Undo the per-row PNG filters (None, Sub, Up, Average, Paeth)."""
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(height, stride + 1)
    out = np.zeros((height, stride), dtype=np.uint8)
    prev = np.zeros(stride, dtype=np.int32)
    for y in range(height):
        ftype, line = rows[y, 0], rows[y, 1:].astype(np.int32)
        if ftype == 0:
            cur = line
        elif ftype == 2:
            cur = (line + prev) & 0xFF
        elif ftype in (1, 3, 4):  # these depend on the reconstructed left neighbour: byte by byte
            cur = np.zeros(stride, dtype=np.int32)
            for i in range(stride):
                a = cur[i - bpp] if i >= bpp else 0
                b = prev[i]
                c = prev[i - bpp] if i >= bpp else 0
                if ftype == 1:
                    pred = a
                elif ftype == 3:
                    pred = (a + b) // 2
                else:
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                cur[i] = (line[i] + pred) & 0xFF
        else:
            raise InputValueError(f"unknown PNG filter type {ftype} in row {y}")
        out[y] = cur
        prev = cur
    return out


def read_png(path: str | Path) -> np.ndarray:
    """The image as ``(H, W, C)`` float64 in [0, 1] (C: 1 grey, 2 grey+alpha, 3 RGB, 4 RGBA)."""
    path = str(path)
    data = Path(path).read_bytes()
    if not data.startswith(SIGNATURE):
        raise InputValueError(f"{path}: not a PNG file")
    header, palette, idat = None, None, []
    for kind, body in _chunks(data, path):
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"PLTE":
            palette = np.frombuffer(body, dtype=np.uint8).reshape(-1, 3)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    if header is None or not idat:
        raise InputValueError(f"{path}: PNG without image data")
    width, height, depth, colour, _, _, interlace = header
    if colour not in _CHANNELS or depth not in (8, 16) or (colour == 3 and depth != 8):
        raise InputValueError(f"{path}: unsupported PNG (colour type {colour}, {depth} bits); save it as 8-bit grey or RGB")
    if interlace:
        raise InputValueError(f"{path}: interlaced PNGs are not supported; save it without interlacing")
    channels = _CHANNELS[colour]
    bpp = channels * depth // 8
    try:
        raw = zlib.decompress(b"".join(idat))
    except zlib.error as e:
        raise InputValueError(f"{path}: corrupt PNG data ({e})") from None
    if len(raw) != height * (width * bpp + 1):
        raise InputValueError(f"{path}: corrupt PNG data (expected {height * (width * bpp + 1)} bytes, got {len(raw)})")
    pixels = _unfilter(raw, height, width * bpp, bpp)
    if depth == 16:
        img = pixels.view(">u2").reshape(height, width, channels) / 65535.0
    else:
        img = pixels.reshape(height, width, channels) / 255.0
    if colour == 3:
        if palette is None:
            raise InputValueError(f"{path}: palette PNG without a palette")
        img = palette[pixels.reshape(height, width)] / 255.0
    return img


def to_model_input(img: np.ndarray, channels: int, size: int) -> np.ndarray:
    """``(H, W, C)`` in [0, 1] -> ``(channels, size, size)``: drop alpha, grey<->RGB, area/bilinear-free resize."""
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
        total = np.zeros((size, size))
        count = np.zeros((size, size))
        np.add.at(total, (rows[:, None], cols[None, :]), plane)
        np.add.at(count, (rows[:, None], cols[None, :]), 1.0)
        return total / count
    ys = np.minimum((np.arange(size) * h) // size, h - 1)  # enlarge: nearest
    xs = np.minimum((np.arange(size) * w) // size, w - 1)
    return plane[ys[:, None], xs[None, :]]
