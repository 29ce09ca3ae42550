"""Compute kernels, installed as ``rnnkern.kernels``.

- ``numba/``: Numba-jitted CPU loops for NumPy arrays: the sequence drivers
  once (``drivers.py``), and one file of row functions per cell.
- ``cuda/``: CUDA C++ sources for CuPy arrays, compiled at run time by CuPy's
  RawModule (and, for tests without a GPU, by NVRTC and by g++ through the
  host emulation): the step driver once, and one header of pointwise steps
  per cell.

Which kernels a cell uses is a field of its registry entry
(``rnnkern.cells.Cell.kernels``).
"""
