"""Data sets and the loader: bundled digits, IDX / CIFAR-10 / HDF5 readers on files written here, bad input."""
import gzip
import pickle

import numpy as np
import pytest

from xpcnn.data import DataLoader, Dataset, Normalizer
from xpcnn.datasets import load_cifar10, load_dataset, load_digits, load_idx_dataset, read_idx, write_idx

FASHION = "/usr/share/datasets/fashion-mnist"


def write_mnist(d, n_train=20, n_test=10, gz=True, size=28):
    rng = np.random.default_rng(0)
    ext = ".gz" if gz else ""
    for split, n in (("train", n_train), ("t10k", n_test)):
        write_idx(d / f"{split}-images-idx3-ubyte{ext}", rng.integers(0, 256, (n, size, size)))
        write_idx(d / f"{split}-labels-idx1-ubyte{ext}", np.arange(n) % 10)
    return d


def test_digits_bundled_split():
    train, test = load_digits()
    assert len(train) + len(test) == 1797 and abs(len(test) - 360) <= 3
    assert train.shape == (1, 8, 8) and train.scale == 16 and train.images.max() == 16
    counts = np.bincount(test.labels, minlength=10)
    assert counts.min() >= 34 and counts.max() <= 38          # stratified
    again, _ = load_digits()
    np.testing.assert_array_equal(train.labels, again.labels)  # fixed split


@pytest.mark.parametrize("gz", [True, False])
def test_idx_roundtrip(tmp_path, gz):
    train, test = load_idx_dataset(write_mnist(tmp_path, gz=gz))
    assert train.images.shape == (20, 1, 28, 28) and train.images.dtype == np.uint8
    assert len(test) == 10 and test.labels.tolist() == list(range(10))


def test_idx_bad_magic_and_truncated(tmp_path):
    p = tmp_path / "x"
    p.write_bytes(b"\x00\x00\x07\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="magic"):
        read_idx(p)
    write_idx(p, np.zeros((4, 5, 5)))
    p.write_bytes(p.read_bytes()[:-3])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(p)
    p.write_bytes(b"not gzip at all but starts \x1f")
    with pytest.raises(ValueError):
        read_idx(p)
    g = tmp_path / "y.gz"
    g.write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x05abc")[:-6])
    with pytest.raises(ValueError, match="cannot read|truncated"):
        read_idx(g)


def test_missing_dirs_and_names(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset("mnist", tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="missing train-images"):
        load_dataset("mnist", tmp_path)
    with pytest.raises(ValueError, match="unknown data set 'imagenet'"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="needs --data-dir"):
        load_dataset("cifar10")


def test_labels_out_of_range_caught_at_build(tmp_path):
    with pytest.raises(ValueError, match=r"labels must be in \[0, 9\]"):
        Dataset(np.zeros((3, 1, 4, 4), np.uint8), np.array([0, 3, 10]), 10)
    write_mnist(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 12]))
    with pytest.raises(ValueError, match="labels must be in"):
        load_idx_dataset(tmp_path)


def test_cifar10_batches(tmp_path):
    rng = np.random.default_rng(1)
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    for name, n in (("data_batch_1", 6), ("data_batch_2", 4), ("test_batch", 5)):
        with open(d / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(range(n))}, f)
    train, test = load_cifar10(tmp_path)
    assert train.images.shape == (10, 3, 32, 32) and len(test) == 5
    (d / "test_batch").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a CIFAR-10 python batch"):
        load_cifar10(d)


def test_cifar_refuses_code_in_pickles(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    for name in ("data_batch_1", "test_batch"):
        with open(tmp_path / name, "wb") as f:
            pickle.dump({b"data": Evil(), b"labels": [0]}, f)
    with pytest.raises(ValueError, match="refusing"):
        load_cifar10(tmp_path)


def test_h5(tmp_path):
    h5py = pytest.importorskip("h5py", reason="h5py is the optional [h5] extra")
    rng = np.random.default_rng(2)
    path = tmp_path / "signs.h5"
    with h5py.File(path, "w") as f:
        f["train_set_x"] = rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
        f["train_set_y"] = np.array([0, 1, 2, 3, 4, 5, 0, 1])
        f["test_set_x"] = rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
        f["test_set_y"] = np.array([[0, 1, 2, 3]])
        f["list_classes"] = np.arange(6)
    train, test = load_dataset("h5", path)
    assert train.images.shape == (8, 3, 16, 16) and train.num_classes == 6 and test.labels.tolist() == [0, 1, 2, 3]
    with h5py.File(path, "a") as f:
        del f["test_set_y"]
    with pytest.raises(ValueError, match="missing data set"):
        load_dataset("h5", path)


def test_loader_batches_normalises_and_is_seeded():
    train, _ = load_digits()
    norm = Normalizer.fit(train)
    a = DataLoader(train, 100, shuffle=True, seed=3, normalizer=norm)
    b = DataLoader(train, 100, shuffle=True, seed=3, normalizer=norm)
    xa, ya = next(iter(a))
    xb, yb = next(iter(b))
    np.testing.assert_array_equal(ya, yb)
    assert xa.shape == (100, 1, 8, 8) and xa.dtype == np.float32
    full = np.concatenate([np.asarray(x) for x, _ in DataLoader(train, 500, normalizer=norm)])
    assert abs(full.mean()) < 1e-3 and abs(full.std() - 1) < 1e-2
    assert len(a) == 15 and sum(len(y) for _, y in a) == len(train)


def test_loader_state_resumes_mid_epoch():
    train, _ = load_digits()
    a = DataLoader(train, 64, shuffle=True, seed=1)
    it = iter(a)
    for _ in range(5):
        next(it)
    state = a.state_dict()
    rest = [np.asarray(y) for _, y in it] + [np.asarray(y) for _, y in a]
    b = DataLoader(train, 64, shuffle=True, seed=99)
    b.load_state_dict(state)
    again = [np.asarray(y) for _, y in b] + [np.asarray(y) for _, y in b]
    assert len(rest) == len(again)
    for r, g in zip(rest, again):
        np.testing.assert_array_equal(r, g)


def test_loader_rejects_big_batches():
    train, _ = load_digits()
    with pytest.raises(ValueError, match="larger than the data set"):
        DataLoader(train.subset(10), 11)


def test_loader_on_strict_backend():
    pytest.importorskip("array_api_strict")
    from xpcnn import Backend
    train, _ = load_digits()
    b = Backend("array_api_strict")
    x, y = next(iter(DataLoader(train, 8, backend=b)))
    assert b.owns(x) and b.owns(y)


@pytest.mark.skipif(not __import__("os").path.isdir(FASHION), reason=f"{FASHION} absent (apt install dataset-fashion-mnist)")
def test_fashion_mnist_system_dir():
    train, test = load_dataset("fashion-mnist")
    assert train.images.shape == (60000, 1, 28, 28) and len(test) == 10000 and train.class_names[0] == "T-shirt/top"
