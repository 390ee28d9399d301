"""Parity across backends: the same model, seed and data on two backends, compared layer by layer.

Used by ``xpcnn parity`` and by ``tests/test_parity.py``. Everything is
compared on the host in float64 after the run, so the comparison itself never
adds a device round trip to the steps being compared.

The measure of difference between a result ``a`` (first backend, the
reference) and ``b`` is

* ``max_abs = max |a - b|``
* ``max_rel = max |a - b| / max(max |a|, max |b|)`` (0 when both are all zero)

i.e. the largest error relative to the array's own scale. An element-wise
relative error is not used on purpose: it explodes for values that are
legitimately near zero (ReLU outputs, gradients of inactive units).

Tolerances on ``max_rel`` (see :data:`TOLERANCES`): float64 must agree to
1e-10; float32 to 1e-4. Different BLAS/cuBLAS kernels sum in different orders,
so float32 results legitimately differ by a few units in the last place
(~1e-7 relative) per op; 1e-4 leaves two to three orders of magnitude of
headroom for that error to grow through a network, while an indexing or
device bug gives O(1) differences.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from .backend import Backend, get_backend, to_numpy
from .errors import InputValueError

#: Largest accepted ``max_rel`` per dtype (see the module docstring for why).
TOLERANCES: dict[str, float] = {"float64": 1e-10, "float32": 1e-4}

#: ``(in_channels, image_size, num_classes)`` of the named models' natural inputs.
MODEL_INPUTS: dict[str, tuple[int, int, int]] = {
    "digits-cnn": (1, 8, 10),
    "lenet": (1, 28, 10),
    "vgg-small": (3, 32, 10),
    "allcnn-gap": (3, 32, 10),
    "resnet20": (3, 32, 10),
    "resnet32": (3, 32, 10),
    "resnet56": (3, 32, 10),
}


@dataclass
class Diff:
    """One compared result: what it is, where, and how far apart the two backends are."""

    what: str       # "forward", "grad_input", "grad_param", "loss", "grad_logits", "param", "buffer", "op"
    name: str       # the layer ("3 Conv2d"), parameter ("0.weight") or op ("conv2d stride=2 dx")
    max_abs: float
    max_rel: float
    tol: float
    shape: tuple = ()

    @property
    def ok(self) -> bool:
        return bool(self.max_rel <= self.tol)


def difference(a: Any, b: Any, what: str, name: str, tol: float) -> Diff:
    """Compare two arrays of any backends (copied to the host, compared in float64)."""
    ha = np.asarray(to_numpy(a), dtype=np.float64)
    hb = np.asarray(to_numpy(b), dtype=np.float64)
    if ha.shape != hb.shape:
        return Diff(what, f"{name} (shapes {ha.shape} vs {hb.shape})", float("inf"), float("inf"), tol, ha.shape)
    if ha.size == 0:
        return Diff(what, name, 0.0, 0.0, tol, ha.shape)
    if not (np.all(np.isfinite(ha)) and np.all(np.isfinite(hb))):
        same = np.array_equal(ha, hb, equal_nan=True)
        return Diff(what, name + " (non-finite values)", 0.0 if same else float("inf"),
                    0.0 if same else float("inf"), tol, ha.shape)
    err = float(np.max(np.abs(ha - hb)))
    scale = max(float(np.max(np.abs(ha))), float(np.max(np.abs(hb))))
    rel = 0.0 if err == 0.0 else (err / scale if scale > 0 else float("inf"))
    return Diff(what, name, err, rel, tol, ha.shape)


@dataclass
class ParityReport:
    """All the differences of one comparison, and whether every one is within tolerance."""

    backends: tuple[str, str]
    dtype: str
    tol: float
    subject: str
    rows: list[Diff] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)

    @property
    def worst(self) -> Diff | None:
        return max(self.rows, key=lambda r: r.max_rel, default=None)

    def add(self, a, b, what: str, name: str) -> Diff:
        d = difference(a, b, what, name, self.tol)
        self.rows.append(d)
        return d

    def format(self) -> str:
        """A fixed-width table, one row per compared result, and a verdict line."""
        a, b = self.backends
        head = f"parity {a} vs {b}: {self.subject}, {self.dtype}, tolerance {self.tol:g} (max relative difference)"
        width = max([len(r.name) for r in self.rows] + [10])
        lines = [head, f"{'what':<12} {'name':<{width}} {'max_abs':>10} {'max_rel':>10}  ok"]
        for r in self.rows:
            lines.append(f"{r.what:<12} {r.name:<{width}} {r.max_abs:>10.3e} {r.max_rel:>10.3e}  "
                         f"{'ok' if r.ok else 'FAIL'}")
        w = self.worst
        bad = [r for r in self.rows if not r.ok]
        if w is None:
            lines.append("nothing compared")
        elif bad:
            lines.append(f"FAIL: {len(bad)} of {len(self.rows)} results differ beyond {self.tol:g} "
                         f"(worst: {w.what} {w.name}, max_rel {w.max_rel:.3e})")
        else:
            lines.append(f"OK: all {len(self.rows)} results agree within {self.tol:g} "
                         f"(worst: {w.what} {w.name}, max_rel {w.max_rel:.3e})")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"backends": list(self.backends), "dtype": self.dtype, "tolerance": self.tol,
                "subject": self.subject, "ok": self.ok,
                "rows": [dict(asdict(r), ok=r.ok, shape=list(r.shape)) for r in self.rows]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


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
    from .models import build_model

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
    from .layers import CrossEntropyLoss
    from .optim import SGD

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
def layer_cases() -> list[tuple[str, Callable[[], Any], tuple[int, ...]]]:
    """``(name, make_layer, input_shape)`` for every layer type and its notable options."""
    from . import layers as L

    return [
        ("Conv2d", lambda: L.Conv2d(3, 4, 3), (2, 3, 7, 7)),
        ("Conv2d stride2 pad1", lambda: L.Conv2d(3, 4, 3, stride=2, padding=1), (2, 3, 8, 8)),
        ("Conv2d dilation2 same", lambda: L.Conv2d(2, 3, 3, padding="same", dilation=2), (2, 2, 9, 9)),
        ("Conv2d groups2 nobias", lambda: L.Conv2d(4, 6, (3, 2), groups=2, bias=False), (2, 4, 6, 7)),
        ("Conv2d reflect", lambda: L.Conv2d(3, 4, 3, padding=(2, 1), padding_mode="reflect"), (2, 3, 7, 7)),
        ("Conv2d replicate s2", lambda: L.Conv2d(3, 4, 3, 2, 1, padding_mode="replicate"), (2, 3, 8, 8)),
        ("Conv2d circular same", lambda: L.Conv2d(2, 3, (3, 2), padding="same", padding_mode="circular"),
         (2, 2, 6, 7)),
        ("MaxPool2d", lambda: L.MaxPool2d(2), (2, 3, 8, 8)),
        ("MaxPool2d k3 s2 p1", lambda: L.MaxPool2d(3, stride=2, padding=1), (2, 3, 9, 9)),
        ("AvgPool2d k3 s2 p1", lambda: L.AvgPool2d(3, stride=2, padding=1), (2, 3, 9, 9)),
        ("MaxPool2d k3 s2 p1 d2 ceil", lambda: L.MaxPool2d(3, 2, 1, 2, ceil_mode=True), (2, 3, 10, 9)),
        ("AvgPool2d k3 s2 p1 ceil no-pad-count", lambda: L.AvgPool2d(3, 2, 1, True, False), (2, 3, 10, 9)),
        ("AvgPool2d k2 divisor 3", lambda: L.AvgPool2d(2, divisor_override=3), (2, 3, 6, 6)),
        ("AdaptiveMaxPool2d(3,None)", lambda: L.AdaptiveMaxPool2d((3, None)), (2, 3, 7, 5)),
        ("AdaptiveAvgPool2d(2,3)", lambda: L.AdaptiveAvgPool2d((2, 3)), (2, 3, 7, 8)),
        ("GlobalAvgPool2d", lambda: L.GlobalAvgPool2d(), (2, 3, 5, 5)),
        ("BatchNorm2d", lambda: L.BatchNorm2d(3), (4, 3, 5, 5)),
        ("BatchNorm1d", lambda: L.BatchNorm1d(5), (6, 5)),
        ("Linear", lambda: L.Linear(6, 4), (3, 6)),
        ("Flatten", lambda: L.Flatten(), (2, 3, 4, 4)),
        ("ReLU", lambda: L.ReLU(), (2, 3, 4, 4)),
        ("LeakyReLU", lambda: L.LeakyReLU(0.1), (2, 3, 4, 4)),
        ("Sigmoid", lambda: L.Sigmoid(), (2, 3, 4, 4)),
        ("Tanh", lambda: L.Tanh(), (2, 3, 4, 4)),
        ("Dropout", lambda: L.Dropout(0.4), (4, 3, 4, 4)),
        ("ZeroPadShortcut", lambda: L.ZeroPadShortcut(2, 4, 2), (2, 2, 5, 5)),
        ("Residual", lambda: L.Residual(_block_body(3, 1)), (2, 3, 5, 5)),
        ("Residual option A", lambda: L.Residual(_block_body(2, 2), L.ZeroPadShortcut(2, 4, 2)), (2, 2, 5, 5)),
        ("Residual conv shortcut", lambda: L.Residual(_block_body(2, 2), _conv_shortcut(2, 2)), (2, 2, 5, 5)),
    ]


def _block_body(c: int, stride: int):
    from . import layers as L
    from .sequential import Sequential
    out = c * stride
    return Sequential(L.Conv2d(c, out, 3, stride, 1, bias=False), L.BatchNorm2d(out), L.ReLU(),
                      L.Conv2d(out, out, 3, 1, 1, bias=False), L.BatchNorm2d(out))


def _conv_shortcut(c: int, stride: int):
    from . import layers as L
    from .sequential import Sequential
    return Sequential(L.Conv2d(c, c * stride, 1, stride, bias=False), L.BatchNorm2d(c * stride))


def compare_layers(backends: Sequence[str] = ("numpy", "array_api_strict"), dtype: str = "float64",
                   seed: int = 0, rtol: float | None = None, train: bool = True) -> ParityReport:
    """Every layer type alone (in a one-layer Sequential): forward, input gradient, parameter gradients,
    and the buffers a training forward updates."""
    from .sequential import Sequential

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
def _op_cases():
    """``(name, input_shapes, run)``: ``run(*arrays)`` returns a dict of named result arrays.

    Inputs are float host arrays moved to each backend; integer inputs (labels)
    and boolean masks are derived inside ``run`` from float inputs so that both
    backends see the same values.
    """
    from . import functional as F
    from array_api_compat import array_namespace

    def conv(stride=1, padding=0, dilation=1, groups=1):
        def run(x, w, b, dy):
            y, ctx = F.conv2d_forward(x, w, b, stride, padding, dilation, groups)
            dx, dw, db = F.conv2d_backward(dy, ctx)
            return {"y": y, "dx": dx, "dw": dw, "db": db}
        return run

    def conv_shapes(n, c, h, w, f, cg, kh, kw, oh, ow):
        return [(n, c, h, w), (f, cg, kh, kw), (f,), (n, f, oh, ow)]

    def pool(fwd, bwd, k, s, p):
        def run(x, dy):
            y, ctx = fwd(x, k, s, p)
            return {"y": y, "dx": bwd(dy, ctx)}
        return run

    def adaptive(out):
        def run(x, dy):
            y, ctx = F.adaptive_avg_pool2d_forward(x, out)
            return {"y": y, "dx": F.adaptive_avg_pool2d_backward(dy, ctx)}
        return run

    def bn(training):
        def run(x, w, b, rm, rv, dy):
            rv = rv * rv + 0.5  # positive variances
            y, nm, nv, ctx = F.batch_norm_forward(x, w, b, rm, rv, training, 0.1, 1e-5)
            dx, dw, db = F.batch_norm_backward(dy, ctx)
            return {"y": y, "running_mean": nm, "running_var": nv, "dx": dx, "dw": dw, "db": db}
        return run

    def lin(x, w, b, dy):
        y, ctx = F.linear_forward(x, w, b)
        dx, dw, db = F.linear_backward(dy, ctx)
        return {"y": y, "dx": dx, "dw": dw, "db": db}

    def unary(fwd, bwd, saves_output=True):
        def run(x, dy):
            y = fwd(x)
            return {"y": y, "dx": bwd(dy, y if saves_output else x)}
        return run

    def leaky(x, dy):
        return {"y": F.leaky_relu(x, 0.1), "dx": F.leaky_relu_backward(dy, x, 0.1)}

    def dropout(x, u, dy):
        keep = u >= 0.0  # u is standard normal: about half kept
        return {"y": F.dropout(x, 0.5, keep), "dx": F.dropout_backward(dy, 0.5, keep)}

    def cross_entropy(logits, u):
        xp = array_namespace(logits)
        labels = xp.astype(xp.argmax(u, axis=1), xp.int64 if hasattr(xp, "int64") else xp.int32)
        loss, ctx = F.cross_entropy_forward(logits, labels)
        return {"loss": loss, "dlogits": F.cross_entropy_backward(ctx, 1.0)}

    def mse(pred, target):
        loss, ctx = F.mse_forward(pred, target)
        return {"loss": loss, "dpred": F.mse_backward(ctx, 1.0)}

    def im2col_col2im(x):
        col = F.im2col(x, 3, 2, (2, 1), (1, 2), 3, 4)
        return {"col": col, "col2im": F.col2im(col, tuple(x.shape), (2, 1), (1, 2))}

    return [
        ("conv2d", conv_shapes(2, 3, 7, 7, 4, 3, 3, 3, 5, 5), conv()),
        ("conv2d stride=2 padding=1", conv_shapes(2, 3, 8, 8, 4, 3, 3, 3, 4, 4), conv(2, 1)),
        ("conv2d dilation=2 padding=same", conv_shapes(2, 2, 9, 9, 3, 2, 3, 3, 9, 9), conv(1, "same", 2)),
        ("conv2d groups=2 kernel=(3,2)", conv_shapes(2, 4, 6, 7, 6, 2, 3, 2, 4, 6), conv(groups=2)),
        ("conv2d 1x1", conv_shapes(2, 5, 4, 4, 3, 5, 1, 1, 4, 4), conv()),
        ("im2col/col2im", [(2, 3, 7, 7)], im2col_col2im),
        ("max_pool2d k2", [(2, 3, 8, 8), (2, 3, 4, 4)], pool(F.max_pool2d_forward, F.max_pool2d_backward, 2, 2, 0)),
        ("max_pool2d k3 s2 p1", [(2, 3, 9, 9), (2, 3, 5, 5)],
         pool(F.max_pool2d_forward, F.max_pool2d_backward, 3, 2, 1)),
        ("avg_pool2d k3 s2 p1", [(2, 3, 9, 9), (2, 3, 5, 5)],
         pool(F.avg_pool2d_forward, F.avg_pool2d_backward, 3, 2, 1)),
        ("adaptive_avg_pool2d 1", [(2, 3, 5, 6), (2, 3, 1, 1)], adaptive(1)),
        ("adaptive_avg_pool2d (2,3)", [(2, 3, 7, 8), (2, 3, 2, 3)], adaptive((2, 3))),
        ("batch_norm 4-D train", [(4, 3, 5, 5), (3,), (3,), (3,), (3,), (4, 3, 5, 5)], bn(True)),
        ("batch_norm 2-D train", [(6, 5), (5,), (5,), (5,), (5,), (6, 5)], bn(True)),
        ("batch_norm 4-D eval", [(4, 3, 5, 5), (3,), (3,), (3,), (3,), (4, 3, 5, 5)], bn(False)),
        ("linear", [(3, 6), (4, 6), (4,), (3, 4)], lin),
        ("relu", [(2, 3, 4, 4)] * 2, unary(F.relu, F.relu_backward)),
        ("leaky_relu", [(2, 3, 4, 4)] * 2, leaky),
        ("sigmoid", [(2, 3, 4, 4)] * 2, unary(F.sigmoid, F.sigmoid_backward)),
        ("tanh", [(2, 3, 4, 4)] * 2, unary(F.tanh, F.tanh_backward)),
        ("softmax", [(3, 7)] * 2, unary(F.softmax, F.softmax_backward)),
        ("log_softmax", [(3, 7)] * 2, unary(F.log_softmax, F.log_softmax_backward)),
        ("dropout", [(2, 3, 4, 4)] * 3, dropout),
        ("cross_entropy", [(5, 7), (5, 7)], cross_entropy),
        ("mse", [(4, 3), (4, 3)], mse),
        ("flatten", [(2, 3, 4, 4)], lambda x: {"y": F.flatten(x)}),
    ]


def compare_ops(backends: Sequence[str] = ("numpy", "array_api_strict"), dtype: str = "float64",
                seed: int = 0, rtol: float | None = None) -> ParityReport:
    """Every functional op's forward and backward on the same host inputs, on two backends."""
    tol = _tolerance(dtype, rtol)
    ba, bb = _pair_of_backends(backends, dtype)
    report = ParityReport((ba.spec, bb.spec), dtype, tol, "every functional op, forward and backward")
    rng = np.random.default_rng(seed)
    for name, shapes, run in _op_cases():
        host = [rng.standard_normal(s) for s in shapes]
        results = []
        for b in (ba, bb):
            with b.activate():
                results.append(run(*[b.asarray(h) for h in host]))
        for key in results[0]:
            report.add(results[0][key], results[1][key], "op", f"{name} {key}")
    return report
