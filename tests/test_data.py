"""Data sets and the loader: bundled digits, IDX / CIFAR-10 / HDF5 readers on files written here, bad input."""
import gzip
import pickle

import numpy as np
import pytest

from xpcnn.data import DataLoader, Dataset, Normalizer
from xpcnn.datasets import load_cifar10, load_dataset, load_digits, load_idx_dataset, read_idx, write_idx
from xpcnn.errors import InputValueError

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


# -- bounded reads and bad data (issue 14) ---------------------------------------------------------------------
def test_idx_header_cannot_declare_more_than_the_file_holds(tmp_path):
    p = tmp_path / "overflow"  # 65536**4 = 2**64 bytes: an int64 product wraps to 0 and matched an empty body
    p.write_bytes(b"\x00\x00\x08\x04" + np.array([65536] * 4, ">u4").tobytes())
    with pytest.raises(InputValueError, match=r"overflow: IDX header declares shape \(65536, 65536, 65536, 65536\)"):
        read_idx(p)
    g = tmp_path / "bomb.gz"  # 60000x28x28 declared in a 40-byte gzip file: refused before anything is inflated
    g.write_bytes(gzip.compress(b"\x00\x00\x08\x03" + np.array([60000, 28, 28], ">u4").tobytes()))
    with pytest.raises(InputValueError, match=r"bomb\.gz: IDX header declares shape \(60000, 28, 28\) "
                                              rf"\(47,040,000 bytes\), more than this {g.stat().st_size}-byte file"):
        read_idx(g)
    g.write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x02" + b"abc"))
    with pytest.raises(InputValueError, match="too long"):
        read_idx(g)


def _cifar_dir(tmp_path, batch, protocol=pickle.HIGHEST_PROTOCOL):
    d = tmp_path / f"cifar{protocol}"
    d.mkdir(exist_ok=True)
    for name in ("data_batch_1", "test_batch"):
        (d / name).write_bytes(pickle.dumps(batch, protocol=protocol))
    return d


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_cifar_pickles_of_every_protocol_load(tmp_path, protocol):
    """Python 3 pickles bytes as _codecs.encode(str, 'latin1') for protocols 0-2: accepted, and nothing else."""
    pixels = np.random.default_rng(protocol).integers(0, 256, (3, 3072), dtype=np.uint8)
    for key, batch in (("array", {b"data": pixels, b"labels": [1, 2, 9]}),
                       ("str_keys_lists", {"data": pixels.tolist(), "labels": np.array([1, 2, 9])})):
        (tmp_path / key).mkdir()
        train, test = load_cifar10(_cifar_dir(tmp_path / key, batch, protocol))
        np.testing.assert_array_equal(train.images.reshape(3, -1), pixels)
        assert train.labels.tolist() == [1, 2, 9] and train.images.dtype == np.uint8


def test_cifar_codecs_encode_only_as_pickle_uses_it(tmp_path):
    import codecs

    class Rot13:
        def __reduce__(self):
            return (codecs.encode, ("print", "rot13"))
    d = _cifar_dir(tmp_path, {b"data": Rot13(), b"labels": [0]}, protocol=2)
    with pytest.raises(InputValueError, match="refusing _codecs.encode other than of a str to latin1"):
        load_cifar10(d)


@pytest.mark.parametrize("data,labels,match", [
    ([[1_000_000] * 3072], [0], r"pixel values must be in 0\.\.255, got values in 1000000\.\.1000000"),
    (np.full((1, 3072), 300, np.int64), [0], r"pixel values must be in 0\.\.255"),
    ([[-1] * 3072], [0], r"pixel values must be in 0\.\.255"),
    ([[0.5] * 3072], [0], r"pixel values must be integers in 0\.\.255, got float64"),
    ([[2 ** 70] * 3072], [0], r"pixel values must be integers"),
    (np.zeros((1, 3072), np.uint8), [2 ** 70], r"labels must be integers"),
    (np.zeros((1, 3072), np.uint8), [10 ** 12], r"labels must be in 0\.\.9"),
    (np.zeros((1, 3072), np.uint8), [[0, 1]], r"expected data of shape \(N, 3072\) and N labels"),
])
def test_cifar_values_out_of_range_are_refused(tmp_path, data, labels, match):
    with pytest.raises(InputValueError, match=r"data_batch_1: " + match):
        load_cifar10(_cifar_dir(tmp_path, {b"data": data, b"labels": labels}))


def _h5(path, **extra):
    h5py = pytest.importorskip("h5py", reason="h5py is the optional [h5] extra")
    rng = np.random.default_rng(2)
    with h5py.File(path, "w") as f:
        arrays = {"train_set_x": rng.integers(0, 256, (8, 4, 4, 3), dtype=np.uint8), "train_set_y": np.arange(8) % 3,
                  "test_set_x": rng.integers(0, 256, (4, 4, 4, 3), dtype=np.uint8), "test_set_y": np.arange(4) % 3}
        for key, value in {**arrays, **extra}.items():
            if callable(value):
                value(f, key)
            else:
                f[key] = value
    return path


def test_h5_labels_must_be_class_indices(tmp_path):
    train, _ = load_dataset("h5", _h5(tmp_path / "whole.h5", train_set_y=np.arange(8.0) % 3))  # whole floats: fine
    assert train.labels.tolist() == [0, 1, 2, 0, 1, 2, 0, 1] and train.num_classes == 3
    cases = {"float": (dict(train_set_y=np.arange(8) % 3 + 0.5), r"train_set_y holds non-integer labels \(e\.g\. 0\.5"),
             "nan": (dict(test_set_y=np.array([0, 1, np.nan, 2])), "test_set_y holds non-integer labels"),
             "huge": (dict(train_set_y=np.array([0, 1, 2, 1e9, 0, 1, 2, 0])), r"label 1000000000 would mean "
                      r"1,000,000,001 classes for 8 training images"),
             "negative": (dict(test_set_y=np.array([0, -1, 1, 2])), "test_set_y holds a negative label"),
             "names": (dict(list_classes=np.array([b"a", b"b"])), r"label 2 is out of range for the 2 classes"),
             "text": (dict(train_set_y=np.array([b"cat"] * 8)), "train_set_y must hold integer labels"),
             "nan_images": (dict(test_set_x=np.full((4, 4, 4, 3), np.nan)), "test_set_x holds NaN")}
    for name, (extra, match) in cases.items():
        with pytest.raises(InputValueError, match=rf"{name}\.h5: .*{match}"):
            load_dataset("h5", _h5(tmp_path / f"{name}.h5", **extra))


def test_h5_cannot_declare_more_than_the_file_stores(tmp_path, capsys):
    def huge(f, key):  # 114 GiB declared, no chunk written: the file stays a few kB
        f.create_dataset(key, shape=(10_000_000, 64, 64, 3), dtype=np.uint8, chunks=(1, 64, 64, 3))
    p = _h5(tmp_path / "huge.h5", train_set_x=huge)
    assert p.stat().st_size < 100_000
    with pytest.raises(InputValueError, match=r"huge\.h5: train_set_x declares shape \(10000000, 64, 64, 3\) "
                                              r"\(122,880,000,000 bytes\) but the file stores 0 bytes of it"):
        load_dataset("h5", p)
    from xpcnn.cli import main
    assert main(["train", "--dataset", "h5", "--data-dir", str(p), "--epochs", "1"]) == 2
    assert capsys.readouterr().err.count("\n") == 1

    def compressed(f, key):  # legitimately compressed data loads
        f.create_dataset(key, data=np.zeros((8, 4, 4, 3), np.uint8), compression="gzip")
    train, _ = load_dataset("h5", _h5(tmp_path / "gzip.h5", train_set_x=compressed))
    assert train.images.shape == (8, 3, 4, 4)
