"""Dispatch: the array types decide the backend.

``namespace_of(*arrays)`` returns the array-API namespace shared by all the
arrays (NumPy and CuPy come back as their array-api-compat wrappers) and raises
one clear TypeError when they mix libraries or devices.  ``backend_name(xp)``
maps that namespace to its backend package: ``"numba"`` (NumPy arrays),
``"cuda"`` (CuPy arrays) or ``"generic"`` (plain array-API code, slow but
correct).

Nothing here imports CuPy: array-api-compat recognises CuPy arrays by looking
the class up in ``sys.modules``.
"""

from __future__ import annotations

import functools

import array_api_compat
import numpy as np

from .validation import describe

__all__ = ["namespace_of", "backend_name"]


def namespace_of(*arrays, names=None):
    """Return the array-API namespace of ``arrays`` (``None`` entries skipped).

    Raises
    ------
    TypeError
        If an argument is not an array, or the arrays come from different
        libraries or live on different devices.
    """
    if any(a is not None for a in arrays) and all(
            a is None or type(a) is np.ndarray for a in arrays):
        return _numpy_namespace()               # the common case, without the checks' ~20 us
    names = names or [f"argument {k}" for k in range(len(arrays))]
    present = [(n, a) for n, a in zip(names, arrays) if a is not None]
    for name, a in present:
        if not array_api_compat.is_array_api_obj(a):
            raise TypeError(f"{name}: expected an array (NumPy, CuPy or another "
                            f"array-API library), got {describe(a)}")
    try:
        xp = array_api_compat.array_namespace(*(a for _, a in present))
    except TypeError:
        kinds = ", ".join(f"{n}: {describe(a)}" for n, a in present)
        raise TypeError(f"arrays must all come from one array library; got {kinds}") from None
    devices = {}
    for name, a in present:
        devices.setdefault(str(array_api_compat.device(a)), name)
    if len(devices) > 1:
        kinds = ", ".join(f"{n} on {d}" for d, n in devices.items())
        raise TypeError(f"Input arrays use different devices: {kinds}")
    return xp


@functools.cache
def _numpy_namespace():
    """What ``array_api_compat.array_namespace`` gives for NumPy arrays."""
    return array_api_compat.array_namespace(np.empty(0))


def backend_name(xp) -> str:
    """The backend package (``rnnkern.backends.<name>``) for an array namespace.

    ``"numba"`` for NumPy, ``"cuda"`` for CuPy, ``"generic"`` for any other
    array-API library.
    """
    try:
        return _BACKEND_NAMES[xp]
    except (KeyError, TypeError):           # not seen yet, or not hashable
        pass
    if array_api_compat.is_numpy_namespace(xp):
        name = "numba"
    elif array_api_compat.is_cupy_namespace(xp):
        name = "cuda"
    else:
        name = "generic"
    try:
        _BACKEND_NAMES[xp] = name
    except TypeError:
        pass
    return name


#: namespace -> backend name: namespaces are modules, few and long-lived; every call asks.
_BACKEND_NAMES = {}
