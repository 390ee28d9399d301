"""``xpcnn info``: version, backends and their devices, BLAS threads."""
from __future__ import annotations

import platform

HELP = "show the version, the installed backends, their devices, the BLAS threads and MPI support"


def add_arguments(parser) -> None:
    pass


def describe() -> list[tuple[str, str]]:
    import numpy as np

    from .. import __version__
    from ..backend import available_backends

    rows = [("xpcnn", __version__), ("python", platform.python_version()), ("numpy", np.__version__)]
    try:
        import array_api_compat
        rows.append(("array-api-compat", array_api_compat.__version__))
    except Exception:  # pragma: no cover
        pass
    for name, status in available_backends().items():
        rows.append((f"backend {name}", status if status == "ok" else f"unavailable: {status}"))
        if status == "ok" and name == "cupy":
            import cupy as cp
            for i in range(cp.cuda.runtime.getDeviceCount()):
                props = cp.cuda.runtime.getDeviceProperties(i)
                rows.append((f"  cuda:{i}", f"{props['name'].decode()} ({props['totalGlobalMem'] / 2**30:.0f} GiB), "
                                            f"CuPy {cp.__version__}, CUDA runtime {cp.cuda.runtime.runtimeGetVersion()}"))
        if status == "ok" and name == "torch":
            import torch
            rows.append(("  torch", f"{torch.__version__}, threads {torch.get_num_threads()}, "
                                    f"cuda {'yes' if torch.cuda.is_available() else 'no'}"))
    try:
        from threadpoolctl import threadpool_info
        for pool in threadpool_info():
            rows.append((f"BLAS {pool.get('internal_api')}", f"{pool.get('num_threads')} threads "
                                                            f"({pool.get('filepath', '').split('/')[-1]})"))
    except ImportError:
        rows.append(("BLAS threads", "unknown (pip install threadpoolctl to see them)"))
    rows.append(("MPI", _mpi()))
    return rows


def _mpi() -> str:
    """Whether ``mpiexec -n N xpcnn train`` / ``--workers N`` can run here (without starting MPI)."""
    from importlib.metadata import PackageNotFoundError, version

    from ..distributed import MPIUnavailable, find_mpiexec

    try:
        where = find_mpiexec()
    except MPIUnavailable as e:
        return f"unavailable: {e}"
    try:
        mpi4py = version("mpi4py")
    except PackageNotFoundError:
        mpi4py = "?"
    return f"mpi4py {mpi4py}, {where} (xpcnn train --workers N)"


def run(args) -> int:
    rows = describe()
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0
