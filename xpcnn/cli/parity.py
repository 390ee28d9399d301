"""``xpcnn parity``: run one model on two backends from the same seed and compare every layer.

Prints, per layer, the maximum absolute and relative difference of the forward
outputs, of the input gradients in backward and of the parameter gradients,
then of ``--steps`` further training steps. Exit status 0 when everything is
within tolerance, 1 when something is not, 2 when a backend is unavailable or
an option is wrong. The tool to run on your own machine to trust your GPU:

    xpcnn parity --backends numpy,cupy --model vgg-small --dtype float32 --steps 50
"""
from __future__ import annotations

import sys

from ._types import integer, non_negative, real, seed

HELP = "compare two backends (e.g. numpy,cupy) layer by layer on the same model, seed and data"


def add_arguments(parser) -> None:
    from ..models import MODEL_INPUTS
    from ..tools.parity import TOLERANCES

    parser.add_argument("--backends", default="numpy,cupy",
                        help="two backends, comma-separated, the first is the reference (default: numpy,cupy; "
                             "without a GPU try numpy,array_api_strict:device1)")
    parser.add_argument("--model", default="lenet", choices=sorted(MODEL_INPUTS),
                        help="named model (default: lenet)")
    parser.add_argument("--dtype", default="float64", choices=sorted(TOLERANCES),
                        help="compute dtype (default float64, the strictest check); tolerances: "
                             + ", ".join(f"{k} {v:g}" for k, v in TOLERANCES.items()))
    parser.add_argument("--steps", type=non_negative, default=0,
                        help="further full training steps to compare after the layer-by-layer one (default 0)")
    parser.add_argument("--batch-size", type=integer(2), default=4, help="batch size (default 4)")
    parser.add_argument("--seed", type=seed, default=0, help="seed of the weights and the data (default 0)")
    parser.add_argument("--rtol", type=real(0.0), default=None,
                        help="override the tolerance on the maximum relative difference")
    parser.add_argument("--ops", action="store_true",
                        help="also compare every functional op and every layer type on its own")
    parser.add_argument("--json", metavar="FILE", default=None, help="also write the comparison as JSON")
    parser.add_argument("--quiet", action="store_true", help="print only failures and the verdict")


def run(args) -> int:
    import json

    from ._common import CLIError
    from ..files import atomic_write, check_output
    from ..tools.parity import compare_layers, compare_models, compare_ops

    check_output(args.json)

    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if len(backends) != 2:
        raise CLIError(f"--backends takes exactly two backends, e.g. numpy,cupy; got {args.backends!r}")
    from ..backend import Backend
    for name in backends:
        try:
            Backend(name, dtype=args.dtype)
        except (ImportError, RuntimeError) as e:
            raise CLIError(f"{e}. Without a GPU, compare NumPy with another backend instead: "
                           f"xpcnn parity --backends numpy,array_api_strict:device1") from None
    reports = []
    if args.ops:
        reports.append(compare_ops(backends, args.dtype, args.seed, args.rtol))
        reports.append(compare_layers(backends, args.dtype, args.seed, args.rtol))
    reports.append(compare_models(backends, args.model, args.dtype, args.batch_size, args.steps, args.seed,
                                  rtol=args.rtol))
    for r in reports:
        text = r.format()
        if args.quiet:
            lines = text.splitlines()
            text = "\n".join([lines[0]] + [ln for ln in lines[2:-1] if ln.endswith("FAIL")] + [lines[-1]])
        print(text)
        print()
    ok = all(r.ok for r in reports)
    if args.json:
        atomic_write(args.json, json.dumps({"ok": ok, "reports": [r.to_dict() for r in reports]}, indent=2).encode())
    print("parity: OK" if ok else "parity: FAILED (differences beyond tolerance above)",
          file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1
