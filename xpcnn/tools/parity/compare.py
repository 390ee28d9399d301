"""Parity across backends: the same model, seed and data on two backends, compared layer by layer.

Used by ``xpcnn parity`` and by ``tests/test_parity.py``: a whole model step by step
(:func:`compare_models`), every layer type alone (:func:`compare_layers`) and every
functional op (:func:`compare_ops`), on the cases of :mod:`.cases`, measured and
reported by :mod:`.report`.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ...backend import Backend, get_backend
from ...errors import InputValueError
from ...layers import CrossEntropyLoss
from ...models import MODEL_INPUTS, build_model
from ...optim import SGD
from ...sequential import Sequential
from .cases import layer_cases, op_cases
from .report import TOLERANCES, Diff, ParityReport, difference


def use_host_dropout(backend: Backend) -> Backend:
    """Make dropout masks on ``backend`` come from a host NumPy generator.

    CuPy draws dropout masks on the GPU with its own generator, so two backends
    would drop different units; for parity both draw on the host from the same
    seed and copy the mask to the device. Only for comparisons: it costs a copy.
    """
    def uniform_source(seed: int):
        rng = np.random.default_rng(seed)
        return lambda shape: backend.asarray(rng.random(tuple(int(d) for d in shape)))

    backend.uniform_source = uniform_source  # instance attribute shadows the method
    return backend


def _tolerance(dtype: str, rtol: float | None) -> float:
    if dtype not in TOLERANCES:
        raise InputValueError(f"dtype must be one of {tuple(TOLERANCES)}, got {dtype!r}")
    return TOLERANCES[dtype] if rtol is None else float(rtol)


def _pair_of_backends(backends: Sequence[str], dtype: str) -> tuple[Backend, Backend]:
    if len(backends) != 2:
        raise InputValueError(f"parity compares exactly two backends, got {list(backends)}")
    return get_backend(backends[0], dtype), get_backend(backends[1], dtype)


# ----------------------------------------------------------------------------------------------
# whole models
# ----------------------------------------------------------------------------------------------
def build_pair(model: str, backends: Sequence[str], dtype: str = "float64", seed: int = 0):
    """The named model built on two backends from the same seed (host-drawn dropout on both)."""
    if model not in MODEL_INPUTS:
        raise InputValueError(f"unknown model {model!r}; valid models are {', '.join(MODEL_INPUTS)}")
    ba, bb = _pair_of_backends(backends, dtype)
    c, size, classes = MODEL_INPUTS[model]
    ma = build_model(model, c, classes, size, backend=ba, dtype=dtype, seed=seed)
    mb = build_model(model, c, classes, size, backend=bb, dtype=dtype, seed=seed)
    use_host_dropout(ma.backend)
    use_host_dropout(mb.backend)
    return ma, mb


def _batch(rng: np.random.Generator, model: str, batch_size: int):
    c, size, classes = MODEL_INPUTS[model]
    x = rng.standard_normal((batch_size, c, size, size))
    labels = rng.integers(0, classes, batch_size)
    return x, labels


def compare_models(backends: Sequence[str] = ("numpy", "array_api_strict"), model: str = "digits-cnn",
                   dtype: str = "float64", batch_size: int = 4, steps: int = 0, seed: int = 0,
                   lr: float = 0.01, momentum: float = 0.9, rtol: float | None = None) -> ParityReport:
    """Run ``model`` on two backends from the same seed and data; compare every layer.

    One training step is taken layer by layer: each layer's forward output, the
    loss and its gradient, each layer's input gradient (backward), then every
    parameter gradient. An SGD step (``lr``, ``momentum``) follows and then
    ``steps`` more full training steps on fresh batches: every step's loss, and
    at the end every parameter and buffer (BatchNorm running statistics), are
    compared too.
    """
    tol = _tolerance(dtype, rtol)
    if batch_size < 2:
        raise InputValueError(f"batch_size must be >= 2 (BatchNorm needs it), got {batch_size}")
    if steps < 0:
        raise InputValueError(f"steps must be >= 0, got {steps}")
    ma, mb = build_pair(model, backends, dtype, seed)
    report = ParityReport((ma.backend.spec, mb.backend.spec), dtype, tol,
                          f"model {model}, batch {batch_size}, seed {seed}, 1+{steps} steps")
    rng = np.random.default_rng(seed + 1)
    x, labels = _batch(rng, model, batch_size)
    losses = (CrossEntropyLoss(), CrossEntropyLoss())
    opts = (SGD(ma.parameters(), lr=lr, momentum=momentum), SGD(mb.parameters(), lr=lr, momentum=momentum))

    # -- one step, layer by layer --------------------------------------------------------------
    outs = []
    for m in (ma, mb):
        m.train()
        m.zero_grad()
        outs.append(m.backend.asarray(x))
    for i, (la, lb) in enumerate(zip(ma.layers, mb.layers)):
        with ma.backend.activate():
            outs[0] = la.forward(outs[0])
        with mb.backend.activate():
            outs[1] = lb.forward(outs[1])
        report.add(outs[0], outs[1], "forward", f"{i} {type(la).__name__}")
    loss_a, loss_b = losses[0](outs[0], labels), losses[1](outs[1], labels)
    report.add(loss_a, loss_b, "loss", "CrossEntropyLoss")
    grads = [losses[0].backward(), losses[1].backward()]
    report.add(grads[0], grads[1], "grad_logits", "CrossEntropyLoss")
    for i in reversed(range(len(ma.layers))):
        with ma.backend.activate():
            grads[0] = ma.layers[i].backward(grads[0])
        with mb.backend.activate():
            grads[1] = mb.layers[i].backward(grads[1])
        report.add(grads[0], grads[1], "grad_input", f"{i} {type(ma.layers[i]).__name__}")
    for (name, pa), (_, pb) in zip(ma.named_parameters(), mb.named_parameters()):
        report.add(pa.grad, pb.grad, "grad_param", name)
    for opt in opts:
        opt.step()

    # -- more full training steps ---------------------------------------------------------------
    if steps:
        worst_loss: Diff | None = None
        for s in range(steps):
            x, labels = _batch(rng, model, batch_size)
            step_losses = []
            for m, loss_fn, opt in zip((ma, mb), losses, opts):
                opt.zero_grad()
                step_losses.append(loss_fn(m(x), labels))
                m.backward(loss_fn.backward())
                opt.step()
            d = difference(step_losses[0], step_losses[1], "loss", f"steps 1-{steps} (worst: step {s + 1})", tol)
            if worst_loss is None or d.max_rel > worst_loss.max_rel:
                worst_loss = d
        report.rows.append(worst_loss)
        sa, sb = ma.state_dict(), mb.state_dict()
        params = {name for name, _ in ma.named_parameters()}
        for key in sa:
            report.add(sa[key], sb[key], "param" if key in params else "buffer", f"{key} after {1 + steps} steps")
    return report


# ----------------------------------------------------------------------------------------------
# single layers
# ----------------------------------------------------------------------------------------------
def compare_layers(backends: Sequence[str] = ("numpy", "array_api_strict"), dtype: str = "float64",
                   seed: int = 0, rtol: float | None = None, train: bool = True) -> ParityReport:
    """Every layer type alone (in a one-layer Sequential): forward, input gradient, parameter gradients,
    and the buffers a training forward updates."""
    tol = _tolerance(dtype, rtol)
    ba, bb = _pair_of_backends(backends, dtype)
    report = ParityReport((ba.spec, bb.spec), dtype, tol, f"every layer, {'train' if train else 'eval'} mode")
    rng = np.random.default_rng(seed)
    for name, make, shape in layer_cases():
        ma = Sequential(make(), backend=ba, dtype=dtype, seed=seed)
        mb = Sequential(make(), backend=bb, dtype=dtype, seed=seed)
        use_host_dropout(ma.backend)
        use_host_dropout(mb.backend)
        x = rng.standard_normal(shape)
        ya, yb = ma.train(train)(x), mb.train(train)(x)
        report.add(ya, yb, "forward", name)
        dy = rng.standard_normal(tuple(ya.shape))
        report.add(ma.backward(dy), mb.backward(dy), "grad_input", name)
        for (pname, pa), (_, pb) in zip(ma.named_parameters(), mb.named_parameters()):
            report.add(pa.grad, pb.grad, "grad_param", f"{name} {pname}")
        for (bname, va), (_, vb) in zip(ma.named_buffers(), mb.named_buffers()):
            report.add(va, vb, "buffer", f"{name} {bname}")
    return report


# ----------------------------------------------------------------------------------------------
# functional ops
# ----------------------------------------------------------------------------------------------
def compare_ops(backends: Sequence[str] = ("numpy", "array_api_strict"), dtype: str = "float64",
                seed: int = 0, rtol: float | None = None) -> ParityReport:
    """Every functional op's forward and backward on the same host inputs, on two backends."""
    tol = _tolerance(dtype, rtol)
    ba, bb = _pair_of_backends(backends, dtype)
    report = ParityReport((ba.spec, bb.spec), dtype, tol, "every functional op, forward and backward")
    rng = np.random.default_rng(seed)
    for name, shapes, run in op_cases():
        host = [rng.standard_normal(s) for s in shapes]
        results = []
        for b in (ba, bb):
            with b.activate():
                results.append(run(*[b.asarray(h) for h in host]))
        for key in results[0]:
            report.add(results[0][key], results[1][key], "op", f"{name} {key}")
    return report
