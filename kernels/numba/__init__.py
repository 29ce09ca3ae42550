"""Numba CPU kernels: the sequence drivers once, and each cell's row functions.

Layout::

    activations.py   vectorizable exp, sigmoid, tanh
    gemm.py          GEMM through a CBLAS called by address
    drivers.py       forward_sequence / backward_sequence: the time loop, the
                     length mask, the carries and the GEMMs, for any cell
    split.py         forward_worker / backward_worker: the same on worker
                     threads, the weights split by hidden units
    tiles.py         register-tiled products on weights packed into panels
    atomics.py       atomics and the workers' spin barrier
    elman.py, lstm.py, gru.py
                     each cell's fused pointwise rows (one batch row of one
                     step), named by ``rnnkern.cells.Cell.kernels["numba"]``

One fastmath setting for the package (``FASTMATH``), without nnan/ninf so NaN
and inf still behave; ``error_model="numpy"`` drops the division checks that
block vectorizing.

Why ``cache=True`` stays sound with the code in several files: Numba stamps a
cached function with its OWN source file only, but a driver's machine code
inlines the row functions of other files.  :class:`KernelPackageLocator`
(registered below, before any function of the package is jitted) stamps every
cached function of this package with a digest of ALL the package's ``.py``
files instead, so an edit to any of them recompiles every kernel.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from numba.core import caching

FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}
JIT = dict(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
INLINE = dict(JIT, inline="always")

PACKAGE_DIR = Path(__file__).resolve().parent


@functools.cache
def package_digest() -> str:
    """sha256 over the names and contents of every ``.py`` file of this package."""
    digest = hashlib.sha256()
    for path in sorted(PACKAGE_DIR.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


class KernelPackageLocator(caching._CacheLocator):
    """Numba's own locator for our files, with a package-wide source stamp.

    Everything but the stamp (where the cache lives, the disambiguator) comes
    from the locator Numba would have chosen.
    """

    def __init__(self, standard):
        self._standard = standard

    def ensure_cache_path(self):
        self._standard.ensure_cache_path()

    def get_cache_path(self):
        return self._standard.get_cache_path()

    def get_source_stamp(self):
        return package_digest()

    def get_disambiguator(self):
        return self._standard.get_disambiguator()

    @classmethod
    def from_function(cls, py_func, py_file):
        if Path(py_file).resolve().parent != PACKAGE_DIR:
            return None
        for standard_class in _LOCATOR_CLASSES:
            if standard_class is not cls:
                standard = standard_class.from_function(py_func, py_file)
                if standard is not None:
                    return cls(standard)
        return None


# Numba's list of locator classes, tried in order (newer Numba calls the
# class CacheImpl, older _CacheImpl).
_CACHE_IMPL = getattr(caching, "CacheImpl", None) or caching._CacheImpl
_LOCATOR_CLASSES = _CACHE_IMPL._locator_classes
if KernelPackageLocator not in _LOCATOR_CLASSES:
    _LOCATOR_CLASSES.insert(0, KernelPackageLocator)
