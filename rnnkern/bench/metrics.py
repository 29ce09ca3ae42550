"""Deterministic performance metrics: memory, BLAS calls, FLOPs and launches per pass.

Timings on a shared machine move by 10-30% from run to run; the figures here
do not move at all (or by a few bytes), so a regression gate can compare them
with a committed baseline at a tight tolerance (:mod:`rnnkern.bench.gate`)
and asv can track them as ``track_`` benchmarks
(``asv_bench/benchmarks/metrics.py``).  Both call :func:`measure`.

Every figure is taken on one public layer (``make_layer``: one layer, one
direction) of each registry cell, on :data:`METRIC_SHAPE` in float32, for
one pass: ``inference`` (``layer(x)``, no tape), ``forward``
(``layer.forward(x)``, the tape kept) or ``forward_backward``
(``layer.forward`` then ``layer.backward``).

Backends
--------
``numba``
    NumPy arrays, the Numba backend (``rnnkern.backends.numba``), its
    general driver forced (``planner.use_path("general")``).

    - ``peak_bytes_<pass>``: the high-water mark of traced memory
      (:mod:`tracemalloc`, which NumPy reports every array buffer to) above
      what was allocated before the pass, and ``kept_bytes_forward``: what the
      forward's results (``y``, the state, the tape) still hold after it.
      Deterministic: the same calls allocate the same buffers; the garbage
      collector is held off during the pass.  Memory that Numba's own
      runtime allocates inside compiled code is not traced (the drivers
      allocate none: they write into buffers the backend passes them).
    - ``blas_calls_<pass>`` and ``blas_flops_<pass>`` (``2 m k n`` per
      ``(m, k) @ (k, n)`` product): every GEMM of the pass.  The backend's
      big GEMMs (the input projection, ``dx``, ``dW``) are calls of
      ``rnnkern.kernels.numba.gemm.gemm`` from Python, counted by wrapping
      that function.  The per-step GEMMs happen inside the compiled drivers
      (``drivers.forward_sequence`` / ``backward_sequence``), where no Python
      wrapper can see them; for the count, the drivers' own bytecode
      (``py_func``) runs as Python, with ``gemm`` bound to the counting
      wrapper and the cell's row functions bound to their compiled versions.
      The time loop, its GEMMs and its masks are then exactly the drivers'
      code, so a GEMM added to (or removed from) the loop changes the count;
      ``tests/test_regression_gate.py`` checks that this counting run gives
      the compiled run's results.

``numba-split``
    The same on the split driver (``planner.use_path("split")``): the
    memory figures only.  Its products run on its own register tiles and its
    weight gradients' GEMMs inside the worker threads, where no Python
    wrapper sees them.

``cuda-step-emulated``, ``cuda-persistent-emulated``
    The CUDA backend's orchestration (``rnnkern.backends.cuda.driver``) on
    NumPy arrays, its kernels run by the host emulation
    (``rnnkern.backends.cuda.emulation.EmulatedLauncher``), so these run on
    machines without a GPU; the step path and the persistent path forced
    (``rnnkern.backends.cuda.planner.use_path``).  The host calls a sequence
    costs are the GPU path's speed metric at small batch: O(1) on both paths
    (the step path replays a captured graph of its T steps; O(T) only with
    ``proj_size``, not measured here).

    - ``host_calls_<pass>``: what the host calls per sequence: kernel
      launches, GEMMs and graph replays (``Launcher.counts``);
    - ``kernel_launches_<pass>``: the kernels the device runs per sequence
      (all T steps), launched by the host or replayed in a graph;
    - ``blas_calls_<pass>``, ``blas_flops_<pass>``: the GEMMs the device runs
      (cuBLAS on a GPU), the per-step ones included, and their FLOPs.

    Host memory of the emulation (guard zones, NaN-filled buffers) says
    nothing about a GPU's, so none is recorded here.

First-call time (compilation) is noisy: :func:`first_call_seconds` reports
it, and the gate prints it, but never compares it with anything.
"""

from __future__ import annotations

import contextlib
import gc
import time
import tracemalloc
import types

import numpy as np

from ..cells import CELLS, cell_for
from .shapes import BenchShape
from .workloads import make_layer

__all__ = ["METRIC_SHAPE", "METRIC_DTYPE", "BACKENDS", "METRICS", "metric_names", "measure",
           "measure_all", "first_call_seconds", "GemmCounter"]

#: Small enough for a gate of seconds, large enough that array buffers make
#: nearly all the traced bytes: Python's own small objects (whose free lists
#: make them come and go from call to call) move the figures by < 1 KiB.
METRIC_SHAPE = BenchShape(T=16, B=8, I=32, H=64)
METRIC_DTYPE = "float32"
BACKENDS = ("numba", "numba-split", "cuda-step-emulated", "cuda-persistent-emulated")
PASSES = ("inference", "forward", "forward_backward")

#: The metrics of each backend, in report order.
METRICS = {
    "numba": ("peak_bytes_inference", "peak_bytes_forward", "kept_bytes_forward",
              "peak_bytes_forward_backward",
              "blas_calls_inference", "blas_calls_forward", "blas_calls_forward_backward",
              "blas_flops_inference", "blas_flops_forward", "blas_flops_forward_backward"),
    # the split driver's products run on its own tiles and its BLAS calls inside
    # the workers, where no Python wrapper sees them: memory only
    "numba-split": ("peak_bytes_inference", "peak_bytes_forward", "kept_bytes_forward",
                    "peak_bytes_forward_backward"),
}
_CUDA_METRICS = ("host_calls_inference", "host_calls_forward", "host_calls_forward_backward",
                 "kernel_launches_inference", "kernel_launches_forward",
                 "kernel_launches_forward_backward",
                 "blas_calls_inference", "blas_calls_forward", "blas_calls_forward_backward",
                 "blas_flops_inference", "blas_flops_forward", "blas_flops_forward_backward")
METRICS["cuda-step-emulated"] = METRICS["cuda-persistent-emulated"] = _CUDA_METRICS

#: What each metric counts, for messages and asv's ``unit``.
UNITS = {"peak_bytes": "bytes", "kept_bytes": "bytes", "blas_calls": "calls",
         "host_calls": "calls",
         "blas_flops": "flops", "kernel_launches": "launches"}


def unit_of(metric):
    """The unit of a metric name (``"bytes"``, ``"calls"``, ``"flops"``, ``"launches"``)."""
    for prefix, unit in UNITS.items():
        if metric.startswith(prefix):
            return unit
    raise ValueError(f"metric: expected a name starting with one of {sorted(UNITS)}, "
                     f"got {metric!r}")


def metric_names(cells=None):
    """``["<cell>/<backend>/<metric>", ...]`` for every cell (default: the registry)."""
    return [f"{cell}/{backend}/{metric}" for cell in (cells or CELLS)
            for backend in BACKENDS for metric in METRICS[backend]]


class GemmCounter:
    """Counts GEMMs and their FLOPs: ``wrap(f)`` returns ``f`` that counts its calls.

    The wrapped function's GEMM operands are read from its arguments by
    ``operands(*args) -> (a, b)``; an ``(m, k) @ (k, n)`` product counts
    ``2 m k n`` FLOPs.
    """

    def __init__(self):
        self.calls = 0
        self.flops = 0

    def count(self, a, b):
        m, k = a.shape
        n = b.shape[1]
        self.calls += 1
        self.flops += 2 * m * k * n

    def wrap(self, function, operands):
        def counted(*args, **kwargs):
            self.count(*operands(*args))
            return function(*args, **kwargs)

        counted.__wrapped__ = function
        return counted


@contextlib.contextmanager
def _replaced(target, name, value):
    """``target.name = value`` inside the block, restored after it."""
    old = getattr(target, name)
    setattr(target, name, value)
    try:
        yield
    finally:
        setattr(target, name, old)


def _seeded_input(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((shape.T, shape.B, shape.I)).astype(dtype)
    dy = rng.standard_normal((shape.T, shape.B, shape.H)).astype(dtype)
    return x, dy


def _run_pass(layer, x, dy, name):
    """Run one pass; return what it produced (kept alive by the caller)."""
    if name == "inference":
        return layer(x)
    y, state, tape = layer.forward(x)
    if name == "forward":
        return y, state, tape
    return layer.backward(dy, tape)


def _traced_bytes(layer, x, dy, name):
    """(peak, kept) traced bytes of one pass above the traced bytes before it."""
    gc.collect()
    gc.disable()
    was_tracing = tracemalloc.is_tracing()       # someone else's tracing is left running
    if not was_tracing:
        tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        result = _run_pass(layer, x, dy, name)
        kept, peak = tracemalloc.get_traced_memory()
        del result
    finally:
        if not was_tracing:
            tracemalloc.stop()
        gc.enable()
    return peak - before, kept - before


# ---------------------------------------------------------------------- numba

def _gemm_operands(blas, a, b, out):
    return a, b


def _interpreted_driver(driver, counted_gemm):
    """The driver's bytecode as a Python function, ``gemm`` bound to ``counted_gemm``.

    The row functions it calls (``forward_row`` / ``backward_row``, stubs in
    Python) are bound to the cell's compiled rows, picked as the compiled
    driver picks them (``drivers._rows_of``).
    """
    from rnnkern.kernels.numba import drivers

    def row_caller(which):
        def call(rows, *args):
            row = drivers._rows_of(drivers.CellRowsType(rows.name), which)
            return row(*args)
        return call

    namespace = dict(driver.py_func.__globals__, gemm=counted_gemm,
                     forward_row=row_caller("forward"), backward_row=row_caller("backward"))
    return types.FunctionType(driver.py_func.__code__, namespace, driver.py_func.__name__,
                              driver.py_func.__defaults__, driver.py_func.__closure__)


@contextlib.contextmanager
def counting_numba_gemms(counter):
    """Within the block, every GEMM of the Numba backend is counted by ``counter``.

    The backend's own calls of ``gemm.gemm`` go through a counting wrapper;
    the drivers run interpreted (see the module docstring), so the GEMMs of
    their time loops are counted too.
    """
    from rnnkern.kernels.numba import drivers, gemm

    counted_gemm = counter.wrap(gemm.gemm, _gemm_operands)
    # every compiled driver that calls gemm: forward_sequence, backward_sequence, and
    # any driver added later, so that a new one cannot hide its GEMMs from the count
    calling_gemm = [name for name, value in vars(drivers).items()
                    if hasattr(value, "py_func") and "gemm" in value.py_func.__code__.co_names]
    with contextlib.ExitStack() as stack:
        stack.enter_context(_replaced(gemm, "gemm", counted_gemm))
        for name in calling_gemm:
            stack.enter_context(_replaced(drivers, name,
                                          _interpreted_driver(getattr(drivers, name),
                                                              counted_gemm)))
        yield counter


def _numba_metrics(cell, shape, dtype, path):
    """The metrics of the Numba backend with its CPU driver forced to ``path``
    (``"general"`` for ``numba``, ``"split"`` for ``numba-split``)."""
    from ..backends.numba.planner import use_path

    layer = make_layer(cell, shape, dtype, "cpu", seed=0)
    x, dy = _seeded_input(shape, dtype)
    out = {}
    with use_path(path):
        _run_pass(layer, x, dy, "forward_backward")      # compile / load the kernels
        _run_pass(layer, x, dy, "forward_backward")      # fill every lazy cache
        _run_pass(layer, x, dy, "inference")             # and the inference workspaces
        for name in PASSES:
            peak, kept = _traced_bytes(layer, x, dy, name)
            out[f"peak_bytes_{name}"] = peak
            if name == "forward":
                out["kept_bytes_forward"] = kept
            if path == "general":
                counter = GemmCounter()
                with counting_numba_gemms(counter):
                    _run_pass(layer, x, dy, name)
                out[f"blas_calls_{name}"] = counter.calls
                out[f"blas_flops_{name}"] = counter.flops
    return out


# ---------------------------------------------------------------------- cuda

@contextlib.contextmanager
def emulated_cuda_layers(backend):
    """Within the block, layers given NumPy arrays run on ``backend`` (the CUDA orchestration).

    As ``tests/test_cuda_emulation.py`` does: the layers' ``backend_for`` is
    pointed at the emulated backend.
    """
    from .. import recurrent

    with _replaced(recurrent, "backend_for", lambda xp: backend):
        yield


def _emulated_cuda_metrics(cell, shape, dtype, path):
    from ..backends.cuda.driver import backend_with
    from ..backends.cuda.emulation import EmulatedLauncher
    from ..backends.cuda.planner import use_path

    launcher = EmulatedLauncher()
    layer = make_layer(cell, shape, dtype, "cpu", seed=0)
    x, dy = _seeded_input(shape, dtype)
    out = {}
    with emulated_cuda_layers(backend_with(launcher)), use_path(path):
        _run_pass(layer, x, dy, "forward_backward")      # builds / loads the host library
        for name in PASSES:
            launcher.counts.clear()
            _run_pass(layer, x, dy, name)
            counts = launcher.counts
            out[f"host_calls_{name}"] = counts["kernels"] + counts["gemms"] + counts["graphs"]
            out[f"kernel_launches_{name}"] = counts["kernels"] + counts["graph_kernels"]
            out[f"blas_calls_{name}"] = counts["gemms"] + counts["graph_gemms"]
            out[f"blas_flops_{name}"] = counts["gemm_flops"]
    return out


_MEASURES = {"numba": lambda *args: _numba_metrics(*args, "general"),
             "numba-split": lambda *args: _numba_metrics(*args, "split"),
             "cuda-step-emulated": lambda *args: _emulated_cuda_metrics(*args, "step"),
             "cuda-persistent-emulated": lambda *args: _emulated_cuda_metrics(*args,
                                                                              "persistent")}


def measure(cell, backend, shape=METRIC_SHAPE, dtype=METRIC_DTYPE):
    """The deterministic metrics of one cell on one backend.

    Parameters
    ----------
    cell : str
        A registry name (:data:`rnnkern.cells.CELLS`).
    backend : str
        One of :data:`BACKENDS`.
    shape : BenchShape, optional
    dtype : str, optional

    Returns
    -------
    dict
        ``metric -> int``, the metrics of :data:`METRICS` ``[backend]``.

    Raises
    ------
    ValueError
        If ``cell`` or ``backend`` is unknown.
    """
    cell_for(cell)
    if backend not in _MEASURES:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    return _MEASURES[backend](cell, shape, dtype)


def measure_all(cells=None, shape=METRIC_SHAPE, dtype=METRIC_DTYPE):
    """``{"<cell>/<backend>/<metric>": int}`` for every cell and backend."""
    out = {}
    for cell in cells or CELLS:
        for backend in BACKENDS:
            for metric, value in measure(cell, backend, shape, dtype).items():
                out[f"{cell}/{backend}/{metric}"] = int(value)
    return out


def first_call_seconds(cell, shape=METRIC_SHAPE, dtype=METRIC_DTYPE):
    """Seconds of the first forward+backward of a new layer in this process.

    Includes compiling (or loading from the on-disk cache) the cell's Numba
    kernels if no earlier call did: noisy, reported, never gated.
    """
    layer = make_layer(cell, shape, dtype, "cpu", seed=0)
    x, dy = _seeded_input(shape, dtype)
    start = time.perf_counter()
    _run_pass(layer, x, dy, "forward_backward")
    return time.perf_counter() - start
