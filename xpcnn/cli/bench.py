"""``xpcnn bench``: forward and training-step speed per backend, model and batch size (library: xpcnn.tools.bench).

    xpcnn bench --backends numpy,cupy --models lenet,vgg-small --batch-sizes 1,32,128,512 \\
                --compare torch --threads 2 --repeats 5 --json bench.json --plot bench.png

Unavailable backends (CuPy without a GPU) are skipped with a one-line message.
"""
from __future__ import annotations

import json
import shlex
import sys
from ._types import non_negative, positive, seed

HELP = "benchmark forward and training-step speed per backend, model and batch size (optionally vs PyTorch)"


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def add_arguments(parser) -> None:
    from ..models import MODEL_INPUTS

    parser.add_argument("--backends", default="numpy,cupy",
                        help="comma-separated backends (default numpy,cupy; unavailable ones are skipped)")
    parser.add_argument("--models", default="lenet,vgg-small",
                        help=f"comma-separated named models from {', '.join(MODEL_INPUTS)} (default lenet,vgg-small)")
    parser.add_argument("--batch-sizes", default="1,32,128,512", help="comma-separated batch sizes (default 1,32,128,512)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"), help="compute dtype (default float32)")
    parser.add_argument("--compare", default=None, choices=("torch",),
                        help="also time the same architecture in PyTorch (CPU, and CUDA for GPU backends), interleaved")
    parser.add_argument("--threads", type=positive, default=None,
                        help="BLAS threads for NumPy (threadpoolctl) and torch.set_num_threads (default: as is)")
    parser.add_argument("--repeats", type=positive, default=5,
                        help="timed runs per measurement; medians reported (default 5)")
    parser.add_argument("--warmup", type=non_negative, default=1, help="untimed runs before timing (default 1)")
    parser.add_argument("--no-layers", action="store_true", help="skip the per-layer breakdown")
    parser.add_argument("--layers-model", default=None, help="model of the per-layer breakdown (default: the last model)")
    parser.add_argument("--layers-batch", type=positive, default=None,
                        help="batch size of the per-layer breakdown (default: the largest given batch size <= 32)")
    parser.add_argument("--seed", type=seed, default=0, help="seed of the weights and the data (default 0)")
    parser.add_argument("--json", metavar="FILE", default=None, help="write the full report (machine info included) as JSON")
    parser.add_argument("--plot", metavar="FILE", default=None, help="write a PNG of training images/s vs batch size")


def _command_line(args) -> str:
    """The options in effect, as a command line that reproduces the run."""
    parts = ["xpcnn", "bench", "--backends", args.backends, "--models", args.models, "--batch-sizes", args.batch_sizes,
             "--dtype", args.dtype, "--repeats", str(args.repeats), "--warmup", str(args.warmup)]
    if args.compare:
        parts += ["--compare", args.compare]
    if args.threads is not None:
        parts += ["--threads", str(args.threads)]
    if args.no_layers:
        parts.append("--no-layers")
    if args.layers_model:
        parts += ["--layers-model", args.layers_model]
    if args.layers_batch:
        parts += ["--layers-batch", str(args.layers_batch)]
    return " ".join(shlex.quote(p) for p in parts)


def run(args) -> int:
    from ..tools.bench import format_report, plot_report, run_benchmark
    from ._common import CLIError
    from ..files import atomic_write, check_output

    check_output(args.json)  # a bad output path is refused before the benchmark, not after it
    check_output(args.plot)

    try:
        batch_sizes = [int(b) for b in _csv(args.batch_sizes)]
    except ValueError:
        raise CLIError(f"--batch-sizes takes comma-separated integers, got {args.batch_sizes!r}") from None
    models = _csv(args.models)
    if args.layers_model and args.layers_model not in models:
        raise CLIError(f"--layers-model {args.layers_model!r} must be one of --models ({', '.join(models)})")
    report = run_benchmark(
        backends=_csv(args.backends), models=models, batch_sizes=batch_sizes, dtype=args.dtype,
        repeats=args.repeats, warmup=args.warmup, compare_torch=args.compare == "torch", threads=args.threads,
        layers=not args.no_layers, layers_model=args.layers_model, layers_batch=args.layers_batch, seed=args.seed,
        log=lambda msg: print(msg, file=sys.stderr, flush=True))
    report["command"] = _command_line(args)
    print(format_report(report))
    if args.json:
        atomic_write(args.json, json.dumps(report, indent=2).encode())
        print(f"wrote {args.json}")
    if args.plot:
        try:
            plot_report(report, args.plot)
            print(f"wrote {args.plot}")
        except ImportError as e:
            print(f"xpcnn bench: {e}; the table and JSON are complete without it", file=sys.stderr)
    if not report["results"]:
        print("xpcnn bench: no backend could run (see the skipped lines above)", file=sys.stderr)
        return 2
    return 0
