r"""The two things the training toolkit needs from outside the array API standard.

``to_numpy(a)`` copies any array to the host (CuPy arrays refuse DLPack
export to NumPy, so they use their own ``.get()``).

``scatter_add_rows(target, indices, values)`` computes

.. math:: \mathrm{target}[\mathrm{indices}[n], :] \mathrel{+}= \mathrm{values}[n, :]
          \quad \text{for every } n,

accumulating repeated indices (what ``Embedding.backward`` needs).  NumPy and
CuPy have it as the ufunc method ``add.at`` (atomic adds on the GPU); any
other array-API library gets a one-hot matrix product, exact but ``O(N V E)``.
Everything else in ``rnnkern.training`` is written with array-API calls only.
"""

from __future__ import annotations

import array_api_compat
import numpy as np

__all__ = ["scatter_add_rows", "to_numpy"]


def scatter_add_rows(target, indices, values):
    """Add ``values[n]`` to ``target[indices[n]]`` for every ``n``; return ``target``.

    Parameters
    ----------
    target : array, shape (V, E)
        Array the rows are added into.  NumPy and CuPy update it in place;
        treat the return value as the result.
    indices : integer array, shape (N,)
        Row of ``target`` for each row of ``values``, in ``[0, V)``.
    values : array, shape (N, E)
        Rows to add, of ``target``'s dtype.
    """
    xp = array_api_compat.array_namespace(target, indices, values)
    add_at = getattr(getattr(xp, "add", None), "at", None)     # numpy.add.at, cupy.add.at
    if add_at is not None:
        add_at(target, indices, values)
        return target
    rows = xp.arange(target.shape[0], dtype=indices.dtype, device=array_api_compat.device(target))
    one_hot = xp.astype(xp.reshape(indices, (-1, 1)) == rows, target.dtype)   # (N, V)
    return target + xp.matmul(xp.permute_dims(one_hot, (1, 0)), values)


def to_numpy(a):
    """A NumPy copy of ``a``: a NumPy or CuPy array, or any array with ``__dlpack__``."""
    if isinstance(a, np.ndarray):
        return a.copy()
    if array_api_compat.is_cupy_array(a):
        return a.get()                              # explicit device-to-host copy
    return np.array(np.from_dlpack(a), copy=True)
