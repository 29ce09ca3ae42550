"""Argument checks shared by the public entry points.

Every check raises ValueError (wrong value or shape) or TypeError (wrong kind
or dtype) with a message that names the argument, what was expected and what
came.
"""

from __future__ import annotations

import numbers

import numpy as np

FLOAT_DTYPES = ("float32", "float64")


def describe(a) -> str:
    """Short description of an argument for error messages."""
    t = type(a)
    shape = getattr(a, "shape", None)
    dtype = getattr(a, "dtype", None)
    if shape is not None and dtype is not None:
        return f"{t.__module__}.{t.__qualname__} of shape {tuple(shape)} and dtype {dtype}"
    return f"{t.__module__}.{t.__qualname__}"


def dtype_name(dtype) -> str:
    """Canonical name ("float32") of a dtype given as a string or dtype object."""
    if isinstance(dtype, np.dtype):         # NumPy's and CuPy's arrays
        name = _NUMPY_DTYPE_NAMES.get(dtype)
        if name is None:
            name = _NUMPY_DTYPE_NAMES[dtype] = dtype.name
        return name
    name = getattr(dtype, "name", None) or str(dtype)
    return name.rsplit(".", 1)[-1]


#: np.dtype -> its name: ``dtype.name`` costs ~4 us, and every layer call checks a few arrays.
_NUMPY_DTYPE_NAMES = {}


def check_float_dtype(name, dtype_like) -> str:
    """Check a layer dtype argument; return "float32" or "float64"."""
    try:
        canonical = np.dtype(dtype_like).name
    except TypeError:
        canonical = dtype_name(dtype_like)
    if canonical not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected one of {FLOAT_DTYPES}, got {dtype_like!r}")
    return canonical


def check_positive_int(name, value, minimum=1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value}")
    return int(value)


def check_seed(name, seed):
    """A seed argument: an integer or None (fresh entropy); returns it."""
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
        raise TypeError(f"{name}: expected an integer or None, got {seed!r}")
    return seed


def check_probability(name, value) -> float:
    """A probability in [0, 1) (dropout: 1 would drop everything); returns it as a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a probability in [0, 1), got {value!r}")
    if not 0 <= value < 1:
        raise ValueError(f"{name}: expected a probability in [0, 1), got {value!r}")
    return float(value)


def check_bool(name, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected True or False, got {value!r}")
    return bool(value)


def check_array(name, a, ndim, dtype, shape=None):
    """Check ndim, dtype (a canonical name) and, where given, the shape.

    ``shape`` may hold ``None`` for axes that can take any size; sizes of
    zero are refused.
    """
    if a.ndim not in ((ndim,) if isinstance(ndim, int) else ndim):
        raise ValueError(f"{name}: expected a {ndim}-D array, got {describe(a)}")
    got = dtype_name(a.dtype)
    if got != dtype:
        raise TypeError(f"{name}: expected dtype {dtype} (the layer's dtype), got {describe(a)}")
    sizes = tuple(a.shape)
    if shape is not None:
        for expected, size in zip(shape, sizes):
            if expected is not None and expected != size:
                want = "(" + ", ".join("*" if e is None else str(e) for e in shape) + ")"
                raise ValueError(f"{name}: expected shape {want}, got {describe(a)}")
    if 0 in sizes:
        raise ValueError(f"{name}: expected no empty axis, got {describe(a)}")


def host_lengths(lengths, batch, steps, xp):
    """Validate ``lengths`` and return them as a host ``np.int64`` array.

    Accepts a sequence of Python/NumPy integers or an integer array of the
    inputs' own library, as torch's ``pack_padded_sequence`` does.

    A CuPy array is the exception: it is checked for dtype and shape only and
    returned as it is, on its device, because reading its values back would
    synchronise the host with the GPU stream on every call.  Its values are
    not range-checked: the kernels only compare ``t < lengths[b]``, so a
    length above T acts as T and one below 1 leaves that row's states as
    they came in (zero outputs).  Pass host lengths (a list or a NumPy
    array) to have them checked.
    """
    if hasattr(lengths, "__array_namespace__") and not isinstance(lengths, np.ndarray):
        if "int" not in dtype_name(lengths.dtype):
            raise TypeError(f"lengths: expected integers, got {describe(lengths)}")
        if getattr(lengths, "ndim", None) != 1:
            raise ValueError(f"lengths: expected a 1-D array of {batch} integers, "
                             f"got {describe(lengths)}")
        if type(lengths).__module__.split(".")[0] == "cupy":   # no sync: see above
            if lengths.shape[0] != batch:
                raise ValueError(f"lengths: expected {batch} lengths (one per batch element), "
                                 f"got {lengths.shape[0]}")
            return lengths
        values = np.asarray([int(v) for v in _to_host_list(lengths, xp)], dtype=np.int64)
    else:
        try:
            values = np.asarray(lengths)
        except Exception:   # ragged nesting and the like
            raise TypeError(f"lengths: expected a sequence of integers, got {lengths!r}") from None
        if values.dtype == object or not (np.issubdtype(values.dtype, np.integer)
                                          or values.size == 0):
            raise TypeError(f"lengths: expected integers, got {describe(values)}")
        if values.ndim != 1:
            raise ValueError(f"lengths: expected a 1-D sequence of {batch} integers, "
                             f"got shape {values.shape}")
        values = values.astype(np.int64)
    if values.shape[0] != batch:
        raise ValueError(f"lengths: expected {batch} lengths (one per batch element), "
                         f"got {values.shape[0]}")
    bad = (values < 1) | (values > steps)
    if bad.any():
        raise ValueError(f"lengths: expected every length in [1, {steps}] (the time axis), "
                         f"got {values[bad][:5].tolist()}")
    return values


def _to_host_list(a, xp):
    # CuPy: one device-to-host copy; others: DLPack first, then element-wise.
    if hasattr(a, "get"):
        return a.get().tolist()
    try:
        return np.from_dlpack(a).tolist()
    except Exception:
        return [int(a[k]) for k in range(a.shape[0])]
