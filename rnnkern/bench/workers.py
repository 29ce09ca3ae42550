"""The worker processes of ``python -m rnnkern bench``: their protocol and timing.

``python -m rnnkern bench`` (:mod:`rnnkern.bench.cli`) never times anything in
its own process.  It starts ``python -m rnnkern.bench.workers``, writes one
JSON request on its stdin, and reads one JSON line back from its stdout.  A
process serves one library only, so no library's thread pool (BLAS threads
that keep spinning after a call, torch's OpenMP team) can steal cores from
another's timed calls.  Requests::

    {"task": "time", "library": "rnnkern" | "torch" | "reference",
     "device": "cpu" | "cuda", "dtype": ..., "threads": N, "repeats": N,
     "seed": N, "cuda_path": "auto" | "persistent" | "step",
     "cases": [{"cell": "lstm", "shape": [T, B, I, H]}, ...]}
        -> {"info": {...}, "cases": [{"cell", "shape", "warmup_seconds",
            "seconds": {"forward": [s, ...], "forward_backward": [s, ...], ...},
            "other_cpu_share", "checksums": {...},
            "cuda_paths": ["<direction>: <plan>", ...]}]}    (rnnkern on cuda)
    {"task": "gemm", "device", "dtype", "repeats", "gemms": [[m, k, n, calls], ...]}
        -> {"info": {...}, "gemms": [{"m", "k", "n", "calls", "seconds": [...],
            "other_cpu_share"}]}
    {"task": "first_call", "device", "dtype", "cell", "shape"}
        -> {"seconds": s}      the first forward+backward in this process
    {"task": "peak_memory", "library", "device": "cpu", "dtype", "cell", "shape",
     "threads", "seed"}
        -> {"bytes": N}        what one forward+backward adds to the resident memory
                               at its peak (see ``_peak_memory``)
    {"task": "device", "device"}
        -> {"info": {...}}     or {"unavailable": "why"}

A library that cannot run here (torch not installed, no GPU) answers
``{"unavailable": "why"}`` and exits 0; anything else that goes wrong is an
exception, a traceback on stderr and a non-zero exit.  The client side is
:func:`run_in_fresh_process`.  What a ``time`` request times are the classes
of :mod:`rnnkern.bench.workloads`, the ones the asv benchmarks time too.
"""

from __future__ import annotations

import dataclasses
import gc
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import astuple

import numpy as np

from ..devices import cuda_unavailable_reason
from .shapes import FIRST_CALL_SHAPE, BenchShape
from .workloads import ReferenceWorkload, RnnkernWorkload, TorchWorkload, synchronize_nothing

__all__ = ["WorkerError", "run_in_fresh_process", "first_call_seconds", "OtherProcessesMeter",
           "main"]

#: What ``python -m`` runs in a worker process: this module.
WORKER_MODULE = "rnnkern.bench.workers"


class WorkerError(RuntimeError):
    """A worker process failed; the message holds the end of its stderr."""


def run_in_fresh_process(request, environment=None):
    """Send ``request`` to a new ``python -m rnnkern.bench.workers``; return its answer.

    Parameters
    ----------
    request : dict
        One of the requests in the module docstring.
    environment : dict, optional
        Variables added to this process's environment for the worker.

    Raises
    ------
    WorkerError
        If the worker exits with an error.
    """
    completed = subprocess.run([sys.executable, "-m", WORKER_MODULE],
                               input=json.dumps(request), capture_output=True, text=True,
                               env=dict(os.environ, **(environment or {})))
    if completed.returncode != 0:
        what = request.get("library", request["task"])
        raise WorkerError(f"the {what} worker failed (exit {completed.returncode}):\n"
                          f"{completed.stderr[-3000:]}")
    lines = [line for line in completed.stdout.splitlines() if line.strip()]
    return json.loads(lines[-1])


def first_call_seconds(cell, dtype, device, cached, environment=None):
    """Seconds of rnnkern's first forward+backward in a fresh process, or None.

    The call is made on :data:`rnnkern.bench.shapes.FIRST_CALL_SHAPE`, so the
    time is mostly compilation.  Numba's and CuPy's on-disk kernel caches
    point at a new empty directory: with ``cached=False`` everything compiles
    (a cold start); with ``cached=True`` a first process fills the cache and a
    second one, the one timed, starts from it.  None if ``device`` is
    unavailable here.
    """
    request = {"task": "first_call", "cell": cell, "dtype": dtype, "device": device,
               "shape": list(astuple(FIRST_CALL_SHAPE))}
    cache = tempfile.mkdtemp(prefix="rnnkern-kernel-cache-")
    try:
        environment = dict(environment or {}, NUMBA_CACHE_DIR=cache, CUPY_CACHE_DIR=cache)
        for _ in range(2 if cached else 1):
            answer = run_in_fresh_process(request, environment)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return answer.get("seconds")


class OtherProcessesMeter:
    """Share of the machine's CPU that other processes used while a block ran.

    ``share`` = (busy CPU seconds of the whole machine, from ``/proc/stat``,
    steal time included, minus this process's own CPU seconds, all threads)
    / (wall seconds x CPUs).  0 means the block had the machine to itself; on
    a 2-core machine, one other busy thread reads 0.5.  None where
    ``/proc/stat`` is missing or the block was too short for its 10 ms ticks.

    >>> with OtherProcessesMeter() as others:
    ...     run()
    >>> others.share
    """

    #: Blocks shorter than this are not judged: /proc/stat counts in ticks.
    SHORTEST_SECONDS = 0.25

    def __enter__(self):
        self.share = None
        self._start = (_machine_busy_seconds(), time.process_time(), time.perf_counter())
        return self

    def __exit__(self, *exception):
        busy, own, wall = (_machine_busy_seconds(), time.process_time(), time.perf_counter())
        busy_start, own_start, wall_start = self._start
        wall -= wall_start
        if busy is not None and busy_start is not None and wall >= self.SHORTEST_SECONDS:
            others = (busy - busy_start) - (own - own_start)
            self.share = max(0.0, others) / (wall * os.cpu_count())
        return False


def _machine_busy_seconds():
    """CPU seconds all processes have used since boot (``/proc/stat``), or None."""
    try:
        with open("/proc/stat") as stat:
            fields = stat.readline().split()
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _timed(call):
    """Seconds taken by ``call()``, with the garbage collector held off as timeit does."""
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        result = call()
        elapsed = time.perf_counter() - start
    finally:
        gc.enable()
    del result
    return elapsed


def _workload(library, cell, shape, dtype, device, seed, threads, single_step=False):
    """``single_step``: rnnkern's and torch's single-step cells; the reference runs its layer
    for the one step (the same arithmetic)."""
    if library == "rnnkern":
        return RnnkernWorkload(cell, shape, dtype, device, seed, single_step)
    if library == "torch":
        return TorchWorkload(cell, shape, dtype, device, seed, threads, single_step)
    if library == "reference":
        return ReferenceWorkload(cell, shape, dtype, device, seed)
    raise ValueError(f"library: expected rnnkern, torch or reference, got {library!r}")


def _library_unavailable_reason(library, device):
    if library == "torch":
        try:
            import torch
        except ImportError:
            return "torch is not installed"
        if device == "cuda" and not torch.cuda.is_available():
            return f"torch {torch.__version__} has no CUDA device"
    if library == "reference" and device != "cpu":
        return "the NumPy reference runs on the CPU only"
    if device == "cuda":
        return cuda_unavailable_reason()
    return None


def _library_info(library, device):
    info = {"python": platform.python_version(), "numpy": np.__version__}
    if library == "torch":
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["torch_mkldnn"] = bool(torch.backends.mkldnn.is_available())
        if device == "cuda":
            info["cudnn"] = torch.backends.cudnn.version()
    if library == "rnnkern":
        import rnnkern
        from ..backends.numba.blas import blas_name

        info["rnnkern"] = rnnkern.__version__
        info["numba"] = importlib.metadata.version("numba")
        info["rnnkern_cpu_blas"] = blas_name()
    info["blas"] = _blas_description()
    return info


def _blas_description():
    """The BLAS libraries loaded in this process, e.g. ``openblas 0.3.31 (2 threads)``."""
    from threadpoolctl import threadpool_info

    return ", ".join(f"{pool['internal_api']} {pool.get('version')} ({pool['num_threads']} threads)"
                     for pool in threadpool_info() if pool["user_api"] == "blas")


def _time_cases(request):
    library, device, dtype = request["library"], request["device"], request["dtype"]
    reason = _library_unavailable_reason(library, device)
    if reason is not None:
        return {"unavailable": reason}
    from ..backends.cuda import planner

    results = []
    for case in request["cases"]:
        shape = BenchShape(*case["shape"])
        with planner.use_path(request.get("cuda_path", "auto")):
            workload = _workload(library, case["cell"], shape, dtype, device,
                                 request["seed"], request["threads"],
                                 request.get("single_step", False))
            warmup_seconds = _timed(workload.forward_backward)
            seconds = {}
            with OtherProcessesMeter() as others:
                for name in workload.PASSES:
                    # Back-to-back calls of one pass, the first untimed, as timeit
                    # and asv time them.  Interleaving passes measured torch's
                    # forward at B=1 two to three times slower after each backward.
                    call = getattr(workload, name)
                    call()
                    seconds[name] = [_timed(call) for _ in range(request["repeats"])]
        direction = f"{case['cell']} {dtype} B={shape.B} H={shape.H}"
        paths = [f"{taken}: {plan.describe()}" for taken, plan in planner.recent_plans().items()
                 if taken.startswith(direction) and library == "rnnkern" and device == "cuda"]
        results.append({"cell": case["cell"], "shape": case["shape"],
                        "warmup_seconds": warmup_seconds, "seconds": seconds,
                        "other_cpu_share": others.share,
                        "checksums": workload.checksums(), "cuda_paths": paths})
        del workload
    return {"info": _library_info(library, device), "cases": results}


def _time_gemms(request):
    """Seconds for ``calls`` back-to-back ``(m, k) @ (k, n)`` products, ``repeats`` times."""
    device, dtype = request["device"], request["dtype"]
    if device == "cuda":
        reason = cuda_unavailable_reason()
        if reason is not None:
            return {"unavailable": reason}
        import cupy as xp

        synchronize = xp.cuda.Device().synchronize
    else:
        xp, synchronize = np, synchronize_nothing
    rng = np.random.default_rng(0)
    results = []
    for m, k, n, calls in request["gemms"]:
        a = xp.asarray(rng.standard_normal((m, k)).astype(dtype))
        b = xp.asarray(rng.standard_normal((k, n)).astype(dtype))
        out = xp.empty((m, n), dtype)

        def products():
            for _ in range(calls):
                xp.matmul(a, b, out=out)
            synchronize()

        products()
        with OtherProcessesMeter() as others:
            seconds = [_timed(products) for _ in range(request["repeats"])]
        results.append({"m": m, "k": k, "n": n, "calls": calls, "seconds": seconds,
                        "other_cpu_share": others.share})
    return {"info": _device_info(device), "gemms": results}


def _first_call(request):
    """Seconds of the first forward+backward in this (fresh) process."""
    device = request["device"]
    reason = cuda_unavailable_reason() if device == "cuda" else None
    if reason is not None:
        return {"unavailable": reason}
    workload = RnnkernWorkload(request["cell"], BenchShape(*request["shape"]),
                               request["dtype"], device)
    return {"seconds": _timed(workload.forward_backward)}


def _peak_memory(request):
    """Bytes by which one forward+backward raises this process's resident memory at its peak.

    Linux's high-water mark of the resident set (``VmHWM``) is reset through
    ``/proc/self/clear_refs`` just before the call, so the figure is
    ``VmHWM`` after the call less ``VmRSS`` before it: everything the call
    touches for the first time (outputs, the tape, gradients, scratch), for
    any library and any allocator.  A warm-up forward+backward of the same
    layer shape at T = 2 comes first (a GEMM, not a GEMV: OpenBLAS allocates its
    buffers at its first GEMM; rnnkern's on both CPU drivers, since T = 2 alone
    would plan the general one), so compilation, the plan and the thread
    pools are not counted; what a library keeps between calls and sized
    there (rnnkern's packed weights, torch's primitive caches) is not counted
    either.  Host memory only: ``device`` must be ``cpu``.
    """
    library, dtype = request["library"], request["dtype"]
    if request["device"] != "cpu":
        return {"unavailable": "peak memory is measured for host (cpu) arrays only"}
    if not os.path.exists("/proc/self/clear_refs"):
        return {"unavailable": "needs Linux's /proc/self/clear_refs"}
    reason = _library_unavailable_reason(library, "cpu")
    if reason is not None:
        return {"unavailable": reason}
    shape = BenchShape(*request["shape"])
    warm_shape = dataclasses.replace(shape, T=min(2, shape.T))
    warm_up = _workload(library, request["cell"], warm_shape, dtype, "cpu", request["seed"],
                        request["threads"])
    if library == "rnnkern":      # both CPU drivers: the plan depends on T (a short one is general)
        from ..backends.numba import planner

        for path in ("split", "general"):
            with planner.use_path(path):
                warm_up.forward_backward()
    else:
        warm_up.forward_backward()
    workload = _workload(library, request["cell"], shape, dtype, "cpu", request["seed"],
                         request["threads"])
    gc.collect()
    before = _status_bytes("VmRSS")
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")                   # VmHWM := VmRSS
    result = workload.forward_backward()
    peak = _status_bytes("VmHWM")
    del result
    return {"bytes": max(0, peak - before)}


def _status_bytes(field):
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``), in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _device_info(device):
    info = {"platform": platform.platform(), "cpu": _cpu_model(),
            "cpu_count": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else os.cpu_count(), "numpy": np.__version__, "blas": _blas_description()}
    if device == "cuda":
        import cupy

        properties = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        info["gpu"] = properties["name"].decode()
        info["cupy"] = cupy.__version__
        info["cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
    return info


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _describe_device(request):
    device = request["device"]
    reason = cuda_unavailable_reason() if device == "cuda" else None
    if reason is not None:
        return {"unavailable": reason}
    return {"info": _device_info(device)}


_TASKS = {"time": _time_cases, "gemm": _time_gemms, "first_call": _first_call,
          "peak_memory": _peak_memory, "device": _describe_device}


def main():
    """Read one JSON request from stdin, print one JSON answer as the last stdout line."""
    request = json.loads(sys.stdin.read())
    answer = _TASKS[request["task"]](request)
    sys.stdout.write("\n" + json.dumps(answer) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
