"""Counting array operations and host synchronisations: the launch budget of a step on a GPU.

On a GPU every Array API call is at least one CuPy call (a kernel launch or a view) costing microseconds of host
time, and every conversion of an array to a Python scalar or to the host waits for the device. Both can be
counted without a GPU: :func:`counting` instruments ``array_api_strict`` (its namespace functions and its Array's
methods, operators, ``__setitem__`` and ``.T``/``.mT``) for the length of a ``with`` block and restores it after.

- An *operation* is one call from outside the namespace: a namespace function (``xp.zeros``, ``xp.matmul``), an
  operator or method of an array (``a + b``, ``a[k]``, ``a[k] = v``, ``a += b``, ``a.mT``). Calls the namespace
  makes inside itself are not counted again. Metadata (``shape``, ``dtype``, ``device``, ``ndim``, ``size``) and
  dtype queries (``isdtype``, ``finfo``, ``iinfo``, ``result_type``, ``can_cast``) are not operations.
- A *host synchronisation* is a conversion to a Python scalar (``float``, ``int``, ``bool``, ``complex``,
  ``__index__``) or to host memory (``__array__``, ``__buffer__``, ``__dlpack__``: ``np.asarray``,
  ``np.from_dlpack``, ``to_numpy``).

:func:`count_step` counts one training step of a named model (forward, cross-entropy, backward, SGD with
momentum; after a warm-up step) by section: each layer's forward and backward, the loss, the optimizer.
``xpcnn count-ops`` prints it per model and batch size, with the bytes the non-view operations read and write.
"""
from __future__ import annotations

import collections
import contextlib
import threading
from typing import Any, Iterator

NOT_OPS = frozenset({"isdtype", "finfo", "iinfo", "result_type", "can_cast", "broadcast_shapes",
                     "__array_namespace_info__", "set_array_api_strict_flags", "get_array_api_strict_flags",
                     "reset_array_api_strict_flags"})
SYNC_METHODS = frozenset({"__bool__", "__int__", "__float__", "__complex__", "__index__", "__array__",
                          "__buffer__", "__dlpack__"})
NOT_METHODS = frozenset({"__new__", "__init__", "__repr__", "__str__", "__reduce__", "__hash__", "__iter__",
                         "__array_namespace__", "__dlpack_device__", "__getattribute__", "__setattr__"})
OP_PROPERTIES = ("T", "mT")
# operations that return a view (no memory traffic on a GPU, only host time)
VIEW_OPS = frozenset({"__getitem__", "xp.reshape", "xp.permute_dims", "xp.matrix_transpose", "xp.expand_dims",
                      "xp.squeeze", "xp.broadcast_to", ".T", ".mT"})


def _nbytes(a) -> int:
    shape, dtype = getattr(a, "shape", None), getattr(a, "dtype", None)
    if shape is None or dtype is None or not hasattr(a, "__array_namespace__"):
        return 0
    n = 1
    for d in shape:
        n *= int(d)
    import numpy as np
    try:
        return n * np.dtype(str(dtype).rsplit(".", 1)[-1]).itemsize  # "array_api_strict.float32"
    except TypeError:
        return 0


class OpCounter:
    """Operations and host synchronisations counted so far, in total and by section and by name."""

    def __init__(self) -> None:
        self.ops = 0
        self.syncs = 0
        self.by_section: collections.Counter = collections.Counter()
        self.syncs_by_section: collections.Counter = collections.Counter()
        self.by_name: collections.Counter = collections.Counter()
        self.bytes = 0  # array bytes read and written by the operations that are not views (a traffic estimate)
        self.bytes_by_section: collections.Counter = collections.Counter()
        self.section = "other"
        self._local = threading.local()

    @contextlib.contextmanager
    def in_section(self, name: str) -> Iterator[None]:
        """Count what runs inside the block under ``name``."""
        saved, self.section = self.section, name
        try:
            yield
        finally:
            self.section = saved

    def reset(self) -> None:
        self.ops = self.syncs = self.bytes = 0
        self.bytes_by_section.clear()
        self.by_section.clear()
        self.syncs_by_section.clear()
        self.by_name.clear()

    def _wrap(self, fn, name: str, sync: bool):
        local = self._local

        def counted(*args, **kwargs):
            depth = getattr(local, "depth", 0)
            if depth == 0:
                if sync:
                    self.syncs += 1
                    self.syncs_by_section[self.section] += 1
                else:
                    self.ops += 1
                    self.by_section[self.section] += 1
                self.by_name[name] += 1
            local.depth = depth + 1
            try:
                out = fn(*args, **kwargs)
            finally:
                local.depth = depth
            moved = 0
            if depth == 0 and name == "__setitem__":  # the value read, as many bytes written
                moved = 2 * _nbytes(args[2])
            elif depth == 0 and not sync and name not in VIEW_OPS:
                moved = sum(_nbytes(a) for a in args) + sum(_nbytes(a) for a in kwargs.values())
                moved += sum(_nbytes(a) for a in out) if isinstance(out, tuple) else _nbytes(out)
            self.bytes += moved
            self.bytes_by_section[self.section] += moved
            return out
        counted.__wrapped__ = fn
        return counted


@contextlib.contextmanager
def counting(xp=None) -> Iterator[OpCounter]:
    """Count the operations and host synchronisations on ``array_api_strict`` (the default ``xp``) inside the
    block; the namespace and its Array class are restored on exit."""
    if xp is None:
        import array_api_strict as xp
    counter = OpCounter()
    array_type = type(xp.asarray(0))
    saved_ns, saved_cls = {}, {}
    try:
        for name in xp.__all__:
            fn = getattr(xp, name, None)
            if name in NOT_OPS or not callable(fn) or isinstance(fn, type) or getattr(fn, "__module__", "") is None:
                continue
            if type(fn).__name__ not in ("function", "builtin_function_or_method"):
                continue  # dtypes, Device and the like
            saved_ns[name] = fn
            setattr(xp, name, counter._wrap(fn, f"xp.{name}", False))
        for name, attr in list(vars(array_type).items()):
            if name in OP_PROPERTIES and isinstance(attr, property):
                saved_cls[name] = attr
                setattr(array_type, name, property(counter._wrap(attr.fget, f".{name}", False)))
            elif (name.startswith("__") and name.endswith("__") and name not in NOT_METHODS and callable(attr)
                  and type(attr).__name__ == "function"):
                saved_cls[name] = attr
                setattr(array_type, name, counter._wrap(attr, name, name in SYNC_METHODS))
            elif name == "to_device":
                saved_cls[name] = attr
                setattr(array_type, name, counter._wrap(attr, name, False))
        yield counter
    finally:
        for name, fn in saved_ns.items():
            setattr(xp, name, fn)
        for name, attr in saved_cls.items():
            setattr(array_type, name, attr)


def _sectioned(counter: OpCounter, obj: Any, method: str, section: str) -> None:
    """Make ``obj.method`` count under ``section`` (an instance attribute, removed by :func:`_unsection`)."""
    bound = getattr(obj, method)

    def call(*args, **kwargs):
        with counter.in_section(section):
            return bound(*args, **kwargs)
    setattr(obj, method, call)


def count_step(model_name: str, batch_size: int, dtype: str = "float32", plan: str = "gpu", seed: int = 0) -> dict:
    """Operations and host synchronisations of one training step (zero_grad, forward, cross-entropy, backward
    without the input gradient, SGD with momentum 0.9), after one warm-up step, on array_api_strict under
    ``plan``.
    Returns ``{"ops", "syncs", "bytes", "bytes_by_section", "by_section", "syncs_by_section", "by_name"}``; ``bytes``: the array
    bytes that the operations other than views read and write (arguments plus results; an in-place operation's
    target counted once as argument and once as result; ``a[k] = v`` as twice ``v``): an estimate of the step's
    memory traffic (a scalar value counts 0; broadcast operands count their own size)."""
    import numpy as np

    from .. import config
    from ..backend import get_backend
    from ..layers import CrossEntropyLoss
    from ..models import MODEL_INPUTS, build_model
    from ..optim import SGD

    saved_plan = config.get_plan()
    config.set_plan(plan)
    try:
        b = get_backend("array_api_strict", dtype)
        c, size, classes = MODEL_INPUTS[model_name]
        model = build_model(model_name, c, classes, size, backend=b, seed=seed)
        rng = np.random.default_rng(seed)
        x = b.asarray(rng.standard_normal((batch_size, c, size, size)).astype(dtype))  # on the device already,
        labels = b.asarray(rng.integers(0, classes, batch_size))                       # as a GPU loader would do
        loss_fn = CrossEntropyLoss()
        opt = SGD(model.parameters(), lr=0.01, momentum=0.9)

        def step():
            opt.zero_grad()
            loss = loss_fn(model(x), labels)
            model.backward(loss_fn.backward(), input_grad=False)
            opt.step()
            return loss

        step()  # warm-up: state created, buffers allocated
        with counting(b.xp) as counter:
            for i, layer in enumerate(model.layers):
                kind = type(layer).__name__
                _sectioned(counter, layer, "forward", f"{kind}.forward")
                _sectioned(counter, layer, "backward", f"{kind}.backward")
            _sectioned(counter, loss_fn, "forward", "loss.forward")
            _sectioned(counter, loss_fn, "backward", "loss.backward")
            _sectioned(counter, opt, "step", "optimizer.step")
            _sectioned(counter, opt, "zero_grad", "optimizer.zero_grad")
            try:
                step()
            finally:
                for obj in [*model.layers, loss_fn, opt]:
                    for method in ("forward", "backward", "step", "zero_grad"):
                        vars(obj).pop(method, None)
    finally:
        config.set_plan(saved_plan)
    return {"model": model_name, "batch_size": batch_size, "dtype": dtype, "plan": plan, "backend": "array_api_strict",
            "ops": counter.ops, "syncs": counter.syncs, "bytes": counter.bytes,
            "bytes_by_section": dict(counter.bytes_by_section), "by_section": dict(counter.by_section),
            "syncs_by_section": dict(counter.syncs_by_section), "by_name": dict(counter.by_name)}


def format_counts(rows: list[dict]) -> str:
    """A table of :func:`count_step` results, with the operations per section (summed over layers of a kind)."""
    lines = [f"{'model':<12} {'batch':>5} {'ops':>6} {'syncs':>5} {'MB':>7}  ops by section"]
    for r in rows:
        sections = ", ".join(f"{k} {v}" for k, v in sorted(r["by_section"].items(), key=lambda kv: -kv[1]))
        lines.append(f"{r['model']:<12} {r['batch_size']:>5} {r['ops']:>6} {r['syncs']:>5} {r['bytes'] / 1e6:>7.0f}  "
                     f"{sections}")
        if r["syncs"]:
            lines.append(f"{'':<44}syncs: "
                         + ", ".join(f"{k} {v}" for k, v in r["syncs_by_section"].items()))
    return "\n".join(lines)
