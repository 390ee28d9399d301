"""What a benchmark's figures were measured on: CPUs, BLAS and its threads, library versions, GPUs."""
from __future__ import annotations

import os
import platform
from typing import Any

import numpy as np

from ... import threads


def machine_info() -> dict[str, Any]:
    """What the figures were measured on: CPUs, threads, versions, GPU name where any."""
    from ... import __version__

    info: dict[str, Any] = {
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "python": platform.python_version(), "xpcnn": __version__,
        "numpy": np.__version__, "blas_threads": threads.blas_threads(unknown=None),
    }
    try:
        info["cpu_affinity"] = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        pass
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        if names:
            info["cpu_model"] = names[0]
    except OSError:  # pragma: no cover
        pass
    try:
        import array_api_compat
        info["array_api_compat"] = array_api_compat.__version__
    except Exception:  # pragma: no cover
        pass
    try:
        from threadpoolctl import threadpool_info
        info["blas"] = [{k: p.get(k) for k in ("internal_api", "version", "num_threads", "threading_layer")}
                        for p in threadpool_info() if p.get("user_api") == "blas"]
    except ImportError:
        info["blas"] = "unknown (threadpoolctl not installed)"
    try:
        import cupy as cp
        info["cupy"] = cp.__version__
        try:
            n = cp.cuda.runtime.getDeviceCount()
            info["cuda_runtime"] = cp.cuda.runtime.runtimeGetVersion()
            info["cuda_driver"] = cp.cuda.runtime.driverGetVersion()
            info["gpus"] = [cp.cuda.runtime.getDeviceProperties(i)["name"].decode() for i in range(n)]
        except Exception as e:  # CuPy without a usable device
            info["gpus"] = f"none usable ({e})"
    except ImportError:
        info["cupy"] = None
    try:
        import torch
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["torch_cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        info["torch"] = None
    return info
