"""Compute kernels, installed as ``rnnkern.kernels``.

- ``numba_*.py``: Numba-jitted CPU loops for NumPy arrays.
- ``*.cu`` / ``*.cuh``: CUDA C++ sources for CuPy arrays, compiled at run time
  by CuPy's RawModule (and, for tests without a GPU, by NVRTC and by g++
  through the host emulation).
"""
