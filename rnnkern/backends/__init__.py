"""Backends: one package per engine, all with the same three functions.

A backend runs one direction of one layer over the whole sequence, and one
inference step of a single-step cell::

    forward_direction(cell, x, params, state, lengths, reverse, *, keep=True)
        -> y, state_n, saved
    backward_direction(cell, dy, dstate_n, saved)
        -> dx, dstate0, grads
    step(cell, x_t, params, state, *, keep=False)
        -> state_n, saved   forward_direction's for x = x_t[None] and no lengths;
                            x_t (B, I).  A single-step cell's user calls it once
                            a time step, so a backend may prepare what the calls
                            share; ``step_of`` makes it from forward_direction
                            where nothing is worth preparing

with (all arrays of the backend's library and of one float dtype)::

    cell      rnnkern.cells.Cell: the backend reads its states, saved arrays
              and kernel names from it, never a cell name
    x         (T, B, I)
    params    dict by Parameter name without layer suffix: weight_ih (G*H, I),
              weight_hh (G*H, H), bias_ih, bias_hh (G*H,) (zeros without bias)
    state     tuple of (B, H), one per Cell.state_names (h first)
    lengths   (B,) integer array with 1 <= lengths <= T, or None (all T)
    reverse   run t = T-1 ... 0 instead of 0 ... T-1
    keep      False for inference: ``saved`` comes back None
    y         (T, B, H)  zeros where t >= lengths[b]
    state_n   tuple like ``state``: each row's state after its own last step
    saved     opaque, whatever backward_direction needs
    dy        (T, B, H)  dstate_n: tuple like ``state``
    dx        (T, B, I)  dstate0: tuple like ``state``
    grads     dict like ``params``

A backend never writes into its inputs.  Stacking, bidirectional
concatenation, batch_first and validation belong to the layers above.

``backend_for(xp)`` maps an array namespace to its backend module; the CUDA
backend (and with it CuPy) is imported only when a CuPy array arrives.
"""

from __future__ import annotations

import importlib

import array_api_compat

from ..dispatch import backend_name

__all__ = ["backend_for", "step_of", "time_order", "int32_lengths", "weight_gradients"]


def step_of(forward_direction):
    """The contract's ``step`` of a backend, run as a one-step ``forward_direction``."""
    def step(cell, x, params, state, *, keep=False):
        xp = array_api_compat.array_namespace(x)
        _, state_n, saved = forward_direction(cell, xp.expand_dims(x, axis=0), params, state,
                                              None, False, keep=keep)
        return state_n, saved
    return step


def time_order(steps, reverse):
    """The times a direction visits: 0 ... T-1, or T-1 ... 0 in reverse."""
    return range(steps - 1, -1, -1) if reverse else range(steps)


def int32_lengths(xp, lengths, batch, steps):
    """``lengths`` as a contiguous int32 array of ``xp`` (NumPy or CuPy); all T if None."""
    if lengths is None:
        all_steps = xp.empty((batch,), dtype=xp.int32)
        all_steps.fill(steps)               # NumPy's full() costs ~3 us more, every call
        return all_steps
    return xp.ascontiguousarray(lengths, dtype=xp.int32)


def weight_gradients(xp, matmul, x_rows, h_prev_rows, dgx_rows, dgh_rows, w_ih):
    r"""The tail of BPTT, shared by every backend: GEMMs over all ``T*B`` rows.

    .. math::
        dW_{ih} = dG_x^T X, \quad dW_{hh} = dG_h^T H_{prev}, \quad
        db_{ih} = \textstyle\sum_{rows} dG_x, \quad db_{hh} = \sum_{rows} dG_h,
        \quad dX = dG_x W_{ih}

    Parameters
    ----------
    xp : array namespace (array-API)
    matmul : callable
        ``matmul(a, b) -> a @ b`` for 2-D arrays: the backend's GEMM (a
        transposed operand comes as a transposed view).
    x_rows, h_prev_rows, dgx_rows, dgh_rows : (T*B, F) arrays
    w_ih : (G*H, I) array

    Returns
    -------
    dx_rows : (T*B, I) array
    grads : dict
        ``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh``.
    """
    transposed = lambda a: xp.permute_dims(a, (1, 0))      # noqa: E731
    db_ih = xp.sum(dgx_rows, axis=0)
    # Cells whose gates see h only through G (Elman, LSTM) pass dG_h = dG_x itself: the
    # sum once (NumPy's took ~9 us at T*B = 32, G*H = 256), copied (each gradient its own)
    db_hh = (xp.asarray(db_ih, copy=True) if dgh_rows is dgx_rows
             else xp.sum(dgh_rows, axis=0))
    grads = {"weight_ih": matmul(transposed(dgx_rows), x_rows),
             "weight_hh": matmul(transposed(dgh_rows), h_prev_rows),
             "bias_ih": db_ih, "bias_hh": db_hh}
    return matmul(dgx_rows, w_ih), grads


def backend_for(xp):
    """Return the backend module that runs arrays of namespace ``xp``."""
    name = backend_name(xp)
    module = _BACKENDS.get(name)
    if module is None:                      # imported on first use (CuPy only with CuPy arrays)
        module = _BACKENDS[name] = importlib.import_module(f"{__name__}.{name}")
    return module


_BACKENDS = {}
