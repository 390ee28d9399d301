"""How far apart two backends' results are: the measure, its tolerances, and the report of a comparison.

Everything is compared on the host in float64 after the run, so the comparison
itself never adds a device round trip to the steps being compared.

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
from typing import Any

import numpy as np

from ...backend import to_numpy

#: Largest accepted ``max_rel`` per dtype (see the module docstring for why).
TOLERANCES: dict[str, float] = {"float64": 1e-10, "float32": 1e-4}

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
