"""The CPU-vs-GPU benchmark behind ``xpcnn bench``.

For each backend, model and batch size: the median time of an inference forward pass (eval mode) and of a
training step (forward + cross-entropy + backward + SGD with momentum), images per second, and the peak memory
where the backend can measure it (:mod:`.runners`). Optionally the same architecture in PyTorch (via
:func:`xpcnn.tools.torch_compat.to_torch`), timed interleaved with xpcnn so both see the same machine state
(:mod:`.timing`), and a per-layer breakdown of one configuration (:mod:`.layers`).

- :mod:`.machine`: what the figures were measured on.
- :mod:`.timing`: the one interleaved timer (also used by ``benchmarks/bench_cpu.py``).
- :mod:`.runners`: one model on one framework with its batch on the device, ready to time.
- :mod:`.layers`: the time of each layer inside the real training step.
- :mod:`.benchmark`: the whole run, as a JSON-able report.
- :mod:`.report`: the terminal tables and the plot.
"""
from .benchmark import RESULT_KEYS, SCHEMA, run_benchmark
from .layers import layer_breakdown
from .machine import machine_info
from .report import format_report, plot_report
from .runners import TorchRunner, XpcnnRunner
from .timing import SETTLE_S, time_interleaved

__all__ = ["RESULT_KEYS", "SCHEMA", "SETTLE_S", "TorchRunner", "XpcnnRunner", "format_report", "layer_breakdown",
           "machine_info", "plot_report", "run_benchmark", "time_interleaved"]
