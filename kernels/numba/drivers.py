"""The sequence drivers: one layer-direction over all T steps, for any cell.

The drivers hold everything that is the same for every cell: the time loop
(inside Numba, so no Python sits between steps), the recurrent GEMM of each
step, the length mask, the state history, the carried gradients.  The cell's
algebra comes from its row functions, picked at compile time by ``rows``, a
:class:`CellRows` naming them ``"<module>.<prefix>"``
(``rnnkern.cells.Cell.kernels["numba"]``): ``<module>.<prefix>_forward_row``
and ``<prefix>_backward_row`` of this package.  The name is part of the
argument's Numba TYPE, so each cell compiles (and caches) its own
specialisation, the dispatcher finds it by type at every call without
compiling again, and the rows inline into the loop.

Row contract (``t``, ``b`` the step and the batch row; arrays whole, the row
indexes them)::

    forward_row(t, ty, ts, b, gx, gh, b_hh, state, y, saved)
        reads gx[t, b], gh[b], b_hh and the state rows state[k][b]; updates
        the state rows in place and writes y[ty, b] and saved[k][ts, b].
        The driver picks the slots: ``ts = t`` when BPTT keeps the step,
        else 0 (inference: ``saved`` has ONE step, rewritten every step and
        never read); ``ty = t`` when the rows write the layer's ``y``, ``ts``
        when they write the projection's m_t.  Every array stays C-contiguous
        with the same Numba type in both modes, so the rows vectorize alike
        (a stride-0 time axis, tried, made inference ~1.4x slower).
    backward_row(t, b, dy, carry, saved, history, dgx, dgh)
        carry[k][b] enters as the gradient reaching state k after step t
        (for h without dy[t, b], which the row adds) and leaves as the
        gradient of state k before step t, except the part of dh that flows
        through W_hh (the driver adds that after the step); writes dgx[t, b]
        (and dgh[t, b] when the cell's dgh differs from its dgx)

The rows run only for active steps (``t < lengths[b]``); the drivers handle
the rest: an inactive forward step keeps the state, writes y = 0 and (when
BPTT keeps the step) zero saved rows; an inactive backward step passes the
carries through and writes zero pre-activation gradients.
"""

from __future__ import annotations

import functools
import importlib

import numba as nb
from numba.core import types
from numba.core.datamodel import models
from numba.extending import NativeValue, overload, register_model, typeof_impl, unbox

from . import JIT
from .gemm import gemm


class CellRows:
    """Names a cell's row functions for the drivers: ``CellRows("lstm.lstm")``."""

    __slots__ = ("name",)

    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return f"CellRows({self.name!r})"


class CellRowsType(types.Dummy):
    """The Numba type of a :class:`CellRows`: one type per cell, holding no data."""

    def __init__(self, name):
        self.rows = name
        super().__init__(name=f"CellRows({name})")


@typeof_impl.register(CellRows)
def _typeof_cell_rows(value, context):
    return _cell_rows_type(value.name)


@functools.cache
def _cell_rows_type(name):
    """One type object per cell (made once: typing a CellRows is on every driver call)."""
    return CellRowsType(name)


register_model(CellRowsType)(models.OpaqueModel)


@unbox(CellRowsType)
def _unbox_cell_rows(typ, obj, c):
    return NativeValue(c.context.get_dummy_value())       # the type says it all


def _rows_of(rows, which):
    """The row function ``<prefix>_<which>_row`` of module ``<module>`` named by ``rows``."""
    if not isinstance(rows, CellRowsType):
        return None
    module, prefix = rows.rows.split(".")
    return getattr(importlib.import_module(f"{__package__}.{module}"), f"{prefix}_{which}_row")


def forward_row(rows, t, ty, ts, b, gx, gh, b_hh, state, y, saved):
    """The cell's forward row (compiled code only; see the module docstring)."""
    raise NotImplementedError("only callable from Numba-compiled code")


@overload(forward_row, jit_options=JIT, inline="always")
def _forward_row_overload(rows, t, ty, ts, b, gx, gh, b_hh, state, y, saved):
    row = _rows_of(rows, "forward")
    if row is not None:
        return lambda rows, t, ty, ts, b, gx, gh, b_hh, state, y, saved: row(
            t, ty, ts, b, gx, gh, b_hh, state, y, saved)
    return None


def backward_row(rows, t, b, dy, carry, saved, history, dgx, dgh):
    """The cell's backward row (compiled code only; see the module docstring)."""
    raise NotImplementedError("only callable from Numba-compiled code")


@overload(backward_row, jit_options=JIT, inline="always")
def _backward_row_overload(rows, t, b, dy, carry, saved, history, dgx, dgh):
    row = _rows_of(rows, "backward")
    if row is not None:
        return lambda rows, t, b, dy, carry, saved, history, dgx, dgh: row(
            t, b, dy, carry, saved, history, dgx, dgh)
    return None


@nb.njit(**JIT)
def forward_sequence(rows, blas, x, w_ih, b_ih, gx, w_hh, w_hh_t, b_hh, lengths, reverse, keep,
                     state, y, history, saved, gh, w_hr, w_hr_t, cell_state, cell_y, projected):
    """Run one layer-direction forward over all T steps.

    First ``gx = x W_ih^T + b_ih`` for every step (one GEMM over all T*B rows),
    then the time loop.

    Parameters (outputs after the inputs they pair with)
    ----------
    rows : CellRows          the cell's rows
    blas : (int, int)        the GEMM to call (see gemm.gemm)
    x : (T, B, I)            C-contiguous
    w_ih : (G*H, I), b_ih : (G*H,)
    gx : (T, B, G*H)         workspace, C-contiguous: x @ W_ih^T + b_ih for every step
    w_hh : (G*H, P)          C-contiguous (P = H without a projection)
    w_hh_t : (P, G*H)        a C-contiguous copy of W_hh^T for NN products, or (0, 0):
                             then the products take the view W_hh.T (NT).  Either
                             way the same argument types, so one compiled driver.
    b_hh : (G*H,)
    lengths : (B,) int       row b is active at time t iff t < lengths[b]
    reverse : bool           t = T-1 ... 0
    keep : bool              keep what BPTT needs (training); False for inference
    state : tuple of (B, .)  initial states on entry, final states on exit (h first)
    y : (T, B, P)            outputs, zero where inactive
    history : tuple of (T, B, .)   each state as it entered step t; not touched
                             without ``keep`` (pass (0, B, .) arrays)
    saved : tuple of (S, B, W*H)   what the cell keeps for BPTT, zero where
                             inactive; S = T with ``keep``, else S = 1: a
                             scratch slot the rows rewrite every step
    gh : (B, G*H)            workspace
    w_hr : (P, H)            the projection (LSTM proj_size), C-contiguous, or (0, 0)
    w_hr_t : (H, P)          a copy of W_hr^T, or (0, 0) (as w_hh_t)
    cell_state, cell_y       what the rows update and write: ``state`` and ``y``
                             themselves without a projection; with one, the
                             unprojected m_t = o tanh(c_t): cell_state = (m (B, H),
                             the other states), cell_y (S, B, H) keeps m_t for BPTT
    projected : (B, P)       workspace of the projection (or (0, 0))

    With a projection each step ends with ``h_t = m_t W_hr^T`` (one GEMM),
    and ``y_t = h_t`` where the row is active.
    """
    T, B, I = x.shape
    gx_rows = gx.reshape(T * B, gx.shape[2])
    gemm(blas, x.reshape(T * B, I), w_ih.T, gx_rows)
    for r in range(T * B):
        gx_rows[r] += b_ih
    h = state[0]
    projecting = w_hr.shape[0] > 0
    for s in range(T):
        t = T - 1 - s if reverse else s
        ts = t if keep else 0                   # the slot of saved (and of m_t)
        ty = ts if projecting else t            # the slot of what the rows call y
        if keep:
            for k in range(len(state)):
                history[k][t] = state[k]
        if w_hh_t.shape[0] > 0:                  # gh = h_{t-1} W_hh^T
            gemm(blas, h, w_hh_t, gh)
        else:
            gemm(blas, h, w_hh.T, gh)
        for b in range(B):
            if t < lengths[b]:
                forward_row(rows, t, ty, ts, b, gx, gh, b_hh, cell_state, cell_y, saved)
            else:                               # padded step: state held, y = 0
                cell_y[ty, b] = 0
                if keep:
                    for k in range(len(saved)):
                        saved[k][t, b] = 0
        if projecting:
            if w_hr_t.shape[0] > 0:              # h_t = m_t W_hr^T
                gemm(blas, cell_state[0], w_hr_t, projected)
            else:
                gemm(blas, cell_state[0], w_hr.T, projected)
            for b in range(B):
                if t < lengths[b]:
                    h[b] = projected[b]
                    y[t, b] = projected[b]
                else:
                    y[t, b] = 0


@nb.njit(**JIT)
def backward_sequence(rows, blas, dy, w_hh, lengths, reverse, history, saved, carry, dgx, dgh,
                      dh_through_w, w_hr, cell_carry, cell_dy, dh_projected):
    """Backpropagate one layer-direction through all T steps.

    Parameters (outputs after the inputs they pair with)
    ----------
    rows : CellRows          the cell's rows
    blas : (int, int)        the GEMM to call (see gemm.gemm)
    dy : (T, B, P)           gradient of y
    w_hh : (G*H, P)          C-contiguous
    lengths, reverse, history, saved : as forward_sequence kept them
    carry : tuple of (B, .)  gradient of the final states on entry, of the
                             initial states on exit
    dgx : (T, B, G*H)        gradient of x @ W_ih^T + b_ih
    dgh : (T, B, G*H)        gradient of h @ W_hh^T + b_hh (the same array as
                             dgx unless the cell writes them apart)
    dh_through_w : (B, P)    workspace
    w_hr : (P, H)            the projection (C-contiguous), or (0, 0)
    cell_carry, cell_dy      what the rows read: ``carry`` and ``dy`` themselves
                             without a projection; with one, (dm (B, H), the
                             other carries) and zeros (T, B, H) (dy is in dm)
    dh_projected : (T, B, P) with a projection: the gradient of each h_t, zero
                             where inactive (for dW_hr); else (0, 0, 0)

    With a projection, each step starts with ``dm = (dh + dy_t) W_hr``; the
    direct path of ``h_{t-1}`` is then zero (it enters only through W_hh).
    """
    T, B = dy.shape[0], dy.shape[1]
    dh = carry[0]
    for s in range(T):
        t = s if reverse else T - 1 - s
        if w_hr.shape[0] > 0:
            for b in range(B):
                if t < lengths[b]:
                    dh_projected[t, b] = dh[b] + dy[t, b]
                    dh[b] = 0
                else:
                    dh_projected[t, b] = 0
            gemm(blas, dh_projected[t], w_hr, cell_carry[0])   # dm = dh_t W_hr
        for b in range(B):
            if t < lengths[b]:
                backward_row(rows, t, b, cell_dy, cell_carry, saved, history, dgx, dgh)
            else:                               # padded step: the carries pass through
                dgx[t, b] = 0
                dgh[t, b] = 0
        gemm(blas, dgh[t], w_hh, dh_through_w)
        dh += dh_through_w                      # dh_{t-1} = direct part + dgh W_hh
