"""Write docs/performance.md, the current figures, from the benchmark JSON in this folder.

    python benchmarks/performance_page.py           # regenerate the page
    python benchmarks/performance_page.py --check   # exit 1 if the checked-in page is not what the JSON gives

Inputs: ``xpcnn_bench_cpu_2core.json`` (``xpcnn bench --json``), ``bench_mpi_2core.json``
(``benchmarks/bench_mpi.py --json``), ``layers_vs_torch_2core.json`` (``benchmarks/layers_vs_torch.py --json``),
``opcount_gpu_plan.json`` (``xpcnn count-ops --json``) and
``hand_recorded.json`` (figures of runs that write no JSON, each with the dated history entry it comes from,
and the date and machine where a file does not record them). Every figure on the page is read from one of
them; the page says which, and on what machine it ran. Only the standard library: no xpcnn import.
"""
from __future__ import annotations

import argparse
import json
import sys
import textwrap
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
PAGE = HERE.parent / "docs" / "performance.md"
DIARY = "../benchmarks/history/2026-12-02-results-diary.md"
MAX_LINES = 200
WIDTH = 116  # prose lines; tables stay one row a line
MINOR_SHARE = 0.01  # layer kinds with less of a step are named in a line, not given a row


def load(name: str) -> dict:
    return json.loads((HERE / name).read_text())


def num(x: float) -> str:
    """Three significant digits, no exponent: 0.177, 8.30, 14.8, 556."""
    if x >= 100:
        return f"{x:.0f}"
    return f"{x:.{2 - (x >= 10) + (x < 1)}f}"


def para(*parts: str) -> list[str]:
    """One paragraph, wrapped, then a blank line."""
    return textwrap.wrap(" ".join(parts), WIDTH, break_long_words=False, break_on_hyphens=False) + [""]


def table(columns: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)] + [
        "| " + " | ".join(r) + " |" for r in rows] + [""]


def provenance(name: str, recorded: str, machine: str, source: str) -> list[str]:
    return para(f"`benchmarks/{name}`, recorded {recorded}. Machine: {machine}.", f"Source: {source}.")


def bench_cpu_section(bench: dict, files: dict) -> list[str]:
    m, cfg, f = bench["machine"], bench["config"], files["xpcnn_bench_cpu_2core.json"]
    blas = ", ".join(f"{b['internal_api']} {b['version']} ({b['threading_layer']}, {b['num_threads']} threads)"
                     for b in m["blas"])
    machine = (f"{m['cpu_model']}, {m['cpu_count']} CPUs, {m['platform']}; Python {m['python']}, NumPy "
               f"{m['numpy']}, {blas}; PyTorch {m['torch']} ({m['torch_threads']} threads); xpcnn {m['xpcnn']}")
    out = ["## CPU: `xpcnn bench` against PyTorch", ""]
    out += provenance("xpcnn_bench_cpu_2core.json", f["recorded"], machine, f["source"])
    out += para(f"`{bench['command']}`.", f"Train step: {cfg['train_step']}; forward: {cfg['forward']}.",
                f"Timing: {cfg['timing']}.", f"Peak memory: {bench['results'][0]['peak_memory_method']}.", f["note"])
    torch = {(r["model"], r["batch_size"]): r for r in bench["results"] if r["framework"] == "torch"}
    rows = []
    for r in (r for r in bench["results"] if r["framework"] == "xpcnn"):
        t = torch[(r["model"], r["batch_size"])]
        rows.append([r["model"], str(r["batch_size"]), r["cpu_parallel"],
                     f"{num(r['forward_ms'])} / {num(t['forward_ms'])}", f"{r['forward_ms'] / t['forward_ms']:.2f}",
                     f"{num(r['train_step_ms'])} / {num(t['train_step_ms'])}",
                     f"{r['train_step_ms'] / t['train_step_ms']:.2f}", f"{r['train_images_per_s']:.0f}",
                     num(r["peak_memory_bytes"] / 2 ** 20)])
    out += table(["model", "batch", "xpcnn on", "forward ms, xpcnn / torch", "ratio", "train step ms, xpcnn / torch",
                  "ratio", "xpcnn train images/s", "xpcnn peak MiB"], rows)
    for lay in bench["layers"]:
        kinds: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0, 0.0])
        for row in lay["rows"]:  # "3 Conv2d" by its class; the loss and the update as they are named
            k = kinds[row["layer"] if row["index"] is None else row["layer"].split()[-1]]
            k[0] += 1
            k[1] += row["forward_ms"]
            k[2] += row["backward_ms"]
            k[3] += row["share"]
        ranked = sorted(kinds.items(), key=lambda kv: -kv[1][3])
        small = [kind for kind, k in ranked if k[3] < MINOR_SHARE]
        out += para(f"Where a step's time goes ({lay['backend']}, {lay['model']}, batch {lay['batch_size']}, "
                    f"{lay['dtype']}; each layer timed in place, summed by kind; under {100 * MINOR_SHARE:.0f}% each: "
                    + ", ".join(f"{kind} {100 * kinds[kind][3]:.1f}%" for kind in small) + "):")
        out += table(["layer kind", "layers", "forward ms", "backward ms", "share of the step"],
                     [[kind, str(k[0]), num(k[1]), num(k[2]), f"{100 * k[3]:.1f}%"]
                      for kind, k in ranked if kind not in small])
    return out + para("Not run: " + "; ".join(f"{s['what']} ({s['reason'].split(':')[0]})"
                                               for s in bench["skipped"]) + ".")


MPI_CONFIGS = {  # what each interleaved configuration of bench_mpi.py is, for the page
    "shard": "rank 0 alone on its shard",
    "independent": "both ranks at once, no communication",
    "lockstep": "the same between two barriers",
}


def mpi_section(mpi: dict, files: dict, machines: dict) -> list[str]:
    f = files["bench_mpi_2core.json"]
    machine = f"{machines[f['machine']]}; {f['machine_extra']}; the file records nproc = {mpi['nproc']}"
    argv = list(mpi["argv"])
    if "--json" in argv:  # where that run wrote its file, not how it ran
        del argv[argv.index("--json"):argv.index("--json") + 2]
    out = ["## Data-parallel training (MPI ranks) against PyTorch DDP", ""]
    out += provenance("bench_mpi_2core.json", f["recorded"], machine, f["source"])
    torch = {(r["model"], r["ranks"]): r for r in mpi["rows"] if r["framework"] == "torch"}
    xpcnn = [r for r in mpi["rows"] if r["framework"] == "xpcnn"]
    ratios = [f"{r['model']} {r['step_ms'] / torch[(r['model'], r['ranks'])]['step_ms']:.2f}x"
              for r in xpcnn if r["ranks"] > 1 and (r["model"], r["ranks"]) in torch]
    out += para(f"`python {' '.join(argv)}`: global batch 128, float32, one BLAS thread per process, fresh "
                "processes, medians of the rounds' medians. \"allreduce\": the gradient allreduce alone on rank 0 "
                "after a barrier, \"wait\": that barrier; PyTorch's 2 ranks: DDP (gloo). On 2 ranks, xpcnn's step / "
                "DDP's: " + ", ".join(ratios) + ".")
    rows = []
    for r in xpcnn:
        reduce = f"{num(r['allreduce_ms'])} ({100 * r['allreduce_share']:.1f}%)" if "allreduce_ms" in r else ""
        t = torch.get((r["model"], r["ranks"]))
        rows.append([r["model"], str(r["ranks"]), num(r["step_ms"]), ", ".join(num(x) for x in r["rounds_ms"]),
                     f"{r['speedup_vs_1']:.2f}x", reduce, num(r["wait_ms"]) if "wait_ms" in r else "",
                     num(t["step_ms"]) if t else "", f"{t['speedup_vs_1']:.2f}x" if t else ""])
    out += table(["model", "ranks", "xpcnn step ms", "rounds ms", "speed-up", "allreduce ms (share)", "wait ms",
                  "PyTorch step ms", "speed-up"], rows)
    if mpi.get("interleaved"):
        first = mpi["interleaved"][0]
        kinds = [k for k in first["configs"] if k != "one"]
        out += para(f"In one job (`--interleave {first['rounds']} --interleave-reps {first['reps']}`), alternating "
                    f"every {first['reps']} steps: \"one\" rank 0 alone on the global batch; " +
                    "; ".join(f"\"{k}\" {v}" for k, v in MPI_CONFIGS.items()) +
                    "; \"2 ranks\" data-parallel. Speed-up: the rounds' median (range).")
        out += table(["model", "one ms"] + ["2 ranks" if k == "ranks" else k for k in kinds],
                     [[run["model"], num(run["configs"]["one"]["step_ms"])]
                      + [f"{c['speedup_vs_one']:.2f}x ({min(c['speedups']):.2f}-{max(c['speedups']):.2f})"
                         for c in (run["configs"][k] for k in kinds)] for run in mpi["interleaved"]])
    return out + (para(f["note"]) if f.get("note") else [])


def layers_section(lay: dict, files: dict, machines: dict) -> list[str]:
    """The one-process step by layer kind, xpcnn beside PyTorch (``benchmarks/layers_vs_torch.py``)."""
    f = files["layers_vs_torch_2core.json"]
    out = ["## One process, layer by layer, against PyTorch", ""]
    out += provenance("layers_vs_torch_2core.json", f["recorded"], f"{machines[f['machine']]}; {f['machine_extra']}",
                      f["source"])
    out += para(f"`python benchmarks/layers_vs_torch.py --model {lay['model']} --batch {lay['batch']} --reps "
                f"{lay['reps']}`: one training step, float32, 1 thread, xpcnn and PyTorch steps alternating in one "
                "process, each layer timed inside the step; medians, summed by layer kind (ms).")
    kinds: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for key, ms in lay["ms"]["xpcnn"].items():
        if key[:2].isdigit():  # "03 Conv2d F": index, class, pass
            k = kinds[" ".join(key.split()[1:])]
            k[0] += ms
            k[1] += lay["ms"]["torch"][key]
    rows = [[kind, num(x), num(t), f"{x / t:.2f}"] for kind, (x, t) in sorted(kinds.items(), key=lambda kv: -kv[1][0])
            if x + t >= 1.0]
    rows += [[name, num(lay["ms"]["xpcnn"][name]), num(lay["ms"]["torch"][name]),
              f"{lay['ms']['xpcnn'][name] / lay['ms']['torch'][name]:.2f}"] for name in ("optimizer step", "step")]
    out += table(["layers (F forward, B backward)", "xpcnn ms", "torch ms", "ratio"], rows)
    return out + para(f["note"])


def opcount_section(ops: dict, files: dict) -> list[str]:
    f = files["opcount_gpu_plan.json"]
    machine = (f"none: operations are counted, not timed, on {ops['results'][0]['backend']} ({ops['plan']} plan, "
               f"{ops['dtype']}), the same on any machine")
    out = ["## The GPU's launch budget, counted without a GPU (`xpcnn count-ops`)", ""]
    out += provenance("opcount_gpu_plan.json", f["recorded"], machine, f["source"])
    out += para("Array operations (each at least one CuPy call on a GPU), host synchronisations and bytes moved by one "
                "training step: zero_grad, forward, cross-entropy, backward without the input gradient, SGD with "
                "momentum. No GPU timing is in `benchmarks/` yet; `benchmarks/run_gpu.sh` produces one.")
    by_model: dict[str, dict[int, dict]] = defaultdict(dict)
    for r in ops["results"]:
        by_model[r["model"]][r["batch_size"]] = r
    sizes = sorted({r["batch_size"] for r in ops["results"]})
    rows = [[model] + [f"{b[n]['ops']} / {b[n]['syncs']} / {num(b[n]['bytes'] / 1e9)}" for n in sizes]
            for model, b in by_model.items()]
    return out + table(["ops / host syncs / GB"] + [f"batch {n}" for n in sizes], rows)


def hand_section(hand: dict, table_id: str) -> list[str]:
    t = next(t for t in hand["tables"] if t["id"] == table_id)
    out = [f"## {t['title']}", ""]
    out += provenance("hand_recorded.json", t["recorded"], hand["machines"][t["machine"]], t["source"])
    out += para(f"Run: {t['command']}.") + table(t["columns"], t["rows"])
    return out + (para(t["note"]) if t.get("note") else [])


def render() -> str:
    hand = load("hand_recorded.json")
    files = hand["files"]
    lines = ["# Performance: the current figures", "",
             "<!-- Generated by benchmarks/performance_page.py from the JSON in benchmarks/: do not edit; change",
             "     the JSON and rerun it (tests/test_docs.py fails when this page is stale). -->", ""]
    lines += para("Every figure here is read from a JSON file in `benchmarks/`, named in its section with the "
                  "machine it ran on. How each came about, and every earlier figure: [the frozen results diary]("
                  + DIARY + "). The measurements behind single constants: [measurements.md](measurements.md).")
    lines += hand_section(hand, "bench_cpu")
    lines += bench_cpu_section(load("xpcnn_bench_cpu_2core.json"), files)
    lines += mpi_section(load("bench_mpi_2core.json"), files, hand["machines"])
    lines += layers_section(load("layers_vs_torch_2core.json"), files, hand["machines"])
    lines += hand_section(hand, "resnet20_fashion_mnist")
    lines += hand_section(hand, "resnet20_time")
    lines += opcount_section(load("opcount_gpu_plan.json"), files)
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="regenerate docs/performance.md from the benchmark JSON")
    p.add_argument("--check", action="store_true", help="exit 1 if docs/performance.md is stale; write nothing")
    args = p.parse_args(argv)
    text = render()
    if len(text.splitlines()) > MAX_LINES:
        print(f"the page would have {len(text.splitlines())} lines, over {MAX_LINES}", file=sys.stderr)
        return 1
    if args.check:
        if not PAGE.exists() or PAGE.read_text() != text:
            print(f"{PAGE} is stale: run python benchmarks/performance_page.py", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(text)
    print(f"wrote {PAGE} ({len(text.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
