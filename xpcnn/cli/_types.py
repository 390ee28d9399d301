"""argparse types that check a number where it is typed: a bad value is one line naming the option, exit 2."""
from __future__ import annotations

import argparse
import math
from typing import Callable

SEED_LIMIT = 2 ** 63  # seeds are drawn into NumPy's 64-bit generators


def integer(minimum: int | None = None, maximum: int | None = None) -> Callable[[str], int]:
    """An ``int`` in ``[minimum, maximum]``."""
    def parse(text) -> int:
        try:
            value = int(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            bounds = f">= {minimum}" if maximum is None else f"in {minimum} .. {maximum}"
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {value}")
        return value
    parse.__name__ = "integer"
    return parse


def real(minimum: float, inclusive: bool = True) -> Callable[[str], float]:
    """A finite ``float`` at least (or, ``inclusive=False``, above) ``minimum``."""
    def parse(text) -> float:
        try:
            value = float(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (math.isfinite(value) and (value >= minimum if inclusive else value > minimum)):
            raise argparse.ArgumentTypeError(f"must be a finite number {'>=' if inclusive else '>'} {minimum:g}, "
                                             f"got {text}")
        return value
    parse.__name__ = "number"
    return parse


positive = integer(1)
non_negative = integer(0)
seed = integer(0, SEED_LIMIT - 1)
