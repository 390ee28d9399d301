"""Parity across backends (``xpcnn parity``): the comparison (:mod:`.compare`), its measure and report
(:mod:`.report`), and the tables of cases it runs (:mod:`.cases`)."""
from .cases import layer_cases, op_cases
from .compare import build_pair, compare_layers, compare_models, compare_ops, use_host_dropout
from .report import TOLERANCES, Diff, ParityReport, difference

__all__ = ["TOLERANCES", "Diff", "ParityReport", "build_pair", "compare_layers", "compare_models", "compare_ops",
           "difference", "layer_cases", "op_cases", "use_host_dropout"]
