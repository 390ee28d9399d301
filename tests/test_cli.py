"""The `xpcnn train | evaluate | predict` commands end to end, and their one-line errors."""
import json
import os

import numpy as np
import pytest

from xpcnn.checkpoint import Checkpoint
from xpcnn.cli import main
from xpcnn.datasets import write_idx


pytestmark = pytest.mark.usefixtures("one_blas_thread")


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_default_train_path_short(tmp_path, capsys):
    ck, metrics, plot = tmp_path / "d.ckpt", tmp_path / "m.jsonl", tmp_path / "p.png"
    code, out, err = run(capsys, "train", "--epochs", "2", "--checkpoint", str(ck), "--metrics", str(metrics),
                         *(["--plot", str(plot)] if _has("matplotlib") else []))
    assert code == 0, err
    assert "training digits-cnn" in out and "test accuracy" in out
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and rows[-1]["test_accuracy"] > 0.85 and rows[0]["backend"] == "numpy"
    assert Checkpoint(ck).epoch == 2
    if _has("matplotlib"):
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, out, err = run(capsys, "evaluate", "--checkpoint", str(ck))
    assert code == 0 and f"accuracy {rows[-1]['test_accuracy']:.4f}" in out

    from xpcnn.datasets import load_digits
    _, test = load_digits()
    npy = tmp_path / "x.npy"
    np.save(npy, test.images[0, 0])
    code, out, err = run(capsys, "predict", "--checkpoint", str(ck), str(npy))
    assert code == 0 and out.startswith("class ") and "probability" in out
    npy_class = out.split(",")[0]
    pytest.importorskip("PIL", reason="Pillow reads images")
    from test_images import write_png
    png = tmp_path / "x.png"
    write_png(png, np.round(test.images[0, 0] / 16 * 255)[:, :, None], colour=0)
    code, out, err = run(capsys, "predict", "--checkpoint", str(ck), str(png))
    assert code == 0 and out.split(",")[0] == npy_class, (out, npy_class)


def test_ctrl_c_then_resume_matches_uninterrupted(tmp_path, capsys, monkeypatch):
    """Epoch 2 of 4 ends, Ctrl-C arrives; the saved run resumes to the same bits as an uninterrupted one."""
    import signal
    import xpcnn.cli.train as train_cmd

    args = ["train", "--epochs", "4", "--limit", "200", "--quiet"]
    assert run(capsys, *args, "--checkpoint", str(tmp_path / "full"))[0] == 0
    real_save = train_cmd.save_checkpoint

    sent = []

    def save_then_ctrl_c(path, model, opt, epoch, **kw):
        real_save(path, model, opt, epoch=epoch, **kw)
        if epoch == 2 and not sent:
            sent.append(1)
            os.kill(os.getpid(), signal.SIGINT)
    monkeypatch.setattr(train_cmd, "save_checkpoint", save_then_ctrl_c)
    code, out, err = run(capsys, *args, "--checkpoint", str(tmp_path / "half"))
    assert code == 130 and "interrupted in epoch 3" in err and "--resume" in err
    monkeypatch.setattr(train_cmd, "save_checkpoint", real_save)
    assert Checkpoint(tmp_path / "half").epoch == 2
    code, out, err = run(capsys, "train", "--resume", str(tmp_path / "half"), "--checkpoint", str(tmp_path / "half"),
                         "--quiet")
    assert code == 0, err
    a, b = Checkpoint(tmp_path / "full"), Checkpoint(tmp_path / "half")
    assert b.epoch == 4 and len(b.meta["history"]) == 4
    for k, v in a.model_state.items():
        np.testing.assert_array_equal(b.model_state[k], v, err_msg=k)
    code, _, err = run(capsys, "train", "--resume", str(tmp_path / "half"))
    assert code == 2 and "already holds 4 epoch(s)" in err


def _has(mod):
    try:
        __import__(mod)
        return True
    except ImportError:
        return False


def one_line_error(capsys, *argv, match):
    code, out, err = run(capsys, *argv)
    assert code != 0 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert match in err, err


def test_bad_input_gives_one_line(tmp_path, capsys):
    one_line_error(capsys, "train", "--dataset", "mnist", "--data-dir", str(tmp_path / "none"), match="does not exist")
    one_line_error(capsys, "train", "--dataset", "mnist", "--data-dir", str(tmp_path), match="missing train-images")
    one_line_error(capsys, "train", "--model", "resnet-1000", match="unknown model 'resnet-1000'")
    one_line_error(capsys, "train", "--batch-size", "5000", match="larger than the data set")
    one_line_error(capsys, "train", "--dataset", "cifar10", match="needs --data-dir")
    for split, n in (("train", 30), ("t10k", 10)):
        write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", np.zeros((n, 28, 28)))
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    raw = tmp_path / "t10k-images-idx3-ubyte"
    raw.write_bytes(b"\x00\x00\x08\x03" + np.array([10, 28, 28], ">u4").tobytes() + b"\x00" * 100)
    os.remove(tmp_path / "t10k-images-idx3-ubyte.gz")
    one_line_error(capsys, "train", "--dataset", "mnist", "--data-dir", str(tmp_path), match="truncated")
    raw.write_bytes(b"\x12\x34\x56\x78")
    one_line_error(capsys, "train", "--dataset", "mnist", "--data-dir", str(tmp_path), match="magic")
    one_line_error(capsys, "evaluate", "--checkpoint", str(tmp_path / "none.ckpt"), match="does not exist")
    ck = tmp_path / "d.ckpt"
    assert run(capsys, "train", "--epochs", "1", "--limit", "64", "--quiet", "--checkpoint", str(ck))[0] == 0
    one_line_error(capsys, "train", "--model", "allcnn-gap", "--resume", str(ck), match="architecture 'digits-cnn'")
    one_line_error(capsys, "predict", "--checkpoint", str(ck), str(tmp_path / "none.npy"), match="does not exist")


def test_nan_loss_keeps_last_checkpoint(tmp_path, capsys):
    ck = tmp_path / "d.ckpt"
    assert run(capsys, "train", "--epochs", "1", "--limit", "128", "--quiet", "--checkpoint", str(ck))[0] == 0
    before = ck.read_bytes()
    code, out, err = run(capsys, "train", "--epochs", "3", "--limit", "128", "--quiet", "--optimizer", "sgd",
                         "--lr", "1e30", "--checkpoint", str(ck))
    assert code != 0 and "loss is" in err and "epoch 1, step" in err and "Traceback" not in err
    assert ck.read_bytes() == before


def test_default_run_as_users_type_it(capsys):
    """`xpcnn train` with no options: the bundled digits, the default model and recipe, >= 97% test accuracy."""
    code, out, err = run(capsys, "train")
    assert code == 0, err
    accuracy = float(out.split("test accuracy")[-1].split()[0])
    assert accuracy >= 0.97, out


def test_threads_are_reported_and_do_not_change_the_result(tmp_path, capsys):
    pytest.importorskip("threadpoolctl", reason="--threads needs threadpoolctl")
    results = {}
    for threads in ("1", "2"):
        metrics = tmp_path / f"{threads}.jsonl"
        code, out, err = run(capsys, "train", "--epochs", "1", "--limit", "400", "--threads", threads,
                             "--metrics", str(metrics))
        assert code == 0, err
        assert (", 1 thread," if threads == "1" else ", 2 threads,") in out.splitlines()[0]
        results[threads] = json.loads(metrics.read_text())
    assert results["2"]["train_loss"] == pytest.approx(results["1"]["train_loss"], rel=1e-4)


def test_info_lists_backends_threads_and_mpi(capsys):
    code, out, err = run(capsys, "info")
    assert code == 0, err
    assert "backend numpy" in out and "ok" in out.split("backend numpy")[1].splitlines()[0]
    line = next(line for line in out.splitlines() if line.startswith("MPI "))
    assert "mpiexec" in line and ("mpi4py " in line or "unavailable" in line)


def test_threads_without_threadpoolctl_is_one_line(tmp_path, capsys, monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "threadpoolctl" else real(
        name, *a))
    code, out, err = run(capsys, "train", "--epochs", "1", "--threads", "2", "--checkpoint", str(tmp_path / "c"))
    assert code == 2 and err.strip() == "xpcnn train: error: --threads 2 needs threadpoolctl: pip install threadpoolctl"
    assert not (tmp_path / "c").exists()
