"""Images for `xpcnn predict` (xpcnn.images, Pillow): every PNG filter and colour type, JPEG, BMP, GIF, TIFF; corrupt,
oversized and odd files give one line naming the file."""
import struct
import zlib

import numpy as np
import pytest

from xpcnn.cli import main
from xpcnn.errors import InputValueError

Image = pytest.importorskip("PIL.Image", reason="Pillow reads the images (pip install -e '.[image]')")
from xpcnn.images import MAX_PIXELS, read_image, to_model_input  # noqa: E402


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


def chunk(kind, body, crc=None):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) if crc is None
                                                                       else crc)


ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def write_png(path, pixels, colour, filters=(0, 1, 2, 3, 4), palette=None, ihdr=None, interlace=False):
    """A PNG written by hand (so that every row filter, Adam7 interlacing and malformed variants can be made)."""
    h, w = pixels.shape[:2]
    raw = b""
    for x0, y0, dx, dy in ADAM7 if interlace else ((0, 0, 1, 1),):
        sub = pixels[y0::dy, x0::dx]
        if sub.size == 0:
            continue  # an empty pass is left out
        rows = sub.reshape(sub.shape[0], -1).astype(np.uint8)
        bpp = rows.shape[1] // sub.shape[1]
        prev = np.zeros(rows.shape[1], dtype=np.uint8)
        for y in range(len(rows)):
            f = filters[y % len(filters)]
            raw += bytes([f]) + _filter_row(f, rows[y], prev, bpp).tobytes()
            prev = rows[y]
    header = ihdr or struct.pack(">IIBBBBB", w, h, 8, colour, 0, 0, int(interlace))
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
    if palette is not None:
        data += chunk(b"PLTE", palette.astype(np.uint8).tobytes())
    data += chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    path.write_bytes(data)


@pytest.mark.parametrize("interlace", [False, True])
@pytest.mark.parametrize("colour,channels", [(0, 1), (2, 3), (4, 2), (6, 4)])
def test_every_png_filter_colour_type_and_interlacing(tmp_path, colour, channels, interlace):
    pixels = np.random.default_rng(colour).integers(0, 256, (11, 9, channels), dtype=np.uint8)  # all 7 passes
    write_png(tmp_path / "a.png", pixels, colour, interlace=interlace)
    want = pixels[:, :, :1 if channels <= 2 else 3] / 255.0  # alpha dropped
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), want)


def test_palette_png(tmp_path):
    palette = np.array([[0, 0, 0], [255, 0, 0], [0, 128, 255]])
    index = np.array([[0, 1, 2], [2, 1, 0]], dtype=np.uint8)
    write_png(tmp_path / "p.png", index[:, :, None], 3, palette=palette)
    np.testing.assert_array_equal(read_image(tmp_path / "p.png"), palette[index] / 255.0)


RGB = np.random.default_rng(1).integers(0, 256, (9, 11, 3), dtype=np.uint8)


@pytest.mark.parametrize("name,kw", [("rgb.png", {}), ("rgb.bmp", {}), ("rgb.tiff", {}), ("rgb.webp",
                                      {"lossless": True}), ("rgba.png", {})])
def test_lossless_formats_read_exactly(tmp_path, name, kw):
    img = Image.fromarray(RGB)
    if name.startswith("rgba"):
        img = Image.fromarray(np.dstack([RGB, np.full(RGB.shape[:2], 7, np.uint8)]))
    if name.endswith(".webp"):
        from PIL import features
        if not features.check("webp"):
            pytest.skip("this Pillow has no WebP")
    img.save(tmp_path / name, **kw)
    np.testing.assert_array_equal(read_image(tmp_path / name), RGB / 255.0)


def test_grey_kinds_1_bit_16_bit_low_depth_palette_gif_and_jpeg(tmp_path):
    grey = (np.arange(12, dtype=np.uint8).reshape(3, 4) * 20)
    Image.fromarray(grey).save(tmp_path / "g.png")
    np.testing.assert_array_equal(read_image(tmp_path / "g.png"), grey[:, :, None] / 255.0)
    Image.fromarray(grey > 100).save(tmp_path / "b.png")  # 1 bit per pixel
    np.testing.assert_array_equal(read_image(tmp_path / "b.png"), (grey > 100)[:, :, None] * 1.0)
    sixteen = grey.astype(np.uint16) * 257 + 3
    Image.fromarray(sixteen).save(tmp_path / "s.png")  # 16-bit grey keeps its precision
    np.testing.assert_array_equal(read_image(tmp_path / "s.png"), sixteen[:, :, None] / 65535.0)
    pal = Image.fromarray(grey % 4).convert("P")
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255])
    pal.save(tmp_path / "p4.png", bits=2)  # a 2-bit palette PNG
    want = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]])[grey % 4] / 255.0
    np.testing.assert_array_equal(read_image(tmp_path / "p4.png"), want)
    pal.save(tmp_path / "p.gif")
    np.testing.assert_array_equal(read_image(tmp_path / "p.gif"), want)
    flat = np.full((16, 16, 3), (200, 100, 50), np.uint8)
    Image.fromarray(flat).save(tmp_path / "photo.jpg", quality=95)
    assert np.abs(read_image(tmp_path / "photo.jpg") - flat / 255.0).max() < 4 / 255  # JPEG is lossy


def test_to_model_input_grey_and_shrink():
    img = np.zeros((16, 16, 4))
    img[:8, :8, :3] = 1.0  # white top-left quarter, alpha dropped
    x = to_model_input(img, channels=1, size=8)
    assert x.shape == (1, 8, 8)
    np.testing.assert_allclose(x[0, :4, :4], 1.0)
    np.testing.assert_allclose(x[0, 4:, :], 0.0)
    assert to_model_input(img[:, :, :1], channels=3, size=32).shape == (3, 32, 32)
    odd = np.arange(35.0).reshape(7, 5, 1)  # uneven cells: each output is the mean of the pixels that fall in it
    x = to_model_input(odd, channels=1, size=2)[0]
    np.testing.assert_allclose(x, [[odd[:4, :3].mean(), odd[:4, 3:].mean()], [odd[4:, :3].mean(), odd[4:, 3:].mean()]])


def _bad_pngs(tmp_path):
    """Name -> a malformed PNG file."""
    good = tmp_path / "good.png"
    write_png(good, np.zeros((4, 4, 1), dtype=np.uint8), 0)
    data = good.read_bytes()
    files = {"not_png": b"not a png", "truncated": data[:40], "empty": b""}
    ihdr_at = 8
    bad_crc = bytearray(data)
    bad_crc[ihdr_at + 8 + 13] ^= 0xFF  # IHDR's CRC
    files["bad_crc"] = bytes(bad_crc)
    idat = data.index(b"IDAT") - 4
    bad_idat_crc = bytearray(data)
    length = struct.unpack(">I", data[idat:idat + 4])[0]
    bad_idat_crc[idat + 8 + length] ^= 0xFF
    files["bad_idat_crc"] = bytes(bad_idat_crc)
    sig = b"\x89PNG\r\n\x1a\n"
    files["ihdr_wrong_length"] = sig + chunk(b"IHDR", struct.pack(">IIBBBB", 4, 4, 8, 0, 0, 0)) + data[33:]
    files["zero_by_zero"] = sig + chunk(b"IHDR", struct.pack(">IIBBBBB", 0, 0, 8, 0, 0, 0, 0)) + data[33:]
    index = np.array([[0, 1, 2, 3]], dtype=np.uint8)
    write_png(tmp_path / "short.png", index[:, :, None], 3, palette=np.array([[0, 0, 0], [255, 0, 0]]))
    files["short_palette"] = (tmp_path / "short.png").read_bytes()
    files["bad_zlib"] = data[:idat] + chunk(b"IDAT", b"\x78\x9cgarbage") + chunk(b"IEND", b"")
    return files


def test_corrupt_pngs_are_one_clear_error(tmp_path):
    for name, data in _bad_pngs(tmp_path).items():
        p = tmp_path / f"{name}.png"
        p.write_bytes(data)
        with pytest.raises(InputValueError, match=rf"{name}\.png: "):
            read_image(p)


def test_a_small_file_declaring_a_huge_image_is_refused_before_decoding(tmp_path, monkeypatch):
    side = 12000  # 144 million pixels in a file of a few hundred bytes
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    p = tmp_path / "bomb.png"
    write_png(p, np.zeros((1, 1, 1), dtype=np.uint8), 0, ihdr=ihdr)
    with pytest.raises(InputValueError, match=r"bomb\.png: .*pixel limit"):
        read_image(p)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # Pillow's own check off: ours still holds
    with pytest.raises(InputValueError, match=rf"bomb\.png: {side}x{side} image is larger than the {MAX_PIXELS:,}"):
        read_image(p)


def test_predict_reads_a_jpeg_photo(tmp_path, capsys, trained_checkpoint):
    photo = np.zeros((480, 640, 3), np.uint8)
    photo[100:380, 280:360] = 255  # a bright bar, like a "1"
    Image.fromarray(photo).save(tmp_path / "photo.jpg")
    assert main(["predict", "--checkpoint", str(trained_checkpoint), str(tmp_path / "photo.jpg")]) == 0
    assert capsys.readouterr().out.startswith("class ")


def test_predict_gives_one_line_for_bad_images_and_arrays(tmp_path, capsys, trained_checkpoint):
    inputs = {f"{name}.png": data for name, data in _bad_pngs(tmp_path).items()}
    arrays = {"complex.npy": np.zeros((8, 8), complex), "nan.npy": np.full((8, 8), np.nan),
              "inf.npy": np.full((1, 8, 8), np.inf), "empty.npy": np.zeros((0, 1, 8, 8)), "text.npy": np.array("abc"),
              "bool.npy": np.zeros((8, 8), bool), "wrong_shape.npy": np.zeros((3, 8, 8))}
    for name, a in arrays.items():
        np.save(tmp_path / name, a)
    big = tmp_path / "huge_header.npy"  # declares 3.7 TB in a few bytes
    with open(big, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False, "shape": (7000000, 1, 8, 8)})
        f.write(b"\0" * 64)
    for name, data in inputs.items():
        (tmp_path / name).write_bytes(data)
    for name in [*inputs, *arrays, big.name]:
        code = main(["predict", "--checkpoint", str(trained_checkpoint), str(tmp_path / name)])
        out, err = capsys.readouterr()
        assert code == 2 and out == "" and err.count("\n") == 1 and f"{name}: " in err, (name, err)
