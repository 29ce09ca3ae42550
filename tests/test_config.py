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


def test_show_config_shows_the_cuda_path_and_the_plans_taken():
    from rnnkern.backends.cuda import planner

    limits = planner.DeviceLimits("config test device", multiprocessors=4,
                                  shared_bytes_per_block=64 * 1024)
    with planner.use_path("auto"):
        planner.plan_direction(CELLS["gru"], "float32", 2, 12, projected=False, limits=limits)
        printed = []
        info = rk.show_config(print_fn=printed.append)
    assert info["cuda_path"].startswith("auto")
    direction = "gru float32 B=2 H=12 on config test device"
    assert info["cuda_plans"][direction].startswith("persistent: 4 blocks")
    assert f"cuda plan         {direction}: persistent" in printed[0]
