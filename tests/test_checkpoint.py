"""Checkpoints: safetensors format, atomic writes, cross-backend loads, PyTorch names, architecture checks."""
import json
import os

import numpy as np
import pytest

import xpcnn
from xpcnn.checkpoint import Checkpoint, atomic_write, decode_safetensors, encode_safetensors, load_checkpoint, \
    save_checkpoint
from xpcnn.models import build_model


def small(name="digits-cnn", backend="numpy", seed=0):
    return build_model(name, 1, 10, 8, backend=backend, seed=seed) if name == "digits-cnn" else \
        build_model(name, 3, 10, 32, backend=backend, seed=seed)


def test_format_roundtrip_and_readable_by_safetensors(tmp_path):
    tensors = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array(7, dtype=np.int64),
               "c": np.zeros((0, 4), dtype=np.float64)}
    raw = encode_safetensors(tensors, {"k": "v"})
    back, meta = decode_safetensors(raw)
    assert meta == {"k": "v"}
    for k in tensors:
        np.testing.assert_array_equal(back[k], tensors[k])
        assert back[k].dtype == tensors[k].dtype
    st = pytest.importorskip("safetensors.numpy", reason="the safetensors library is optional here")
    (tmp_path / "t.safetensors").write_bytes(raw)
    lib = st.load_file(tmp_path / "t.safetensors")
    np.testing.assert_array_equal(lib["a"], tensors["a"])


def test_truncated_or_foreign_files_are_clear_errors(tmp_path):
    m = small()
    p = tmp_path / "c.ckpt"
    save_checkpoint(p, m)
    raw = p.read_bytes()
    p.write_bytes(raw[:-10])
    with pytest.raises(ValueError, match="truncated"):
        Checkpoint(p)
    p.write_bytes(b"hello")
    with pytest.raises(ValueError, match="not a checkpoint"):
        Checkpoint(p)
    p.write_bytes(encode_safetensors({"x": np.zeros(2)}))
    with pytest.raises(ValueError, match="not an xpcnn checkpoint"):
        Checkpoint(p)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Checkpoint(tmp_path / "none")


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    p = tmp_path / "c.ckpt"
    atomic_write(p, b"old")

    def boom(*a):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write(p, b"new")
    assert p.read_bytes() == b"old" and os.listdir(tmp_path) == ["c.ckpt"]  # no temp file left behind


def test_other_architecture_is_refused(tmp_path):
    p = tmp_path / "c.ckpt"
    save_checkpoint(p, small(), metadata={"architecture": "digits-cnn"})
    other = build_model("allcnn-gap", 1, 10, 8)
    with pytest.raises(ValueError, match="architecture 'digits-cnn'"):
        load_checkpoint(p, other)
    other.architecture = None
    with pytest.raises(ValueError, match="does not fit this model"):
        load_checkpoint(p, other)


def test_cross_backend_same_predictions(tmp_path):
    pytest.importorskip("array_api_strict")
    x = np.random.default_rng(0).random((5, 3, 32, 32))
    m = small("vgg-small", seed=1)
    m.eval()
    p = tmp_path / "v.ckpt"
    save_checkpoint(p, m, xpcnn.optim.SGD(m.parameters(), lr=0.1, momentum=0.9))
    for spec in ("array_api_strict", "array_api_strict:device1"):
        n = small("vgg-small", backend=spec, seed=7)
        load_checkpoint(p, n)
        n.eval()
        np.testing.assert_allclose(xpcnn.to_numpy(n(x)), xpcnn.to_numpy(m(x)), rtol=1e-5, atol=1e-5)
        q = tmp_path / "back.ckpt"
        save_checkpoint(q, n)
        back = small("vgg-small", seed=3)
        load_checkpoint(q, back).meta
        back.eval()
        np.testing.assert_array_equal(xpcnn.to_numpy(back(x)), xpcnn.to_numpy(m(x)))


def test_optimizer_state_roundtrip(tmp_path):
    m = small()
    opt = xpcnn.optim.Adam(m.parameters(), lr=1e-3)
    loss = xpcnn.CrossEntropyLoss()
    x, y = np.random.default_rng(0).random((4, 1, 8, 8)), np.arange(4)
    loss(m(x), y)
    m.backward(loss.backward())
    opt.step()
    save_checkpoint(tmp_path / "c", m, opt, epoch=3)
    m2 = small(seed=5)
    opt2 = xpcnn.optim.Adam(m2.parameters(), lr=1.0)
    ck = load_checkpoint(tmp_path / "c", m2, opt2)
    assert ck.epoch == 3 and opt2.steps == 1 and opt2.lr == 1e-3
    for k, v in opt.state_dict()["state"].items():
        np.testing.assert_array_equal(opt2.state_dict()["state"][k], v)
    with pytest.raises(ValueError, match="optimizer is Adam"):
        load_checkpoint(tmp_path / "c", m2, xpcnn.optim.SGD(m2.parameters()))


def test_loads_into_torch_sequential_strict(tmp_path):
    torch = pytest.importorskip("torch", reason="PyTorch is optional")
    from xpcnn.torch_compat import to_torch
    m = small("vgg-small")
    p = tmp_path / "v.ckpt"
    save_checkpoint(p, m, xpcnn.optim.SGD(m.parameters(), lr=0.1, momentum=0.9))
    ck = Checkpoint(p)
    net = to_torch(m, copy_weights=False)
    net.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in ck.model_state.items()}, strict=True)
    m.eval()
    net.eval()
    x = np.random.default_rng(0).random((2, 3, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(net(torch.from_numpy(x)).detach().numpy(), xpcnn.to_numpy(m(x)), rtol=1e-4, atol=1e-4)


def test_metadata_is_json_with_versions(tmp_path):
    save_checkpoint(tmp_path / "c", small(), metadata={"options": {"lr": 0.1}})
    meta = Checkpoint(tmp_path / "c").meta
    assert meta["versions"]["xpcnn"] == xpcnn.__version__ and meta["options"] == {"lr": 0.1}
    json.dumps(meta)
