"""The report of ``xpcnn bench`` for people: the terminal tables and a plot of training images/s."""
from __future__ import annotations

import io
import os
from typing import Any

from ...errors import InputValueError
from ...files import atomic_write


def _bytes(n: int | None) -> str:
    if n is None:
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)  # pragma: no cover


def format_report(report: dict[str, Any]) -> str:
    """The terminal tables: results (with xpcnn/torch ratios), then the per-layer breakdowns."""
    cmp = {(c["backend"], c["model"], c["batch_size"]): c for c in report["comparisons"]}
    head = (f"{'framework':<9} {'backend':<24} {'model':<10} {'batch':>5} {'fwd ms':>10} {'train ms':>10} "
            f"{'fwd img/s':>10} {'train img/s':>11} {'peak mem':>10} {'xpcnn/torch':>11}")
    lines = [head, "-" * len(head)]
    for r in report["results"]:
        ratio = ""
        c = cmp.get((r["backend"], r["model"], r["batch_size"]))
        if r["framework"] == "xpcnn" and c:
            ratio = f"{c['train_ratio']:.2f}x"
        lines.append(f"{r['framework']:<9} {r['backend']:<24} {r['model']:<10} {r['batch_size']:>5} "
                     f"{r['forward_ms']:>10.2f} {r['train_step_ms']:>10.2f} {r['forward_images_per_s']:>10.1f} "
                     f"{r['train_images_per_s']:>11.1f} {_bytes(r['peak_memory_bytes']):>10} {ratio:>11}")
    if cmp:
        lines.append("xpcnn/torch: xpcnn train-step time over torch's (1.00x = as fast; 3.00x = 3 times slower)")
    spread = sorted({(r["model"], r["batch_size"], r.get("cpu_parallel")) for r in report["results"]
                     if r.get("cpu_parallel") and r["cpu_parallel"] != "1 thread"})
    if spread:
        lines.append("numpy train steps ran on: " + ", ".join(f"{m} {b}: {p}" for m, b, p in spread))
    methods = sorted({r["peak_memory_method"] for r in report["results"] if r["peak_memory_bytes"] is not None})
    for m in methods:
        lines.append(f"peak mem: {m}")
    for lay in report["layers"]:
        lines.append("")
        lines.append(f"per-layer time, {lay['backend']} {lay['model']} batch {lay['batch_size']} "
                     f"({lay['dtype']}, training mode, medians, synchronised):")
        width = max(len(r["layer"]) for r in lay["rows"])
        lines.append(f"  {'layer':<{width}} {'forward ms':>10} {'backward ms':>11} {'share':>6}")
        for r in lay["rows"]:
            lines.append(f"  {r['layer']:<{width}} {r['forward_ms']:>10.3f} {r['backward_ms']:>11.3f} "
                         f"{100 * r['share']:>5.1f}%")
    for s in report["skipped"]:
        lines.append(f"skipped {s['what']}: {s['reason']}")
    return "\n".join(lines)


def plot_report(report: dict[str, Any], path: str) -> None:
    """A PNG of training images/s against batch size, one line per backend (and torch), one panel per model."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("--plot needs matplotlib, which is not installed (pip install matplotlib)") from e
    models = list(dict.fromkeys(r["model"] for r in report["results"]))
    if not models:
        raise InputValueError("nothing to plot: no benchmark results (were all backends skipped?)")
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4.2), squeeze=False)
    for ax, model in zip(axes[0], models):
        series: dict[str, list[tuple[int, float]]] = {}
        for r in report["results"]:
            if r["model"] == model:
                label = r["backend"] if r["framework"] == "xpcnn" else \
                    f"PyTorch {r['backend']} (timed with {r.get('paired_with', '?')})"
                series.setdefault(label, []).append((r["batch_size"], r["train_images_per_s"]))
        for label, pts in series.items():
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "--o" if "PyTorch" in label else "-o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel("training images / s")
        ax.set_title(f"{model} ({report['config']['dtype']})")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    m = report.get("machine", {})
    fig.suptitle(f"xpcnn bench: {m.get('cpu_model', m.get('processor', ''))}, {report['config'].get('threads')} "
                 f"BLAS threads" + (f", GPU {m['gpus'][0]}" if isinstance(m.get("gpus"), list) and m["gpus"] else ""),
                 fontsize=9)
    fig.tight_layout()
    image = io.BytesIO()
    fig.savefig(image, format=os.path.splitext(path)[1][1:].lower() or "png", dpi=110)
    plt.close(fig)
    atomic_write(path, image.getvalue())
