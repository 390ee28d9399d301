"""fit/evaluate: learning, exact resume (also mid-epoch, with dropout and batch norm), NaN stop, real data."""
import os
import signal

import numpy as np
import pytest

import xpcnn
from xpcnn.checkpoint import load_checkpoint, save_checkpoint
from xpcnn.data import DataLoader, Normalizer
from xpcnn.datasets import load_dataset, load_digits
from xpcnn.models import build_model
from xpcnn.training import NonFiniteLossError, TrainingInterrupted, cosine_schedule, evaluate, fit

FASHION = "/usr/share/datasets/fashion-mnist"


pytestmark = pytest.mark.usefixtures("one_blas_thread")


def net(seed=0):
    """Small, with every kind of state: batch norm buffers, dropout masks."""
    return xpcnn.Sequential(xpcnn.Conv2d(1, 4, 3, padding=1), xpcnn.BatchNorm2d(4), xpcnn.ReLU(), xpcnn.MaxPool2d(2),
                            xpcnn.Flatten(), xpcnn.Dropout(0.3), xpcnn.Linear(64, 10), seed=seed)


def setup(seed=0, n=400):
    train, test = load_digits()
    train = train.subset(n)
    model = net(seed)
    norm = Normalizer.fit(train)
    loader = DataLoader(train, 32, shuffle=True, seed=seed, backend=model.backend, normalizer=norm)
    opt = xpcnn.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    return model, opt, loader, DataLoader(test, 128, backend=model.backend, normalizer=norm)


def weights(model):
    return {k: xpcnn.to_numpy(v) for k, v in model.state_dict().items()}


def test_fit_learns_and_reports():
    model, opt, loader, test = setup()
    seen = []
    hist = fit(model, opt, xpcnn.CrossEntropyLoss(), loader, epochs=3, val_data=test, callbacks=[seen.append],
               progress=False)
    assert [r["epoch"] for r in hist] == [1, 2, 3] and seen == hist
    assert set(hist[0]) >= {"epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "seconds",
                            "images_per_second", "backend"}
    assert hist[-1]["test_accuracy"] > 0.8 and hist[-1]["train_loss"] < hist[0]["train_loss"]
    ev = evaluate(model, xpcnn.CrossEntropyLoss(), test)
    assert ev["accuracy"] == pytest.approx(hist[-1]["test_accuracy"]) and model.training


def test_resume_after_epoch_2_of_4_is_bit_identical(tmp_path):
    loss = xpcnn.CrossEntropyLoss()
    sched = cosine_schedule(0.05, 4)
    model, opt, loader, _ = setup()
    fit(model, opt, loss, loader, epochs=4, progress=False, lr_schedule=sched)
    full = weights(model)

    model, opt, loader, _ = setup()
    fit(model, opt, loss, loader, epochs=2, progress=False, lr_schedule=sched)
    save_checkpoint(tmp_path / "c", model, opt, epoch=2, loader=loader)
    model, opt, loader, _ = setup(seed=0)
    np.random.default_rng(123)  # nothing global matters
    ck = load_checkpoint(tmp_path / "c", model, opt, loader)
    fit(model, opt, loss, loader, epochs=4, initial_epoch=ck.epoch, progress=False, lr_schedule=sched)
    for k, v in weights(model).items():
        np.testing.assert_array_equal(v, full[k], err_msg=k)


class ActsAt(xpcnn.CrossEntropyLoss):
    """A loss that does something (:meth:`act`) to the logits of its ``at``-th call."""

    def __init__(self, at):
        super().__init__()
        self.at, self.calls = at, 0

    def act(self, logits):
        return logits

    def forward(self, logits, labels):
        self.calls += 1
        if self.calls == self.at:
            logits = self.act(logits)
        return super().forward(logits, labels)


class InterruptAt(ActsAt):
    """Sends this process a SIGINT (a Ctrl-C) during the given call."""

    def act(self, logits):
        os.kill(os.getpid(), signal.SIGINT)
        return logits


def test_ctrl_c_mid_epoch_saves_and_resumes_exactly(tmp_path):
    model, opt, loader, _ = setup()
    fit(model, opt, xpcnn.CrossEntropyLoss(), loader, epochs=2, progress=False)
    full = weights(model)

    model, opt, loader, _ = setup()
    with pytest.raises(TrainingInterrupted) as info:
        fit(model, opt, InterruptAt(17), loader, epochs=2, progress=False)
    assert (info.value.epoch, info.value.step) == (2, 4)          # 13 steps per epoch: the 17th is epoch 2, step 4
    save_checkpoint(tmp_path / "c", model, opt, epoch=info.value.epoch - 1, loader=loader)
    model, opt, loader, _ = setup()
    ck = load_checkpoint(tmp_path / "c", model, opt, loader)
    fit(model, opt, xpcnn.CrossEntropyLoss(), loader, epochs=2, initial_epoch=ck.epoch, progress=False)
    for k, v in weights(model).items():
        np.testing.assert_array_equal(v, full[k], err_msg=k)


class NaNAt(ActsAt):
    """Makes the given call's logits NaN."""

    def act(self, logits):
        return logits * float("nan")


@pytest.mark.parametrize("log_every", [1, 5])
def test_nan_stops_with_epoch_and_step(log_every):
    model, opt, loader, _ = setup()
    with pytest.raises(NonFiniteLossError, match="epoch 2, step 3") as info:
        fit(model, opt, NaNAt(13 + 3), loader, epochs=3, progress=False, log_every=log_every)
    assert (info.value.epoch, info.value.step) == (2, 3)


def test_default_model_reaches_97_percent_quickly():
    """The default `xpcnn train` recipe, shortened: digits-cnn + SGD/Nesterov + cosine, 8 epochs."""
    train, test = load_digits()
    model = build_model("digits-cnn", 1, 10, 8, seed=0)
    norm = Normalizer.fit(train)
    loader = DataLoader(train, 32, shuffle=True, seed=0, backend=model.backend, normalizer=norm)
    opt = xpcnn.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    hist = fit(model, opt, xpcnn.CrossEntropyLoss(), loader, epochs=8, progress=False,
               val_data=DataLoader(test, 256, backend=model.backend, normalizer=norm),
               lr_schedule=cosine_schedule(0.05, 8))
    assert hist[-1]["test_accuracy"] >= 0.97


@pytest.mark.skipif(not os.path.isdir(FASHION), reason=f"{FASHION} absent (apt install dataset-fashion-mnist)")
def test_fashion_mnist_one_short_epoch():
    train, test = load_dataset("fashion-mnist")
    train, test = train.subset(3000), test.subset(1000)
    model = build_model("lenet", 1, 10, 28, seed=0)
    norm = Normalizer.fit(train)
    loader = DataLoader(train, 64, shuffle=True, seed=0, backend=model.backend, normalizer=norm)
    opt = xpcnn.optim.Adam(model.parameters(), lr=2e-3)
    hist = fit(model, opt, xpcnn.CrossEntropyLoss(), loader, epochs=1, progress=False,
               val_data=DataLoader(test, 250, backend=model.backend, normalizer=norm))
    assert hist[0]["test_accuracy"] > 0.6  # chance is 0.1


def test_progress_bar_is_tqdm_on_a_terminal_and_silent_otherwise(monkeypatch):
    import io
    from xpcnn.training import Progress

    monkeypatch.setattr(Progress, "MIN_INTERVAL", 0.0)  # draw every update

    class Terminal(io.StringIO):
        def isatty(self):
            return True
    for stream, shown in ((Terminal(), True), (io.StringIO(), False)):
        bar = Progress(5, "epoch 1/2", stream=stream, initial=1)
        for step in (2, 3, 5):
            bar.update(step, step * 32, 0.25)
        bar.close()
        out = stream.getvalue()
        if shown:  # tqdm's counter, elapsed<remaining (ETA) and rate, with our loss and images per second
            assert "epoch 1/2" in out and "5/5" in out and "batch/s" in out and "<" in out, out
            assert "loss 0.2500" in out and "img/s" in out
        else:
            assert out == ""
    quiet = Terminal()
    bar = Progress(5, "x", enabled=False, stream=quiet)
    bar.update(5, 160, 0.1)
    bar.close()
    assert quiet.getvalue() == ""
