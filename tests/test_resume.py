"""What `--resume` promises: the same bits and the same per-epoch numbers as one uninterrupted run with the same
--epochs, at any thread count, from any directory; a longer --epochs extends the run with a recomputed schedule."""
import json

import numpy as np
import pytest

import xpcnn
import xpcnn.cli.train as train_cmd
from xpcnn.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from xpcnn.cli import main
from xpcnn.data import DataLoader, Normalizer
from xpcnn.datasets import load_digits, write_idx
from xpcnn.training import TrainingInterrupted, cosine_schedule, fit

from test_fit import InterruptAt  # a Ctrl-C during the n-th loss call

TIMING = ("seconds", "images_per_second")  # the only numbers an interrupted epoch may report differently


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def metrics(path):
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in open(path)]


def without_timing(history):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in history]


@pytest.mark.parametrize("threads", ["1", "2"])
def test_ctrl_c_mid_epoch_then_resume_reports_and_saves_what_one_run_does(tmp_path, capsys, monkeypatch, threads):
    """Ctrl-C in epoch 2 (step 3 of 7), then `--resume` without repeating --threads: the weights are the same
    bits as the uninterrupted run's, and so are the resumed epoch's printed numbers, its --metrics line and
    the checkpoint's history (the epoch's sums up to the Ctrl-C are saved with the checkpoint)."""
    args = ["train", "--epochs", "3", "--limit", "200", "--quiet"]
    full, half = tmp_path / "full", tmp_path / "half"
    code, _, err = run(capsys, *args, "--threads", threads, "--checkpoint", str(full), "--metrics", str(tmp_path / "f"))
    assert code == 0, err

    # 7 steps and 1 test batch, then step 3 of epoch 2
    monkeypatch.setattr(train_cmd, "CrossEntropyLoss", lambda: InterruptAt(7 + 1 + 3))
    code, _, err = run(capsys, *args, "--threads", threads, "--checkpoint", str(half), "--metrics", str(tmp_path / "h"))
    assert code == 130 and "interrupted in epoch 2 after step 3" in err, err
    assert Checkpoint(half).meta["options"]["threads"] == int(threads)
    monkeypatch.undo()
    code, out, err = run(capsys, "train", "--resume", str(half), "--checkpoint", str(half), "--metrics",
                         str(tmp_path / "h"))
    assert code == 0, err
    a, b = Checkpoint(full), Checkpoint(half)
    for k, v in a.model_state.items():
        np.testing.assert_array_equal(b.model_state[k], v, err_msg=k)
    assert metrics(tmp_path / "h") == metrics(tmp_path / "f")
    assert without_timing(b.meta["history"]) == without_timing(a.meta["history"])
    resumed = b.meta["history"][1]
    assert f"epoch 2/3: train loss {resumed['train_loss']:.4f} acc {resumed['train_accuracy']:.4f}" in out


def test_fit_continues_an_interrupted_epochs_sums(tmp_path):
    """The Python API: `TrainingInterrupted.tally` passed back as `initial_tally` gives the epoch's record."""
    def setup():
        train, _ = load_digits()
        train = train.subset(160)
        model = xpcnn.Sequential(xpcnn.Conv2d(1, 4, 3, padding=1), xpcnn.ReLU(), xpcnn.Flatten(),
                                 xpcnn.Dropout(0.2), xpcnn.Linear(256, 10), seed=0)
        loader = DataLoader(train, 32, shuffle=True, seed=0, backend=model.backend, normalizer=Normalizer.fit(train))
        return model, xpcnn.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), loader

    model, opt, loader = setup()
    full = fit(model, opt, xpcnn.CrossEntropyLoss(), loader, epochs=2, progress=False)
    model, opt, loader = setup()
    with pytest.raises(TrainingInterrupted) as info:
        fit(model, opt, InterruptAt(5 + 2), loader, epochs=2, progress=False)
    assert info.value.tally["seen"] == 64
    save_checkpoint(tmp_path / "c", model, opt, epoch=1, loader=loader)
    model, opt, loader = setup()
    load_checkpoint(tmp_path / "c", model, opt, loader)
    rest = fit(model, opt, xpcnn.CrossEntropyLoss(), loader, epochs=2, initial_epoch=1, progress=False,
               initial_tally=info.value.tally)
    assert without_timing(rest) == without_timing(full[1:])
    with pytest.raises(ValueError, match="initial_tally"):
        model, opt, loader = setup()
        load_checkpoint(tmp_path / "c", model, opt, loader)
        fit(model, opt, xpcnn.CrossEntropyLoss(), loader, epochs=2, initial_epoch=1, initial_tally={"seen": -1})


def test_a_longer_epochs_extends_the_run_with_a_schedule_over_the_new_total(tmp_path, capsys):
    """What the README states: `--resume` with a larger --epochs says so in one line; epochs 3 and 4 follow the
    cosine over 4 epochs (what a 4-epoch run uses for them); epochs 1 and 2 stay as they were trained."""
    ck = tmp_path / "c"
    args = ["train", "--limit", "100", "--quiet", "--checkpoint", str(ck)]
    assert run(capsys, *args, "--epochs", "2")[0] == 0
    first = Checkpoint(ck).meta["history"]
    code, out, err = run(capsys, "train", "--resume", str(ck), "--epochs", "4", "--checkpoint", str(ck))
    assert code == 0, err
    assert "was planned for 2 epochs" in err and "cosine over 4" in err
    saved = Checkpoint(ck)
    assert saved.meta["optimizer"]["lr"] == pytest.approx(cosine_schedule(0.05, 4)(4))
    assert saved.meta["history"][:2] == first and [r["epoch"] for r in saved.meta["history"]] == [1, 2, 3, 4]


def test_a_relative_data_dir_is_saved_absolute(tmp_path, capsys, monkeypatch):
    data, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    data.mkdir(), elsewhere.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("t10k", 20)):
        write_idx(data / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)))
        write_idx(data / f"{split}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "train", "--dataset", "mnist", "--data-dir", "data", "--epochs", "1", "--quiet",
                       "--batch-size", "20", "--checkpoint", "c.ckpt")
    assert code == 0, err
    assert Checkpoint("c.ckpt").meta["options"]["data_dir"] == str(data)
    monkeypatch.chdir(elsewhere)
    code, out, err = run(capsys, "evaluate", "--checkpoint", str(tmp_path / "c.ckpt"))
    assert code == 0 and "accuracy" in out, err


def test_ctrl_c_in_an_epochs_last_step_resumes_exactly(tmp_path, capsys, monkeypatch):
    """A Ctrl-C during the last step of epoch 1 stops at the epoch's end, after its evaluation and save: resuming
    then starts epoch 2 (it must not train epoch 1 again from a new shuffle)."""
    args = ["train", "--epochs", "2", "--limit", "200", "--quiet"]
    full, half = tmp_path / "full", tmp_path / "half"
    assert run(capsys, *args, "--checkpoint", str(full))[0] == 0
    monkeypatch.setattr(train_cmd, "CrossEntropyLoss", lambda: InterruptAt(7))  # epoch 1 has 7 steps
    code, _, err = run(capsys, *args, "--checkpoint", str(half))
    assert code == 130 and "interrupted in epoch 2 after step 0" in err, err
    monkeypatch.undo()
    assert run(capsys, "train", "--resume", str(half), "--checkpoint", str(half), "--quiet")[0] == 0
    a, b = Checkpoint(full), Checkpoint(half)
    for k, v in a.model_state.items():
        np.testing.assert_array_equal(b.model_state[k], v, err_msg=k)
