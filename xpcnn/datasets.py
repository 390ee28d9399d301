"""Readers for the data sets ``xpcnn train`` knows; nothing is ever downloaded.

``load_dataset(name, data_dir)`` returns ``(train, test)`` :class:`~xpcnn.data.Dataset` pairs:

- ``digits``: scikit-learn's 8x8 hand-written digits, shipped inside the package (no scikit-learn needed);
- ``mnist`` / ``fashion-mnist``: the standard IDX files, gzipped or raw;
- ``cifar10``: the CIFAR-10 "python version" pickled batches (read with a restricted unpickler);
- ``h5``: an HDF5 file with ``train_set_x``/``train_set_y``/``test_set_x``/``test_set_y`` (needs ``h5py``).
"""
from __future__ import annotations

import gzip
import io
import math
import os
import pickle
import zlib
from pathlib import Path

import numpy as np

from .data import Dataset
from .errors import InputValueError

DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10", "h5")
DEFAULT_MODELS = {"digits": "digits-cnn", "mnist": "lenet", "fashion-mnist": "lenet", "cifar10": "vgg-small",
                  "h5": "allcnn-gap"}
SYSTEM_DIRS = {"fashion-mnist": ("/usr/share/datasets/fashion-mnist",), "mnist": ("/usr/share/datasets/mnist",)}
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def load_dataset(name: str, data_dir: str | os.PathLike | None = None) -> tuple[Dataset, Dataset]:
    """``(train, test)`` of the named data set; raises ValueError/OSError with one clear line on bad input."""
    if name not in DATASETS:
        raise InputValueError(f"unknown data set {name!r}; valid data sets are {', '.join(DATASETS)}")
    if name == "digits":
        return load_digits()
    if name in ("mnist", "fashion-mnist"):
        return load_idx_dataset(_find_dir(name, data_dir), name)
    if name == "cifar10":
        return load_cifar10(_need_dir(name, data_dir))
    if data_dir is None:
        raise InputValueError("data set 'h5' needs --data-dir FILE.h5")
    return load_h5(data_dir)


def _need_dir(name: str, data_dir) -> Path:
    if data_dir is None:
        raise InputValueError(f"data set {name!r} needs --data-dir DIR (nothing is downloaded)")
    path = Path(data_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"data directory {str(path)!r} does not exist or is not a directory")
    return path


def _find_dir(name: str, data_dir) -> Path:
    if data_dir is not None:
        return _need_dir(name, data_dir)
    for d in SYSTEM_DIRS.get(name, ()):
        if Path(d).is_dir():
            return Path(d)
    hint = " or install Debian's dataset-fashion-mnist" if name == "fashion-mnist" else ""
    raise InputValueError(f"data set {name!r} needs --data-dir DIR with the IDX files{hint} (nothing is downloaded)")


# -- digits ---------------------------------------------------------------
def load_digits(test_fraction: float = 0.2, seed: int = 0) -> tuple[Dataset, Dataset]:
    """The bundled 8x8 digits (1797 images, values 0-16) with a fixed, seeded, stratified split."""
    path = Path(__file__).with_name("data") / "digits.csv.gz"
    with gzip.open(path, "rt") as f:
        rows = np.loadtxt(f, delimiter=",", comments="#", dtype=np.uint8)
    images, labels = rows[:, :64].reshape(-1, 1, 8, 8), rows[:, 64].astype(np.int64)
    train_idx, test_idx = stratified_split(labels, test_fraction, seed)
    names = tuple(str(i) for i in range(10))
    return (Dataset(images[train_idx], labels[train_idx], 10, 16.0, "digits", names),
            Dataset(images[test_idx], labels[test_idx], 10, 16.0, "digits", names))


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, test)``: each class contributes ``round(count * test_fraction)`` test examples."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = int(round(len(idx) * test_fraction))
        test.append(idx[:k])
        train.append(idx[k:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


# -- IDX (MNIST, Fashion-MNIST) --------------------------------------------
IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def load_idx_dataset(directory: str | os.PathLike, name: str = "mnist") -> tuple[Dataset, Dataset]:
    """MNIST-format IDX files (``train-images-idx3-ubyte[.gz]`` ...) in ``directory``."""
    directory = Path(directory)
    out = []
    names = FASHION_CLASSES if name == "fashion-mnist" else tuple(str(i) for i in range(10))
    for split, (img_name, lbl_name) in IDX_FILES.items():
        images = read_idx(_idx_path(directory, img_name))
        labels = read_idx(_idx_path(directory, lbl_name))
        if images.ndim != 3 or labels.ndim != 1:
            raise InputValueError(f"{directory}: {split} images must be 3-D and labels 1-D IDX arrays, "
                                  f"got {images.shape} and {labels.shape}")
        out.append(Dataset(images[:, None], labels, 10, 255.0, name, names))
    return out[0], out[1]


def _idx_path(directory: Path, stem: str) -> Path:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{directory}: missing {stem} (or {stem}.gz)")


_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
# Deflate cannot compress better than about 1032:1, so a .gz file of n bytes holds at most 1032 n bytes of data:
# the bound on what a gzipped file may declare before anything is allocated.
DEFLATE_MAX_RATIO = 1032


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """One IDX array (gzip or raw), with its magic number checked and its declared size bounded by the file's."""
    path = Path(path)
    try:
        with open(path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            gz = file.read(2) == b"\x1f\x8b"
            file.seek(0)
            f = gzip.GzipFile(fileobj=file) if gz else file
            magic = f.read(4)
            if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in _IDX_TYPES or magic[3] == 0:
                raise InputValueError(f"{path}: not an IDX file (wrong magic number {magic.hex() or 'empty'})")
            dtype, ndim = np.dtype(_IDX_TYPES[magic[2]]), magic[3]
            dims_raw = f.read(4 * ndim)
            if len(dims_raw) < 4 * ndim:
                raise InputValueError(f"{path}: truncated IDX header")
            dims = tuple(int(d) for d in np.frombuffer(dims_raw, ">u4"))
            expected = math.prod(dims) * dtype.itemsize  # Python integers: no overflow
            room = size * DEFLATE_MAX_RATIO if gz else size - 4 - 4 * ndim
            if expected > room:
                raise InputValueError(f"{path}: IDX header declares shape {dims} ({expected:,} bytes), more than "
                                      f"this {size:,}-byte file can hold (truncated or corrupt)")
            body = f.read(expected + 1)  # one byte more shows a file that is too long
    except (OSError, EOFError, zlib.error) as e:
        raise InputValueError(f"{path}: cannot read IDX file ({e})") from None
    if len(body) < expected:
        raise InputValueError(f"{path}: IDX file is truncated: {len(body):,} of the {expected:,} data bytes its "
                              f"header declares for shape {dims}")
    if len(body) > expected:
        raise InputValueError(f"{path}: IDX file is too long: more than the {expected:,} data bytes its header "
                              f"declares for shape {dims}")
    return np.frombuffer(body, dtype).reshape(dims).astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (gzipped when the name ends in .gz); used by tests and tools."""
    a = np.ascontiguousarray(array, dtype=np.uint8)
    data = bytes([0, 0, 0x08, a.ndim]) + np.asarray(a.shape, ">u4").tobytes() + a.tobytes()
    Path(path).write_bytes(gzip.compress(data, mtime=0) if str(path).endswith(".gz") else data)


# -- CIFAR-10 --------------------------------------------------------------
def _latin1_bytes(text, encoding="latin1"):
    """Python 3 pickles bytes for protocols 0-2 as ``_codecs.encode(str, "latin1")``: allow exactly that call."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("refusing _codecs.encode other than of a str to latin1 in a data file")
    return text.encode("latin-1")


class _ArrayUnpickler(pickle.Unpickler):
    """Only NumPy array reconstruction (and latin-1 bytes) is allowed: a data file must not run code."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar"), ("numpy.core.numeric", "_frombuffer"),
                ("numpy._core.numeric", "_frombuffer")}

    def find_class(self, module, name):
        if (module, name) == ("_codecs", "encode"):
            return _latin1_bytes
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            d = _ArrayUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
        data = _integers(d[b"data"] if b"data" in d else d["data"], path, "pixel values", 255)
        labels = _integers(d[b"labels"] if b"labels" in d else d["labels"], path, "labels", len(CIFAR10_CLASSES) - 1)
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        if isinstance(e, InputValueError):
            raise
        raise InputValueError(f"{path}: not a CIFAR-10 python batch ({type(e).__name__}: {e})") from None
    if data.ndim != 2 or data.shape[1] != 3072 or labels.ndim != 1 or len(labels) != len(data):
        raise InputValueError(f"{path}: expected data of shape (N, 3072) and N labels, got {data.shape} and "
                              f"{labels.shape}")
    return data.astype(np.uint8).reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _integers(values, path: Path, what: str, high: int) -> np.ndarray:
    """``values`` (an array or nested lists) as integers in ``0..high``; anything else is refused, not wrapped."""
    try:
        a = np.asarray(values)
    except (OverflowError, ValueError) as e:
        raise InputValueError(f"{path}: {what} are not an array of integers ({e})") from None
    if a.dtype.kind not in "iu":
        raise InputValueError(f"{path}: {what} must be integers in 0..{high}, got {a.dtype} values")
    if a.size and (int(a.min()) < 0 or int(a.max()) > high):
        raise InputValueError(f"{path}: {what} must be in 0..{high}, got values in {int(a.min())}..{int(a.max())}")
    return a


def load_cifar10(directory: str | os.PathLike) -> tuple[Dataset, Dataset]:
    """``data_batch_1..5`` and ``test_batch`` in ``directory`` (or its ``cifar-10-batches-py``)."""
    directory = Path(directory)
    if (directory / "cifar-10-batches-py").is_dir():
        directory = directory / "cifar-10-batches-py"
    train_files = sorted(directory.glob("data_batch_*"))
    test_file = directory / "test_batch"
    if not train_files or not test_file.is_file():
        raise FileNotFoundError(f"{directory}: expected CIFAR-10 python batches data_batch_1..5 and test_batch")
    parts = [_read_cifar_batch(p) for p in train_files]
    xtr, ytr = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    xte, yte = _read_cifar_batch(test_file)
    return (Dataset(xtr, ytr, 10, 255.0, "cifar10", CIFAR10_CLASSES),
            Dataset(xte, yte, 10, 255.0, "cifar10", CIFAR10_CLASSES))


# -- HDF5 ------------------------------------------------------------------
H5_KEYS = ("train_set_x", "train_set_y", "test_set_x", "test_set_y")


def load_h5(path: str | os.PathLike) -> tuple[Dataset, Dataset]:
    """An HDF5 file with NHWC (or NHW) uint8 ``train_set_x``/``test_set_x`` and integer labels ``*_set_y``."""
    try:
        import h5py
    except ImportError:
        raise ImportError('data set "h5" needs h5py: pip install "xpcnn[h5]"') from None
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"HDF5 file {str(path)!r} does not exist")
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in H5_KEYS if k not in f]
            if missing:
                raise InputValueError(f"{path}: missing data set(s) {', '.join(missing)}")
            arrays = {k: _read_h5(f, k, path) for k in H5_KEYS}
            names = tuple(c.decode() if isinstance(c, bytes) else str(c) for c in _read_h5(f, "list_classes", path)) \
                if "list_classes" in f else None
    except OSError as e:
        raise InputValueError(f"{path}: not a readable HDF5 file ({e})") from None
    ys = [_h5_labels(arrays[f"{split}_set_y"].reshape(-1), path, split) for split in ("train", "test")]
    top = int(max(y.max(initial=0) for y in ys))
    if names and top >= len(names):
        raise InputValueError(f"{path}: label {top} is out of range for the {len(names)} classes in list_classes")
    if not names and top >= max(2, len(ys[0])):  # classes 0..top, most of them without a single training image
        raise InputValueError(f"{path}: label {top} would mean {top + 1:,} classes for {len(ys[0]):,} training images;"
                              " labels must be class indices 0..K-1 (or give list_classes)")
    num_classes = len(names) if names else max(2, top + 1)
    out = []
    for split, y in zip(("train", "test"), ys):
        x = arrays[f"{split}_set_x"]
        if x.ndim == 3:
            x = x[..., None]
        if x.ndim != 4:
            raise InputValueError(f"{path}: {split}_set_x must be (N, H, W, C) or (N, H, W), got {x.shape}")
        if x.dtype.kind == "f" and not np.all(np.isfinite(x)):
            raise InputValueError(f"{path}: {split}_set_x holds NaN or infinite values")
        scale = 255.0 if x.dtype.kind in "ui" else float(max(1.0, x.max(initial=1.0)))
        out.append(Dataset(np.ascontiguousarray(x.transpose(0, 3, 1, 2)), y, num_classes, scale, path.stem, names))
    return out[0], out[1]


def _read_h5(f, key: str, path: Path) -> np.ndarray:
    """A data set read whole, once its declared size is known to fit what the file stores (a 50 KB file must not
    make us allocate 114 GiB): raw data at most its storage, compressed data at most DEFLATE_MAX_RATIO times it."""
    d = f[key]
    if not hasattr(d, "shape") or d.dtype.kind not in "biufSUO":
        raise InputValueError(f"{path}: {key} is not an array of numbers or strings")
    declared = math.prod(d.shape) * d.dtype.itemsize
    stored = d.id.get_storage_size()
    compressed = d.id.get_create_plist().get_nfilters() > 0
    if declared > stored * (DEFLATE_MAX_RATIO if compressed else 1):
        raise InputValueError(f"{path}: {key} declares shape {d.shape} ({declared:,} bytes) but the file stores "
                              f"{stored:,} bytes of it")
    return np.asarray(d)


def _h5_labels(y: np.ndarray, path: Path, split: str) -> np.ndarray:
    """Integer class indices; floats only when they are whole numbers (never silently truncated)."""
    where = f"{path}: {split}_set_y"
    if y.dtype.kind == "f":
        bad = y[~np.isfinite(y) | (y != np.floor(y))] if y.size else y
        if bad.size:
            raise InputValueError(f"{where} holds non-integer labels (e.g. {bad[0].item()!r}); labels must be "
                                  "class indices")
    elif y.dtype.kind not in "biu":
        raise InputValueError(f"{where} must hold integer labels, got dtype {y.dtype}")
    if y.size and y.min() < 0:
        raise InputValueError(f"{where} holds a negative label ({y.min().item()!r}); labels must be class "
                              "indices 0..K-1")
    if y.size and y.max() > np.iinfo(np.int64).max // 2:
        raise InputValueError(f"{where} holds label {y.max().item()!r}, far beyond any number of classes")
    return y.astype(np.int64)
