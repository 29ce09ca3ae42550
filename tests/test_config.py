"""``rnnkern.show_config()``: the BLAS, threads and GPU state, without importing torch."""

import subprocess
import sys

import rnnkern as rk
from rnnkern.backends.numba import blas
from rnnkern.cells import CELLS
from rnnkern.devices import cuda_unavailable_reason


def test_show_config_prints_what_it_returns():
    printed = []
    info = rk.show_config(print_fn=printed.append)
    text = printed[0]
    assert info["cpu_kernels_blas"].startswith(blas.blas_name())
    assert f"cpu_kernels_blas  {info['cpu_kernels_blas']}" in text
    assert set(info["cells"]) == set(CELLS)
    reason = cuda_unavailable_reason()
    assert (reason in info["cuda"]) if reason else info["cuda"].endswith("device(s)")
    assert any(pool["threads"] for pool in info["thread_pools"])


def test_show_config_does_not_import_torch():
    code = ("import sys, rnnkern; rnnkern.show_config(print_fn=lambda text: None); "
            "assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
