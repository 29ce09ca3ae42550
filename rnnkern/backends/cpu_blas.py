"""Which BLAS the Numba kernels call for their GEMMs.

Two are supported:

- ``"openblas"``: ``np.dot`` inside Numba, which calls SciPy's bundled
  OpenBLAS. Always there.
- ``"mkl"``: Intel MKL's ``cblas_sgemm``/``cblas_dgemm`` from ``libmkl_rt``
  (``pip install 'rnnkern[mkl]'``), called by address from the Numba code.
  Faster on the small, skinny products of a recurrent step (the per-step
  ``h @ W_hh^T``); used by default when it can be loaded.

``RNNKERN_BLAS=openblas`` (or ``mkl``) in the environment overrides the
default; :func:`use_blas` does the same from Python.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys
from pathlib import Path

__all__ = ["use_blas", "blas_name", "gemm_address"]

_CHOICES = ("auto", "mkl", "openblas")
_choice = os.environ.get("RNNKERN_BLAS", "auto").lower()


@functools.lru_cache(maxsize=None)
def _mkl():
    """ctypes handle of libmkl_rt, or None where it cannot be loaded."""
    candidates = [str(p) for p in sorted(Path(sys.prefix, "lib").glob("libmkl_rt.so*"))]
    found = ctypes.util.find_library("mkl_rt")
    if found:
        candidates.append(found)
    for path in candidates:
        try:
            return ctypes.CDLL(path)
        except OSError:
            continue
    return None


def use_blas(name: str) -> None:
    """Choose the BLAS: ``"mkl"``, ``"openblas"`` or ``"auto"`` (MKL if present)."""
    global _choice
    if name not in _CHOICES:
        raise ValueError(f"name: expected one of {_CHOICES}, got {name!r}")
    if name == "mkl" and _mkl() is None:
        raise RuntimeError("name: 'mkl' asked for, but libmkl_rt could not be loaded "
                           "(pip install 'rnnkern[mkl]')")
    _choice = name


def blas_name() -> str:
    """``"mkl"`` or ``"openblas"``: what the kernels use now."""
    if _choice == "openblas" or _choice not in _CHOICES:
        return "openblas"
    return "mkl" if _mkl() is not None else "openblas"


def gemm_address(dtype) -> int:
    """Address of the CBLAS gemm for ``dtype`` (MKL), or 0 meaning ``np.dot``."""
    if blas_name() != "mkl":
        return 0
    symbol = "cblas_sgemm" if str(dtype) == "float32" else "cblas_dgemm"
    return ctypes.cast(getattr(_mkl(), symbol), ctypes.c_void_p).value
