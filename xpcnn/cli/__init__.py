"""The ``xpcnn`` command: ``train``, ``evaluate``, ``predict``, ``bench``, ``parity``, ``info``, ``count-ops``.

Each sub-command lives in ``xpcnn/cli/<name>.py`` (``-`` as ``_``) with ``HELP``,
``add_arguments(parser)`` and ``run(args) -> int``. Expected failures (bad
options, malformed or missing files, unavailable backends: ``xpcnn.errors.InputError``
and ``OSError``) print one line and exit 2; anything else is a bug and keeps its
traceback. ``--debug`` shows the traceback of expected failures too.
"""
from __future__ import annotations

import argparse
import importlib
import signal
import sys

from ..errors import InputError
from ._common import CLIError

__all__ = ["CLIError", "COMMANDS", "build_parser", "entry", "main"]

COMMANDS = ("train", "evaluate", "predict", "bench", "parity", "info", "count-ops")


class _Parser(argparse.ArgumentParser):
    """argparse, with a bad command line reported in one line (exit 2) like every other input error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = _Parser(prog="xpcnn", description="Array-API CNNs on NumPy (CPU) or CuPy (GPU).")
    parser.add_argument("--version", action="version", version=f"xpcnn {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of any error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        mod = importlib.import_module(f"xpcnn.cli.{name.replace('-', '_')}")
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args._argv = list(sys.argv[1:] if argv is None else argv)  # `xpcnn train --workers N` starts it again
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("xpcnn: interrupted", file=sys.stderr)
        return 130
    except (InputError, OSError) as e:
        if args.debug:
            raise
        print(f"xpcnn {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2


def _one_line(e: BaseException) -> str:
    """The message of ``e``, with the file an ``OSError`` names."""
    if isinstance(e, OSError) and e.strerror and e.filename is not None:
        return f"{e.filename}: {e.strerror}"
    return str(e)


def entry() -> None:
    """The ``xpcnn`` console script (and ``python -m xpcnn``). Once Ctrl-C has ended a command, further Ctrl-Cs
    are ignored while the interpreter exits, so a quick second one cannot turn exit status 130 into a death by
    SIGINT or a traceback from shutdown."""
    code = main()
    if code == 130:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(code)

