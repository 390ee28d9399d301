"""The training loop: ``fit`` and ``evaluate`` over :class:`~xpcnn.data.DataLoader` batches.

Losses and correct counts are accumulated on the device; the host reads them
back once per logging interval (every ``log_every`` steps), never every step on
a GPU. A non-finite loss stops training with :class:`NonFiniteLossError`
naming the epoch and step. Ctrl-C (SIGINT) is turned into a clean stop at the
next step boundary (:class:`TrainingInterrupted`), so the caller can save a
consistent checkpoint; a second Ctrl-C interrupts at once.

Under MPI (:mod:`xpcnn.distributed`) the ranks agree on stopping with one small allreduce per step, the
losses and counts read back are summed over the ranks (so every rank sees the global batch's and a NaN
stops all at the same step), and rank 0 alone draws the progress bar.
"""
from __future__ import annotations

import math
import signal
import sys
import threading
import time
from contextlib import contextmanager, nullcontext
from typing import Any, Callable, Iterable

import numpy as np

from . import config, distributed
from .backend import to_numpy
from .errors import InputValueError


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; ``epoch`` and ``step`` say where (1-based)."""

    def __init__(self, epoch: int, step: int, value: float):
        super().__init__(f"loss is {value} at epoch {epoch}, step {step}: training stopped "
                         "(try a smaller learning rate)")
        self.epoch, self.step, self.value = epoch, step, value


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C arrived; training stopped after a whole step. ``epoch`` is the epoch in progress (1-based).

    ``tally`` holds that epoch's sums so far (:data:`TALLY_KEYS`): save it beside the loader's position and
    pass it back as ``fit(..., initial_tally=)`` so that the resumed epoch reports what an uninterrupted one
    would (``None`` when the stop came at an epoch boundary)."""

    def __init__(self, epoch: int, step: int, tally: dict | None = None):
        super().__init__(f"interrupted in epoch {epoch} after step {step}")
        self.epoch, self.step, self.tally = epoch, step, tally


TALLY_KEYS = ("loss_sum", "correct", "seen", "seconds")  # an epoch's running sums, saved on an interrupt


class Progress:
    """The per-epoch bar on stderr (tqdm: rate, ETA, terminal width), only on a terminal; a no-op when disabled."""

    MIN_INTERVAL = 0.1  # seconds between redraws

    def __init__(self, total: int, desc: str, enabled: bool | None = None, stream=None, initial: int = 0):
        stream = stream or sys.stderr
        if enabled is None:
            enabled = stream.isatty() if hasattr(stream, "isatty") else False
        self.bar, self.start = None, time.perf_counter()
        if enabled:
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=initial, desc=desc, unit="batch", file=stream, leave=False,
                            dynamic_ncols=True, mininterval=self.MIN_INTERVAL)

    def update(self, done: int, images: int, loss: float | None) -> None:
        if self.bar is not None:
            rate = images / max(time.perf_counter() - self.start, 1e-9)
            self.bar.set_postfix_str((f"loss {loss:.4f}, " if loss is not None else "") + f"{rate:,.0f} img/s",
                                     refresh=False)
            self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@contextmanager
def _sigint_as_flag(flag: dict):
    """While active, the first Ctrl-C sets ``flag["stop"]``; the second raises KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if flag.get("stop"):
            raise KeyboardInterrupt
        flag["stop"] = True

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _xp_sum_correct(logits, y):
    """Number of correct predictions, as a 0-d device array (no read-back)."""
    from array_api_compat import array_namespace

    xp = array_namespace(logits)
    return xp.sum(xp.astype(xp.argmax(logits, axis=1) == y, logits.dtype))


def evaluate(model, loss_fn, data: Iterable) -> dict[str, float]:
    """Mean loss and accuracy of ``model`` over ``data`` (batches ``(x, y)``), in eval mode; one read-back."""
    was_training = model.training
    model.eval()
    loss_sum = correct = None
    n = 0
    try:
        for x, y in data:
            logits = model(x)
            b = int(y.shape[0])
            loss = loss_fn(logits, y) * b
            c = _xp_sum_correct(logits, y)
            loss_sum = loss if loss_sum is None else loss_sum + loss
            correct = c if correct is None else correct + c
            n += b
    finally:
        model.train(was_training)
    if n == 0:
        raise InputValueError("evaluate: no data")
    return {"loss": float(loss_sum) / n, "accuracy": float(correct) / n}


def fit(model, optimizer, loss_fn, train_data, epochs: int = 1, val_data: Iterable | None = None,
        callbacks: Iterable[Callable[[dict], Any]] = (), initial_epoch: int = 0, log_every: int | None = None,
        progress: bool | None = None, catch_sigint: bool = True,
        lr_schedule: Callable[[int], float] | None = None, initial_tally: dict | None = None) -> list[dict]:
    """Train ``model`` for epochs ``initial_epoch + 1 .. epochs``; returns one record per epoch.

    ``train_data`` yields ``(x, y)`` batches on the model's device (a DataLoader). Each record has
    ``epoch``, ``train_loss``, ``train_accuracy``, ``test_loss``/``test_accuracy`` (when ``val_data``),
    ``seconds``, ``images_per_second`` and ``backend``; every callback is called with it after the epoch.
    ``lr_schedule(epoch)`` (a function of the epoch only, so resuming needs no extra state) sets
    ``optimizer.lr`` before each epoch. ``initial_tally`` continues the sums of an epoch that was
    interrupted mid-way (:attr:`TrainingInterrupted.tally`; used only when ``train_data`` resumes mid-epoch).
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise InputValueError(f"epochs must be a non-negative integer, got {epochs!r}")
    backend = model.backend
    if log_every is None:
        log_every = 20 if config.gpu_plan(backend) else 1
    history = []
    flag: dict = {}
    guard = _sigint_as_flag(flag) if catch_sigint else nullcontext()
    with guard:
        for epoch in range(initial_epoch + 1, epochs + 1):
            if lr_schedule is not None:
                optimizer.lr = float(lr_schedule(epoch))
            record = _train_epoch(model, optimizer, loss_fn, train_data, epoch, epochs, log_every, progress, flag,
                                  initial_tally)
            initial_tally = None
            if val_data is not None:
                ev = evaluate(model, loss_fn, val_data)
                record["test_loss"], record["test_accuracy"] = ev["loss"], ev["accuracy"]
            history.append(record)
            for cb in callbacks:
                cb(record)
            if distributed.world().any(flag.get("stop")):  # Ctrl-C in evaluation or a callback: stop here
                raise TrainingInterrupted(epoch + 1, 0)
    return history


def cosine_schedule(lr: float, epochs: int, min_lr: float = 0.0) -> Callable[[int], float]:
    """Cosine decay from ``lr`` (epoch 1) towards ``min_lr`` (after the last epoch)."""
    return lambda epoch: min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * (epoch - 1) / max(epochs, 1)))


class _Tally:
    """An epoch's running sums. Each step's values are added one at a time, in step order, so the sums do not
    depend on how the steps were grouped into read-backs (a resumed epoch equals an uninterrupted one)."""

    def __init__(self, saved: dict | None = None):
        saved = dict.fromkeys(TALLY_KEYS, 0) if saved is None else saved
        if not isinstance(saved, dict) or not all(_is_count(saved.get(k)) for k in TALLY_KEYS):
            raise InputValueError(f"initial_tally must map {', '.join(TALLY_KEYS)} to non-negative numbers, "
                                  f"got {saved!r}")
        self.loss_sum, self.correct, self.seen = float(saved["loss_sum"]), float(saved["correct"]), int(saved["seen"])
        self.earlier = float(saved["seconds"])  # seconds spent on this epoch before the resume

    def drain(self, pending: list, epoch: int, step: int, comm=None) -> float:
        """Read back the pending steps (one transfer; summed over the ranks of ``comm``), add them; return the
        last step's mean loss."""
        values = _read_back(pending, epoch, step, comm)
        for loss, correct, b in values.tolist():
            self.loss_sum += loss
            self.correct += correct
            self.seen += int(b)
        pending.clear()
        return values[-1, 0] / values[-1, 2]

    def state(self, seconds: float) -> dict:
        return {"loss_sum": self.loss_sum, "correct": self.correct, "seen": self.seen,
                "seconds": self.earlier + seconds}


def _is_count(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


def _train_epoch(model, optimizer, loss_fn, data, epoch, epochs, log_every, progress, flag, saved) -> dict:
    backend = model.backend
    model.train()
    total = len(data) if hasattr(data, "__len__") else 0
    first = getattr(data, "position", 0) if getattr(data, "_resume", False) else 0
    comm = distributed.world()
    bar = Progress(total, f"epoch {epoch}/{epochs}", progress if comm.rank == 0 else False, initial=first)
    pending: list = []          # per-step losses not yet read back
    tally = _Tally(saved if first else None)
    earlier_seen = tally.seen   # for the progress bar's rate: this call's images only
    last_loss = None
    backend.synchronize()
    t0 = time.perf_counter()
    step = first
    try:
        for x, y in data:
            step += 1
            optimizer.zero_grad()
            logits = model(x)
            loss = loss_fn(logits, y)
            model.backward(loss_fn.backward(), input_grad=False)  # no input gradient, as PyTorch
            optimizer.step()
            b = int(y.shape[0])
            pending.append((loss * b, _xp_sum_correct(logits, y), b))
            if len(pending) >= log_every or step == total:
                last_loss = tally.drain(pending, epoch, step, comm)
                bar.update(step, tally.seen - earlier_seen, last_loss)
            # every rank stops after the same step; after the epoch's last one the epoch ends as usual (evaluated,
            # saved) and fit stops at its boundary: a checkpoint of a finished epoch must not resume inside it
            if step != total and comm.any(flag.get("stop")):
                if pending:
                    tally.drain(pending, epoch, step, comm)
                raise TrainingInterrupted(epoch, step, tally.state(time.perf_counter() - t0))
        if pending:
            tally.drain(pending, epoch, step, comm)
    finally:
        bar.close()
    backend.synchronize()
    if not tally.seen:
        raise InputValueError("fit: the training data yielded no batch")
    seconds = tally.state(time.perf_counter() - t0)["seconds"]
    return {"epoch": epoch, "train_loss": tally.loss_sum / tally.seen, "train_accuracy": tally.correct / tally.seen,
            "seconds": seconds, "images_per_second": tally.seen / max(seconds, 1e-9), "backend": backend.spec}


def _read_back(pending: list, epoch: int, step: int, comm=None) -> np.ndarray:
    """The pending steps' (loss x batch, correct, batch) rows as one host float64 array, summed over the ranks of
    ``comm`` (one transfer, one allreduce); raise at the first non-finite loss."""
    from array_api_compat import array_namespace

    xp = array_namespace(pending[0][0])
    values = to_numpy(xp.stack([xp.stack([xp.astype(l, c.dtype) if l.dtype != c.dtype else l, c])
                                for l, c, _ in pending]))
    values = np.concatenate([values.astype(np.float64), [[b] for _, _, b in pending]], axis=1)
    if comm is not None:
        comm.allreduce_(values)
    sizes = values[:, 2]
    bad = np.flatnonzero(~np.isfinite(values[:, 0]))
    if bad.size:
        i = int(bad[0])
        raise NonFiniteLossError(epoch, step - len(pending) + 1 + i, float(values[i, 0] / sizes[i]))
    return values
