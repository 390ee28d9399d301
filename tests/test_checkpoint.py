"""Checkpoints: safetensors format, atomic writes, cross-backend loads, PyTorch names, architecture checks."""
import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest

import xpcnn
from xpcnn.checkpoint import Checkpoint, atomic_write, decode_safetensors, encode_safetensors, load_checkpoint, \
    save_checkpoint
from xpcnn.cli import main
from xpcnn.errors import InputValueError
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
    from xpcnn.tools.torch_compat import to_torch
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


# -- the safetensors library, compatibility, and files edited by hand ------------------------------------------
LEGACY = Path(__file__).with_name("data") / "legacy-v0.1.0.ckpt"


def rewrite(src, dst, edit_meta=None, edit_header=None):
    """Copy checkpoint ``src`` to ``dst`` with its xpcnn metadata (a dict) or raw safetensors header edited."""
    raw = Path(src).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    if edit_meta is not None:
        meta = json.loads(header["__metadata__"]["xpcnn"])
        edit_meta(meta)
        header["__metadata__"]["xpcnn"] = json.dumps(meta)
    if edit_header is not None:
        edit_header(header)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    Path(dst).write_bytes(struct.pack("<Q", len(head)) + head + raw[8 + n:])
    return dst


def test_checkpoints_of_xpcnn_0_1_0_still_load(tmp_path, capsys):
    """tests/data/legacy-v0.1.0.ckpt was written by xpcnn's own safetensors writer, before the library."""
    import sys
    sys.path.insert(0, str(LEGACY.parent))
    from make_legacy_checkpoint import legacy_model_and_step
    sys.path.pop(0)
    want, want_opt = legacy_model_and_step()
    model = build_model("digits-cnn", 1, 2, 2, seed=9)
    opt = xpcnn.optim.SGD(model.parameters(), lr=1.0, momentum=0.9, nesterov=True)
    ck = load_checkpoint(LEGACY, model, opt)
    assert ck.epoch == 1 and opt.steps == 1 and ck.meta["loader"]["position"] == 1
    for k, v in want.state_dict().items():
        np.testing.assert_allclose(xpcnn.to_numpy(model.state_dict()[k]), xpcnn.to_numpy(v), rtol=1e-6, atol=1e-7)
    for k, v in want_opt.state_dict()["state"].items():
        np.testing.assert_allclose(opt.state_dict()["state"][k], v, rtol=1e-6, atol=1e-7)
    np.save(tmp_path / "x.npy", np.full((2, 2), 8.0))
    assert main(["predict", "--checkpoint", str(LEGACY), str(tmp_path / "x.npy")]) == 0
    assert capsys.readouterr().out.startswith("class ")


def test_files_are_read_by_safetensors_and_pytorch(tmp_path):
    from safetensors.numpy import load_file
    m = small()
    opt = xpcnn.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    p = tmp_path / "c.ckpt"
    save_checkpoint(p, m, opt)
    lib = load_file(p)
    assert set(lib) == set(m.state_dict()) | {f"optim.{k}" for k in opt.state_dict()["state"]}
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(lib[k], xpcnn.to_numpy(v))
    pytest.importorskip("torch", reason="PyTorch is optional")
    from safetensors.torch import load_file as torch_load_file
    for k, v in torch_load_file(p).items():
        np.testing.assert_array_equal(v.numpy(), lib[k])


def test_relabelled_dtype_is_refused(tmp_path):
    def to_i32(header):
        header["0.weight"]["dtype"] = "I32"
    p = rewrite(LEGACY, tmp_path / "c.ckpt", edit_header=to_i32)
    with pytest.raises(InputValueError, match=r"c\.ckpt: tensor '0\.weight' is int32, the model needs float32"):
        load_checkpoint(p, build_model("digits-cnn", 1, 2, 2))

    def momentum_to_i32(header):
        header[next(k for k in header if k.startswith("optim."))]["dtype"] = "I32"
    p = rewrite(LEGACY, tmp_path / "o.ckpt", edit_header=momentum_to_i32)
    m = build_model("digits-cnn", 1, 2, 2)
    with pytest.raises(InputValueError, match=r"tensor 'optim\..*' is int32, the model needs float32"):
        load_checkpoint(p, m, xpcnn.optim.SGD(m.parameters(), lr=0.1, momentum=0.9))


def test_overlapping_tensor_bytes_are_refused(tmp_path):
    def overlap(header):
        a, b = [k for k in header if k != "__metadata__"][:2]
        header[b]["data_offsets"] = [header[a]["data_offsets"][0], header[b]["data_offsets"][1]]
    p = rewrite(LEGACY, tmp_path / "c.ckpt", edit_header=overlap)
    with pytest.raises(InputValueError, match=r"c\.ckpt: not a checkpoint or a damaged one: .*offset"):
        Checkpoint(p)


@pytest.mark.parametrize("edit,key", [
    (lambda m: m.pop("normalizer"), "'normalizer'"),
    (lambda m: m["optimizer"].pop("steps"), "'optimizer.steps'"),
    (lambda m: m["loader"].pop("epoch_start"), "'loader.epoch_start'"),
    (lambda m: m.update(optimizer=[]), "'optimizer' must be an object, got a list"),
    (lambda m: m.update(loader=[1, 2]), "'loader' must be an object, got a list"),
    (lambda m: m.update(history={}), "'history' must be a list, got an object"),
    (lambda m: m.update(epoch=True), "'epoch' must be an integer, got true/false"),
    (lambda m: m["optimizer"].update(steps=-1), "'optimizer.steps' must be >= 0"),
    (lambda m: m["normalizer"].update(std=[0.0]), "'normalizer' must be"),
    (lambda m: m["model_args"].update(num_classes="2"), "'model_args.num_classes' must be an integer"),
    (lambda m: m.update(class_names=["a"]), "'class_names' must be a list of 10 class names"),
    (lambda m: m["loader"].update(current={"bit_generator": "PCG64"}), "'loader' is malformed"),
    (lambda m: m["loader"].update(epoch_start={"bit_generator": "PCG64", "state": []}), "'loader' is malformed"),
])
def test_metadata_edited_by_hand_is_one_line(tmp_path, capsys, trained_checkpoint, edit, key):
    p = rewrite(trained_checkpoint, tmp_path / "c.ckpt", edit_meta=edit)
    np.save(tmp_path / "x.npy", np.zeros((8, 8)))
    for argv in (["predict", "--checkpoint", str(p), str(tmp_path / "x.npy")],
                 ["train", "--resume", str(p), "--epochs", "2", "--limit", "40", "--quiet"]):
        code = main(argv)
        err = capsys.readouterr().err
        if code == 0:  # predict does not read the loader state
            assert argv[0] == "predict" and "loader" in key
            continue
        assert code == 2 and err.count("\n") == 1 and str(p) in err and key in err, (argv, err)


def test_new_checkpoints_load_in_xpcnn_0_1_0(tmp_path):
    """xpcnn 0.1.0 read checkpoints with its own decoder (tests/data/legacy_reader.py, verbatim): it reads ours."""
    import sys
    sys.path.insert(0, str(LEGACY.parent))
    from legacy_reader import decode_safetensors as legacy_decode
    sys.path.pop(0)
    m = small("vgg-small")
    opt = xpcnn.optim.Adam(m.parameters(), lr=1e-3)
    p = tmp_path / "new.ckpt"
    save_checkpoint(p, m, opt, epoch=2, metadata={"architecture": "vgg-small"})
    tensors, metadata = legacy_decode(p.read_bytes())
    ours = Checkpoint(p)
    assert json.loads(metadata["xpcnn"]) == ours.meta
    assert set(tensors) == set(ours.model_state) | {"optim." + k for k in ours.optimizer_tensors}
    for k, v in ours.model_state.items():
        assert tensors[k].dtype == v.dtype and tensors[k].shape == v.shape
        np.testing.assert_array_equal(tensors[k], v)
