"""Devices: ``"cpu"`` (NumPy arrays) and ``"cuda"`` (CuPy arrays), and the one GPU probe.

``cuda_unavailable_reason()`` is the only place that asks whether CuPy can
use a CUDA GPU (sees one, and compiles and launches a kernel there); the
layers, the benchmarks and the tests all go through it.  ``device_context``
runs code under the device of the user's arrays.  CuPy is imported only when
a function here needs it.
"""

from __future__ import annotations

import contextlib
import functools

__all__ = ["DEVICES", "check_device", "cuda_unavailable_reason", "cuda_device_count",
           "require_cupy", "device_context", "on_device_of_arguments"]

DEVICES = ("cpu", "cuda")


def check_device(device):
    """``device`` itself if it is one of ``DEVICES``, else a ValueError naming it."""
    if device not in DEVICES:
        raise ValueError(f"device: expected one of {DEVICES}, got {device!r}")
    return device


@functools.cache
def _probe():
    """(number of CUDA devices CuPy can use, or 0; why none, or None)."""
    try:
        import cupy
    except ImportError as err:
        return 0, f"CuPy is not installed ({err}); pip install 'rnnkern[cuda]'"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as err:   # CUDARuntimeError without a driver or a device
        return 0, f"CuPy {cupy.__version__} is installed but finds no CUDA GPU ({err})"
    if count == 0:
        return 0, f"CuPy {cupy.__version__} is installed but finds no CUDA GPU"
    try:
        _launch_probe_kernel(cupy)
    except Exception as err:   # no CUDA headers or NVRTC (driver-only node), a broken driver
        return 0, (f"CuPy {cupy.__version__} finds {count} CUDA GPU(s) but cannot compile and "
                   f"launch a kernel ({type(err).__name__}: {err}); pip install "
                   f"'rnnkern[cuda]' (cupy-cuda13x[ctk]: NVRTC, the CUDA headers, cuBLAS)")
    return count, None


_PROBE_KERNEL = r'''
extern "C" __global__ void rnnkern_probe(int* out, const int* in) {
    out[threadIdx.x] = in[threadIdx.x] + 1;
}
'''


def _launch_probe_kernel(cupy):
    """Compile (NVRTC), launch and read back a tiny kernel, and run a tiny
    GEMM (cuBLAS), on the current device: what the CUDA backend needs."""
    kernel = cupy.RawKernel(_PROBE_KERNEL, "rnnkern_probe")
    values = cupy.arange(32, dtype=cupy.int32)
    out = cupy.zeros(32, dtype=cupy.int32)
    kernel((1,), (32,), (out, values))
    if not bool((out == values + 1).all()):
        raise RuntimeError("the probe kernel ran but wrote wrong values")
    square = cupy.ones((2, 2), dtype=cupy.float32)
    if float(cupy.matmul(square, square)[0, 0]) != 2.0:
        raise RuntimeError("cuBLAS matmul of the probe gave a wrong value")


def device_context(*candidates):
    """A context manager making the device of the first CuPy-like array current.

    ``candidates`` are arrays, tuples of arrays or None; the first object
    with a ``device`` that is itself a context manager (CuPy's ``Device``)
    decides.  For anything else (NumPy arrays, whose ``device`` is the string
    ``"cpu"``) a context that does nothing.  CuPy allocates on, and copies
    to, the *current* device: code that makes new arrays from the user's
    arrays must run under theirs.
    """
    for candidate in candidates:
        for array in candidate if isinstance(candidate, tuple) else (candidate,):
            device = getattr(array, "device", None)
            if hasattr(device, "__enter__") and hasattr(device, "__exit__"):
                return device
    return contextlib.nullcontext()


def on_device_of_arguments(method):
    """Decorate a method to run under ``device_context`` of its arguments (in order)."""
    @functools.wraps(method)
    def run_on_device(self, *args, **kwargs):
        with device_context(*args, *kwargs.values()):
            return method(self, *args, **kwargs)
    return run_on_device


def cuda_unavailable_reason():
    """None if CuPy imports and sees a CUDA GPU, else a sentence saying why not."""
    return _probe()[1]


def cuda_device_count():
    """CUDA devices CuPy can use: 0 without CuPy, a driver or a GPU."""
    return _probe()[0]


def require_cupy():
    """CuPy, for device ``"cuda"``; a RuntimeError saying why when it cannot be used."""
    reason = cuda_unavailable_reason()
    if reason is not None:
        raise RuntimeError(f"device 'cuda': {reason}")
    import cupy

    return cupy
