"""``xpcnn count-ops``: array operations and host synchronisations in one training step (library: xpcnn.tools.opcount).

    xpcnn count-ops --models lenet,vgg-small --batch-sizes 32,128 --plan gpu --json counts.json

Counted on array_api_strict, on the GPU's plan by default (the code path CuPy runs): the launch budget of a step.
"""
from __future__ import annotations

import json
import sys

HELP = "count the array operations and host synchronisations of one training step per model and batch size"


def add_arguments(parser) -> None:
    from ..models import MODEL_INPUTS

    parser.add_argument("--models", default=",".join(MODEL_INPUTS),
                        help=f"comma-separated named models (default {','.join(MODEL_INPUTS)})")
    parser.add_argument("--batch-sizes", default="32,128", help="comma-separated batch sizes (default 32,128)")
    parser.add_argument("--plan", default="gpu", choices=("gpu", "cpu"),
                        help="the plan counted (xpcnn.config.set_plan; default gpu: what CuPy runs)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"), help="dtype (default float32)")
    parser.add_argument("--by-name", type=int, default=0, metavar="N",
                        help="also list the N most frequent operations of each step")
    parser.add_argument("--json", metavar="FILE", default=None, help="write the counts as JSON")


def run(args) -> int:
    from ._common import CLIError
    from ..tools.opcount import count_step, format_counts
    from ..models import MODEL_INPUTS

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in models if m not in MODEL_INPUTS]
    if bad or not models:
        raise CLIError(f"--models: unknown model(s) {bad}; valid: {', '.join(MODEL_INPUTS)}")
    try:
        sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    except ValueError:
        raise CLIError(f"--batch-sizes takes comma-separated integers, got {args.batch_sizes!r}") from None
    if not sizes or min(sizes) < 1:
        raise CLIError(f"--batch-sizes must be positive integers, got {args.batch_sizes!r}")
    try:
        import array_api_strict  # noqa: F401
    except ImportError:
        raise CLIError("count-ops counts on array_api_strict: pip install array-api-strict") from None
    rows = []
    for m in models:
        for b in sizes:
            rows.append(count_step(m, b, dtype=args.dtype, plan=args.plan))
            print(f"counted {m} at batch {b}", file=sys.stderr, flush=True)
    print(f"one training step (zero_grad, forward, cross-entropy, backward, SGD momentum), {args.plan} plan, "
          f"array_api_strict, {args.dtype}")
    print(format_counts(rows))
    for r in rows if args.by_name else []:
        top = sorted(r["by_name"].items(), key=lambda kv: -kv[1])[:args.by_name]
        print(f"{r['model']} batch {r['batch_size']}: " + ", ".join(f"{k} {v}" for k, v in top))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"schema": "xpcnn-count-ops/1", "plan": args.plan, "dtype": args.dtype, "results": rows}, f,
                      indent=2)
        print(f"wrote {args.json}")
    return 0
