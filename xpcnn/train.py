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

from . import distributed
from .backend import to_numpy
from .errors import InputValueError


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; ``epoch`` and ``step`` say where (1-based)."""

    def __init__(self, epoch: int, step: int, value: float):
        super().__init__(f"loss is {value} at epoch {epoch}, step {step}: training stopped "
                         "(try a smaller --lr); the last checkpoint saved before it is kept")
        self.epoch, self.step, self.value = epoch, step, value


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C arrived; training stopped after a whole step. ``epoch`` is the epoch in progress (1-based)."""

    def __init__(self, epoch: int, step: int):
        super().__init__(f"interrupted in epoch {epoch} after step {step}")
        self.epoch, self.step = epoch, step


class Progress:
    """A one-line progress bar on stderr (only on a terminal); a no-op when disabled."""

    def __init__(self, total: int, desc: str, enabled: bool | None = None, stream=None):
        self.stream = stream or sys.stderr
        self.enabled = (self.stream.isatty() if hasattr(self.stream, "isatty") else False) if enabled is None \
            else enabled
        self.total, self.desc, self.start = total, desc, time.perf_counter()

    def update(self, done: int, images: int, loss: float | None) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if done < self.total and now - getattr(self, "_last", 0.0) < 0.1:  # at most ~10 redraws a second
            return
        self._last = now
        elapsed = max(now - self.start, 1e-9)
        width = 24
        filled = int(width * done / max(self.total, 1))
        loss_txt = f" loss {loss:.4f}" if loss is not None else ""
        self.stream.write(f"\r{self.desc} [{'#' * filled}{'.' * (width - filled)}] {done}/{self.total}"
                          f"{loss_txt} {images / elapsed:,.0f} img/s ")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r\033[K")
            self.stream.flush()


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
        lr_schedule: Callable[[int], float] | None = None) -> list[dict]:
    """Train ``model`` for epochs ``initial_epoch + 1 .. epochs``; returns one record per epoch.

    ``train_data`` yields ``(x, y)`` batches on the model's device (a DataLoader). Each record has
    ``epoch``, ``train_loss``, ``train_accuracy``, ``test_loss``/``test_accuracy`` (when ``val_data``),
    ``seconds``, ``images_per_second`` and ``backend``; every callback is called with it after the epoch.
    ``lr_schedule(epoch)`` (a function of the epoch only, so resuming needs no extra state) sets
    ``optimizer.lr`` before each epoch.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise InputValueError(f"epochs must be a non-negative integer, got {epochs!r}")
    backend = model.backend
    if log_every is None:
        log_every = 20 if backend.is_gpu else 1
    history = []
    flag: dict = {}
    guard = _sigint_as_flag(flag) if catch_sigint else nullcontext()
    with guard:
        for epoch in range(initial_epoch + 1, epochs + 1):
            if lr_schedule is not None:
                optimizer.lr = float(lr_schedule(epoch))
            record = _train_epoch(model, optimizer, loss_fn, train_data, epoch, epochs, log_every, progress, flag)
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


def _train_epoch(model, optimizer, loss_fn, data, epoch, epochs, log_every, progress, flag) -> dict:
    backend = model.backend
    model.train()
    total = len(data) if hasattr(data, "__len__") else 0
    first = getattr(data, "position", 0) if getattr(data, "_resume", False) else 0
    comm = distributed.world()
    bar = Progress(total, f"epoch {epoch}/{epochs}", progress if comm.rank == 0 else False)
    pending: list = []          # per-step losses not yet read back
    loss_sum = correct = 0.0
    seen = 0
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
                last_loss, s, c, n = _drain(pending, epoch, step, comm)
                loss_sum, correct, seen = loss_sum + s, correct + c, seen + n
                bar.update(step, seen, last_loss)
            if comm.any(flag.get("stop")):  # every rank stops after the same step
                raise TrainingInterrupted(epoch, step)
        if pending:
            last_loss, s, c, n = _drain(pending, epoch, step, comm)
            loss_sum, correct, seen = loss_sum + s, correct + c, seen + n
    finally:
        bar.close()
    backend.synchronize()
    seconds = time.perf_counter() - t0
    return {"epoch": epoch, "train_loss": loss_sum / max(seen, 1), "train_accuracy": correct / max(seen, 1),
            "seconds": seconds, "images_per_second": seen / max(seconds, 1e-9), "backend": backend.spec}


def _drain(pending: list, epoch: int, step: int, comm=None) -> tuple[float, float, float, int]:
    """One read-back of the pending per-step values (summed over the ranks of ``comm``); raise at the first
    non-finite loss. Returns the last step's mean loss and the sums of losses, correct predictions and samples."""
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
    pending.clear()
    return (float(values[-1, 0] / sizes[-1]), float(np.sum(values[:, 0])), float(np.sum(values[:, 1])),
            int(np.sum(sizes)))  # host NumPy
