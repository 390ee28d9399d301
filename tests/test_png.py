"""The stdlib PNG reader behind `xpcnn predict IMAGE.png`: every filter type, colour types, bad files."""
import struct
import zlib

import numpy as np
import pytest

from xpcnn.png import read_png, to_model_input


def _filter_row(ftype, line, prev, bpp):
    """PNG encoder side of one row filter (the inverse of what the reader undoes)."""
    line, prev = line.astype(np.int32), prev.astype(np.int32)
    out = np.zeros_like(line)
    for i in range(len(line)):
        a = line[i - bpp] if i >= bpp else 0
        b = prev[i]
        c = prev[i - bpp] if i >= bpp else 0
        if ftype == 0:
            pred = 0
        elif ftype == 1:
            pred = a
        elif ftype == 2:
            pred = b
        elif ftype == 3:
            pred = (a + b) // 2
        else:
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
        out[i] = (line[i] - pred) & 0xFF
    return out.astype(np.uint8)


def write_png(path, pixels, colour, filters=(0, 1, 2, 3, 4), palette=None):
    h, w = pixels.shape[:2]
    rows = pixels.reshape(h, -1).astype(np.uint8)
    bpp = rows.shape[1] // w
    raw, prev = b"", np.zeros(rows.shape[1], dtype=np.uint8)
    for y in range(h):
        f = filters[y % len(filters)]
        raw += bytes([f]) + _filter_row(f, rows[y], prev, bpp).tobytes()
        prev = rows[y]

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, colour, 0, 0, 0))
    if palette is not None:
        data += chunk(b"PLTE", palette.astype(np.uint8).tobytes())
    data += chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    path.write_bytes(data)


@pytest.mark.parametrize("colour,channels", [(0, 1), (2, 3), (4, 2), (6, 4)])
def test_every_filter_and_colour_type_round_trips(tmp_path, colour, channels):
    pixels = np.random.default_rng(colour).integers(0, 256, (7, 5, channels), dtype=np.uint8)
    write_png(tmp_path / "a.png", pixels, colour)
    np.testing.assert_array_equal(read_png(tmp_path / "a.png"), pixels / 255.0)


def test_palette_png(tmp_path):
    palette = np.array([[0, 0, 0], [255, 0, 0], [0, 128, 255]])
    index = np.array([[0, 1, 2], [2, 1, 0]], dtype=np.uint8)
    write_png(tmp_path / "p.png", index[:, :, None], 3, palette=palette)
    np.testing.assert_array_equal(read_png(tmp_path / "p.png"), palette[index] / 255.0)


def test_matches_pillow_when_installed(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    pixels = np.random.default_rng(1).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "pil.png", optimize=True)
    np.testing.assert_array_equal(read_png(tmp_path / "pil.png"), pixels / 255.0)


def test_to_model_input_grey_and_shrink():
    img = np.zeros((16, 16, 4))
    img[:8, :8, :3] = 1.0  # white top-left quarter, alpha dropped
    x = to_model_input(img, channels=1, size=8)
    assert x.shape == (1, 8, 8)
    np.testing.assert_allclose(x[0, :4, :4], 1.0)
    np.testing.assert_allclose(x[0, 4:, :], 0.0)
    assert to_model_input(img[:, :, :1], channels=3, size=32).shape == (3, 32, 32)


def test_bad_files_are_clear_errors(tmp_path):
    (tmp_path / "x.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="not a PNG"):
        read_png(tmp_path / "x.png")
    write_png(tmp_path / "t.png", np.zeros((4, 4, 1), dtype=np.uint8), 0)
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[:40])
    with pytest.raises(ValueError, match="truncated|without image data"):
        read_png(tmp_path / "t.png")
