"""Backends: one per array library, all with the same two functions.

A backend runs one direction of one layer over the whole sequence::

    forward_direction(cell, x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, reverse)
        -> y, h_n, c_n, saved
    backward_direction(cell, dy, dh_n, dc_n, saved)
        -> dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh

with (all arrays of the backend's library and of one float dtype)::

    cell      rnnkern.cells.Cell
    x         (T, B, I)  C-contiguous
    w_ih      (G*H, I)   w_hh (G*H, H)   b_ih, b_hh (G*H,) (zeros without bias)
    h0        (B, H)     c0 (B, H) for the LSTM, else None
    lengths   (B,) integer array with 1 <= lengths <= T, or None (all T)
    reverse   run t = T-1 ... 0 instead of 0 ... T-1
    y         (T, B, H)  zeros where t >= lengths[b]
    saved     opaque, whatever backward_direction needs
    dy        (T, B, H)  dh_n, dc_n (B, H) (dc_n None unless LSTM)

A backend never writes into its inputs.  Stacking, bidirectional
concatenation, batch_first and validation belong to the layers above.

``backend_for(xp)`` maps an array namespace to its backend module; CuPy's
backend is imported only when a CuPy array arrives.
"""

from __future__ import annotations

import importlib

from ..dispatch import backend_name


def time_order(steps, reverse):
    """The times a direction visits: 0 ... T-1, or T-1 ... 0 in reverse."""
    return range(steps - 1, -1, -1) if reverse else range(steps)


def int32_lengths(xp, lengths, batch, steps):
    """``lengths`` as a contiguous int32 array of ``xp`` (NumPy or CuPy); all T if None."""
    if lengths is None:
        return xp.full((batch,), steps, dtype=xp.int32)
    return xp.ascontiguousarray(lengths, dtype=xp.int32)


def backend_for(xp):
    """Return the backend module that runs arrays of namespace ``xp``."""
    name = backend_name(xp)
    return importlib.import_module(f"{__name__}.{name}_backend")
