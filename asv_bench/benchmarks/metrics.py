"""Deterministic metrics as asv ``track_`` benchmarks: memory, BLAS calls, FLOPs, launches.

The values come from :func:`rnnkern.bench.metrics.measure` (see that module
for what each counts and how), the function the regression gate
(``python -m rnnkern.bench.gate``) compares with
``asv_bench/baseline_metrics.json``.  They do not depend on machine noise, so
their asv history shows a step exactly at the commit that changed them.

- :class:`NumbaMetrics`: NumPy arrays on the Numba backend's general driver:
  traced peak and kept bytes, BLAS calls and FLOPs per pass.
- :class:`NumbaSplitMetrics`: the same on its split driver: traced peak and
  kept bytes (its products and BLAS calls run inside the workers).
- :class:`EmulatedCudaStepMetrics`, :class:`EmulatedCudaPersistentMetrics`:
  the CUDA backend's orchestration run by the host emulation (no GPU
  needed), on its step path and on its persistent path: kernel launches,
  cuBLAS-side GEMM calls and FLOPs per pass (host calls per sequence: O(T)
  and O(1)).

Parameter: ``cell``, every cell of the registry; shape and dtype are fixed
(``METRIC_SHAPE``, ``METRIC_DTYPE``), so the history of a figure is one line.
"""

from rnnkern.bench import metrics
from rnnkern.bench.shapes import CELLS

_MEASURED = {}


def _measured(cell, backend):
    """``measure(cell, backend)``, once per process for all the track_ methods."""
    if (cell, backend) not in _MEASURED:
        _MEASURED[(cell, backend)] = metrics.measure(cell, backend)
    return _MEASURED[(cell, backend)]


def _track(backend, metric):
    def track(self, cell):
        return _measured(cell, backend)[metric]

    track.__name__ = f"track_{metric}"
    track.__doc__ = f"``{metric}`` of ``rnnkern.bench.metrics.measure(cell, {backend!r})``."
    track.unit = metrics.unit_of(metric)
    return track


class _BackendMetrics:
    """The ``track_`` metrics of ``metrics.METRICS[backend]`` for every cell; subclasses
    name the backend (each gets one ``track_<metric>`` method per metric)."""

    backend = None                              # set by subclasses
    params = [list(CELLS)]
    param_names = ["cell"]
    timeout = 300

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for metric in metrics.METRICS[cls.backend]:
            setattr(cls, f"track_{metric}", _track(cls.backend, metric))

    def setup(self, cell):
        _measured(cell, self.backend)


class NumbaMetrics(_BackendMetrics):
    """Memory, BLAS calls and FLOPs of one layer on the Numba backend's general driver."""

    backend = "numba"


class NumbaSplitMetrics(_BackendMetrics):
    """Memory of one layer on the Numba backend's split driver."""

    backend = "numba-split"


class EmulatedCudaStepMetrics(_BackendMetrics):
    """Kernel launches, GEMM calls and FLOPs of the CUDA step path, in the host emulation."""

    backend = "cuda-step-emulated"


class EmulatedCudaPersistentMetrics(_BackendMetrics):
    """Kernel launches, GEMM calls and FLOPs of the CUDA persistent path, in the host emulation."""

    backend = "cuda-persistent-emulated"
