"""``rnnkern.show_config()``: what this process runs on.

One place that answers a user's "which BLAS, how many threads, is the GPU
usable?" without importing anything heavy: CuPy is looked at only through
the GPU probe (``rnnkern.devices``), torch never.
"""

from __future__ import annotations

import os
import platform

__all__ = ["configuration", "show_config"]


def configuration() -> dict:
    """The facts :func:`show_config` prints, as a dict (for logs and bug reports)."""
    import numba
    import numpy as np
    from threadpoolctl import threadpool_info

    from . import __version__
    from .backends.cuda import planner
    from .backends.numba import blas
    from .backends.numba import planner as cpu_planner
    from .cells import CELLS
    from .devices import cuda_device_count, cuda_unavailable_reason

    np.dot(np.ones((2, 2)), np.ones((2, 2)))        # load NumPy's BLAS, so it is listed
    pools = [{"library": p.get("internal_api"), "threads": p.get("num_threads"),
              "file": os.path.basename(p.get("filepath", ""))} for p in threadpool_info()]
    return {
        "rnnkern": __version__,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} logical CPUs",
        "numpy": np.__version__,
        "numba": f"{numba.__version__}, {numba.config.NUMBA_NUM_THREADS} threads",
        "cpu_kernels_blas": f"{blas.blas_name()} (RNNKERN_BLAS={os.environ.get('RNNKERN_BLAS', 'numpy')}; "
                            f"choices {', '.join(blas.CHOICES)})",
        "thread_pools": pools,
        "cpu_path": f"{cpu_planner.path_choice()} ({cpu_planner.policy()})",
        "cpu_paths": {direction: plan.describe()
                      for direction, plan in cpu_planner.recent_paths().items()},
        "cuda": (f"{cuda_device_count()} device(s)" if cuda_unavailable_reason() is None
                 else f"unavailable: {cuda_unavailable_reason()}"),
        "cuda_path": (f"{planner.path_choice()} (persistent kernels up to batch "
                      f"{planner.PERSISTENT_MAX_BATCH} where W_hh fits on chip, else the step "
                      f"path; force with rnnkern.backends.cuda.planner.use_path or "
                      f"$RNNKERN_CUDA_PATH)"),
        "cuda_plans": {direction: plan.describe()
                       for direction, plan in planner.recent_plans().items()},
        "cells": {name: f"rk.{cell.layer}" + "".join(f" {k}={v!r}" for k, v in
                                                     cell.layer_options.items())
                  for name, cell in CELLS.items()},
    }


def show_config(print_fn=print) -> dict:
    """Print the versions, the BLAS of the CPU kernels, the thread pools, the GPU's state,
    the CUDA path asked for and the path each layer-direction took on the GPU so far.

    Returns
    -------
    dict
        What was printed (:func:`configuration`).
    """
    info = configuration()
    lines = [f"{'rnnkern':18}{info['rnnkern']}"]
    for key in ("python", "machine", "numpy", "numba", "cpu_kernels_blas", "cuda", "cuda_path"):
        lines.append(f"{key:18}{info[key]}")
    for direction, plan in info["cuda_plans"].items():
        lines.append(f"{'cuda plan':18}{direction}: {plan}")
    for pool in info["thread_pools"]:
        lines.append(f"{'thread pool':18}{pool['library']}: {pool['threads']} threads ({pool['file']})")
    lines.append(f"{'cpu_path':18}{info['cpu_path']}")
    for direction, plan in info["cpu_paths"].items():
        lines.append(f"{'cpu path':18}{direction}: {plan}")
    for name, where in info["cells"].items():
        lines.append(f"{'cell ' + name:18}{where}")
    print_fn("\n".join(lines))
    return info
