"""Devices: ``"cpu"`` (NumPy arrays) and ``"cuda"`` (CuPy arrays), and the one GPU probe.

``cuda_unavailable_reason()`` is the only place that asks whether CuPy sees a
CUDA GPU; the layers, the benchmarks and the tests all go through it.  CuPy is
imported only when it is called.
"""

from __future__ import annotations

import functools

__all__ = ["DEVICES", "check_device", "cuda_unavailable_reason", "cuda_device_count",
           "require_cupy"]

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
    return count, None


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
