"""Which BLAS the Numba kernels call for their GEMMs (see rnnkern.kernels.numba.gemm).

- ``"numpy"`` (the default): the OpenBLAS bundled with NumPy's wheels, found
  through threadpoolctl and called by address.  It is the BLAS that NumPy's
  own ``matmul`` uses, so the kernels and the user's NumPy code (a dense
  layer, a loss) share ONE thread pool.  Two pools do not mix: OpenBLAS
  workers spin for a while after each call, and the other pool's threads
  were measured losing their cores to them (a training step 3-8x slower).
- ``"mkl"``: Intel MKL's ``cblas_?gemm`` from ``libmkl_rt``
  (``pip install 'rnnkern[mkl]'``).  Faster on the small, skinny products of
  a recurrent step; best for processes that do little else with NumPy's BLAS.
- ``"scipy"``: ``np.dot`` inside Numba, which calls SciPy's bundled OpenBLAS.
  Always available; the fallback when NumPy's BLAS cannot be found (a NumPy
  built against another BLAS, say).

``RNNKERN_BLAS=mkl`` (or ``numpy``/``scipy``) in the environment sets the
choice; :func:`use_blas` does the same from Python.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys
from pathlib import Path

__all__ = ["use_blas", "blas_name", "gemm_function"]

CHOICES = ("numpy", "mkl", "scipy")
_choice = os.environ.get("RNNKERN_BLAS", "numpy").lower()

# CBLAS symbols ("{}" is the routine: sgemm, dgemv, ...), most specific first,
# with whether their integer arguments are 64-bit (ILP64: the "64_" suffix of
# NumPy's scipy-openblas).
_SYMBOLS = [("scipy_cblas_{}64_", True), ("cblas_{}64_", True),
            ("scipy_cblas_{}", False), ("cblas_{}", False)]


@functools.lru_cache(maxsize=None)
def _numpy_openblas():
    """(ctypes handle, symbol pattern, ilp64) of NumPy's OpenBLAS, or None."""
    import numpy as np
    from threadpoolctl import threadpool_info

    np.dot(np.ones((2, 2)), np.ones((2, 2)))       # make sure it is loaded
    numpy_dir = str(Path(np.__file__).parent.parent)
    for lib in threadpool_info():
        path = lib.get("filepath", "")
        if lib.get("internal_api") == "openblas" and path.startswith(numpy_dir) \
                and Path(path).parent.name == "numpy.libs":
            handle = ctypes.CDLL(path)
            for pattern, ilp64 in _SYMBOLS:
                if all(hasattr(handle, pattern.format(routine))
                       for routine in ("sgemm", "dgemm", "sgemv", "dgemv")):
                    return handle, pattern, ilp64
    return None


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
    """Choose the BLAS of the CPU kernels: ``"numpy"``, ``"mkl"`` or ``"scipy"``."""
    global _choice
    if name not in CHOICES:
        raise ValueError(f"name: expected one of {CHOICES}, got {name!r}")
    if name == "mkl" and _mkl() is None:
        raise RuntimeError("name: 'mkl' asked for, but libmkl_rt could not be loaded "
                           "(pip install 'rnnkern[mkl]')")
    _choice = name


def blas_name() -> str:
    """The BLAS the kernels use now (a fallback may differ from the choice)."""
    if _choice == "mkl" and _mkl() is not None:
        return "mkl"
    if _choice == "numpy" and _numpy_openblas() is not None:
        return "numpy"
    return "scipy"


def gemm_function(dtype) -> tuple:
    """``(gemm_address, ilp64, gemv_address)`` of the CBLAS ``?gemm`` and ``?gemv`` for ``dtype``.

    Both come from the same library; ``ilp64`` is 1 where their sizes are
    64-bit integers.  ``(0, 0, 0)`` means ``np.dot``.
    """
    found = _BY_DTYPE.get((_choice, dtype))   # the chosen library, found for dtype before
    if found is not None:
        return found
    name = blas_name()
    found = _BY_DTYPE.get((name, dtype))
    if found is None:
        import numpy as np

        from ...validation import dtype_name

        letter = {"float32": "s", "float64": "d"}[dtype_name(np.dtype(dtype))]
        found = _BY_DTYPE[(name, dtype)] = _addresses(name, letter)
    return found


#: (library, dtype as passed) -> gemm_function's answer: every layer call asks.
_BY_DTYPE = {}


def _addresses(name, letter):
    """:func:`gemm_function` for one library and type letter (ctypes casts cost ~15 us a
    call: looked up once per library and dtype, in ``_BY_DTYPE``)."""
    if name == "mkl":
        handle, pattern, ilp64 = _mkl(), "cblas_{}", False
    elif name == "numpy":
        handle, pattern, ilp64 = _numpy_openblas()
    else:
        return (0, 0, 0)

    def address(routine):
        function = getattr(handle, pattern.format(letter + routine))
        return ctypes.cast(function, ctypes.c_void_p).value

    return (address("gemm"), int(ilp64), address("gemv"))
