"""The split drivers: one layer-direction on ``workers`` threads, W split by hidden units.

``workers`` OS threads (one per core) each own a contiguous range of hidden
units ``j0 <= j < j1`` (``U = j1 - j0``) with ALL their gate rows, and run
the whole layer-direction on them: the input projection, the recurrence and,
backward, the weight gradients.  Each worker packs its slice of the weights
once per call, in its own thread, so the slice lands in its own core's cache
and stays there for the sequence.  Forward, per step::

    gh[b, g*U + u] = sum_k h_{t-1}[b, k] W_hh[g*H + j0 + u, k]     (u < U)
    the cell's forward row on the worker's units (gate blocks U wide)
    h_t[b, j0:j1] -> the shared, double-buffered h
    barrier (kernels.numba.atomics.wait_for_step)

and ``gx = x_t W_ih[own rows]^T`` for a chunk of steps at a time.
Backward, per step::

    the cell's backward row on the worker's units -> dgx[t], dgh[t] (own columns)
    barrier
    dh_{t-1}[b, j0:j1] += sum_r dgh[t, b, r] W_hh[r, j0 + u]      (all G*H rows r)

then, after one more barrier, its block of the rows of dW_ih, dW_hh, db_ih,
db_hh and dx (GEMMs over all T*B rows).

One barrier a step is enough.  Forward: every worker reads all of h_{t-1}
but writes only its units of h_t, and h alternates between two buffers, so a
worker past the barrier of step s writes the buffer that everyone finished
reading before arriving there.  Backward: dgh[t] is a separate slice for
every t, and the product reading it comes after the barrier that completes it.

The per-step products (``x_t W_ih^T``, ``h_{t-1} W_hh^T`` and, backward,
``dgh_t W_hh``) run on ``tiles.panel_product``: register tiles against the
worker's slice of the weights, packed once per call into panels.  The
weight gradients are BLAS GEMMs (``gemm.py``) over all T*B rows, called by
each worker for its rows; the host limits the BLAS to one thread while two
workers run, so their GEMMs run side by side and no BLAS pool is woken to
spin.

The rows are the cells' own (``drivers.forward_row``/``backward_row``,
one per registry cell) called on views U units wide: a row takes its width
from its state row, and every per-row array of width m*H is m blocks of H
columns (the registry's gate blocks), unit j in column ``block*H + j``.  So a
worker gathers and scatters its columns with that rule, for any cell, and
what it writes is the general driver's layout (``drivers.py``): the same
``y``, final state, tape and gradients.  Projections (``proj_size``) are
not handled: they need all of ``m_t`` between steps.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from . import INLINE, JIT
from .atomics import wait_for_step
from .drivers import backward_row, forward_row
from .gemm import gemm
from .tiles import pack_columns, pack_gate_rows, panel_product


@nb.njit(**INLINE)
def unit_range(worker, workers, count):
    """The share ``[j0, j1)`` of ``worker``: an even split of ``count`` (units, or rows)."""
    return worker * count // workers, (worker + 1) * count // workers


@nb.njit(**INLINE)
def _scatter_blocks(row, own, H, j0, U):
    """``row[m*H + j0 : m*H + j0 + U] = own[m*U : (m+1)*U]`` for every block m of H columns
    (gates, saved widths): the worker's units of a row in the general layout."""
    for m in range(row.shape[0] // H):
        row[m * H + j0:m * H + j0 + U] = own[m * U:(m + 1) * U]


@nb.njit(**INLINE)
def _gather_blocks(own, row, H, j0, U):
    """The inverse of ``_scatter_blocks``: the worker's units of ``row`` into ``own``."""
    for m in range(row.shape[0] // H):
        own[m * U:(m + 1) * U] = row[m * H + j0:m * H + j0 + U]


@nb.njit(**INLINE)
def _zero_blocks(row, H, j0, U):
    """Zero the worker's units of ``row`` in every block of H columns."""
    for m in range(row.shape[0] // H):
        row[m * H + j0:m * H + j0 + U] = 0


@nb.njit(**JIT)
def forward_worker(rows, worker, workers, x, w_ih, b_ih, w_hh, b_hh, lengths, reverse, keep,
                   state, y, history, saved, h_steps, barrier, yield_address, w_ih_panels,
                   w_hh_panels, b_ih_packed, b_hh_packed, gx, gh, cell_state, y_step,
                   saved_step):
    """One worker's share of a layer-direction's forward over all T steps.

    Every worker of a call gets the same shared arrays and its own scratch.

    Parameters (outputs after the inputs they pair with)
    ----------
    rows : CellRows          the cell's rows (drivers.CellRows)
    worker, workers : int    this worker's index, and how many meet at the barrier
    x : (T, B, I)            C-contiguous
    w_ih : (G*H, I), b_ih : (G*H,), w_hh : (G*H, H), b_hh : (G*H,)
    lengths, reverse, keep   as for drivers.forward_sequence
    state : tuple of (B, .)  initial states on entry, final states on exit (the
                             worker reads and writes its own units' columns only)
    y, history, saved        as for drivers.forward_sequence (history and saved
                             are written only with ``keep``; the worker writes
                             its units' columns)
    h_steps : (2, B, H)      h_{t-1} alternating between two buffers: h_steps[0]
                             holds the initial h on entry
    barrier : (atomics.BARRIER_SIZE,) int64, zero on entry, shared by the workers
    yield_address : int      atomics.sched_yield_address()
    w_ih_panels : (P, I, NR), w_hh_panels : (P, H, NR)   scratch: this worker's gate
                             rows of W_ih and W_hh, packed (tiles.py; P*NR >= G*U)
    b_ih_packed, b_hh_packed : (G*U,)   scratch: the same rows of the biases
    gx : (C, B, P*NR)        scratch: x_t W_ih^T on the gate columns, for a chunk of C
                             steps at a time (one product over C*B rows: W_ih
                             is read once a chunk, not once a step)
    gh : (B, P*NR)           scratch: this step's recurrent product
    cell_state : tuple of (B, U)   scratch: the worker's units of each state
    y_step : (1, B, U)       scratch: what the row writes as y
    saved_step : tuple of (1, B, W*U)   scratch: what the row writes as saved

    Returns
    -------
    bool
        False if the barrier was aborted (the outputs are then incomplete).
    """
    T, B, I = x.shape
    H = state[0].shape[1]
    G = w_hh.shape[0] // H
    j0, j1 = unit_range(worker, workers, H)
    U = j1 - j0
    pack_gate_rows(w_ih_panels, w_ih, H, j0, U)     # this worker's rows, gate by gate
    pack_gate_rows(w_hh_panels, w_hh, H, j0, U)
    _gather_blocks(b_ih_packed, b_ih, H, j0, U)
    _gather_blocks(b_hh_packed, b_hh, H, j0, U)
    for k in range(len(state)):
        for b in range(B):
            cell_state[k][b] = state[k][b, j0:j1]
    x_rows = x.reshape(T * B, I)
    chunk = gx.shape[0]
    gx_rows = gx.reshape(chunk * B, gx.shape[2])
    first = 0                                   # the earliest step of the current chunk
    for s in range(T):
        t = T - 1 - s if reverse else s
        h_prev, h_next = h_steps[s % 2], h_steps[(s + 1) % 2]
        if s % chunk == 0:                      # x W_ih^T for the chunk's steps at once
            steps = min(chunk, T - s)
            first = t - steps + 1 if reverse else t
            panel_product(x_rows[first * B:(first + steps) * B], w_ih_panels, gx_rows)
        if keep:
            for k in range(len(state)):
                for b in range(B):
                    history[k][t, b, j0:j1] = cell_state[k][b]
        panel_product(h_prev, w_hh_panels, gh, s % 2 == 1)     # L2 reuse: tiles.py
        for b in range(B):
            if t < lengths[b]:
                gx_b = gx[t - first, b]
                for r in range(G * U):
                    gx_b[r] += b_ih_packed[r]
                forward_row(rows, t - first, 0, 0, b, gx, gh, b_hh_packed, cell_state, y_step,
                            saved_step)
                y[t, b, j0:j1] = y_step[0, b]
                if keep:
                    for k in range(len(saved)):
                        _scatter_blocks(saved[k][t, b], saved_step[k][0, b], H, j0, U)
            else:                               # padded step: state held, y = 0
                y[t, b, j0:j1] = 0
                if keep:
                    for k in range(len(saved)):
                        _zero_blocks(saved[k][t, b], H, j0, U)
            h_next[b, j0:j1] = cell_state[0][b]
        if workers > 1 and not wait_for_step(barrier, workers, s, yield_address):
            return False
    for k in range(len(state)):
        for b in range(B):
            state[k][b, j0:j1] = cell_state[k][b]
    return True


@nb.njit(**JIT)
def backward_worker(rows, worker, workers, blas, x, dy, w_ih, w_hh, lengths, reverse, history,
                    saved, carry, dgx, dgh, separate_dgh, dx, dw_ih, dw_hh, db_ih, db_hh,
                    barrier, yield_address, w_panels, cell_carry, dy_step, history_step,
                    saved_step, dgx_step, dgh_step, dh_recurrent):
    """One worker's share of a layer-direction's backward: BPTT, then the weight gradients.

    Parameters (outputs after the inputs they pair with)
    ----------
    rows, worker, workers, barrier, yield_address : as for forward_worker
    blas : (int, int, int)   the BLAS of the weight gradients (gemm.gemm)
    x : (T, B, I), dy : (T, B, H)   C-contiguous
    w_ih : (G*H, I), w_hh : (G*H, H)
    lengths, reverse, history, saved : as the forward kept them
    carry : tuple of (B, .)  gradient of the final states on entry, of the
                             initial states on exit (own units' columns)
    dgx, dgh : (T, B, G*H)   gradients of the gate pre-activations (drivers.
                             backward_sequence); the same array unless
                             ``separate_dgh``
    dx : (T, B, I)           rows split between the workers
    dw_ih, dw_hh, db_ih, db_hh : the parameter gradients (own gate rows)
    w_panels : (P, G*H, NR)  W_hh's columns of the worker's units, packed
                             (tiles.py; P*NR >= U)
    cell_carry : tuple of (B, U)   scratch: the worker's units of each carry
    dy_step : (1, B, U), history_step : tuple of (1, B, U),
    saved_step : tuple of (1, B, W*U), dgx_step, dgh_step : (1, B, G*U)
                             scratch: the step's columns for the rows (dgh_step
                             is dgx_step unless ``separate_dgh``)
    dh_recurrent : (B, P*NR) scratch: dgh_t W_hh on the worker's units

    Returns
    -------
    bool
        False if the barrier was aborted.
    """
    T, B, I = x.shape
    H = carry[0].shape[1]
    j0, j1 = unit_range(worker, workers, H)
    U = j1 - j0
    pack_columns(w_panels, w_hh, j0, U)         # W_hh's columns of this worker's units
    for k in range(len(carry)):
        for b in range(B):
            cell_carry[k][b] = carry[k][b, j0:j1]
    for s in range(T):
        t = s if reverse else T - 1 - s
        for b in range(B):
            if t < lengths[b]:
                dy_step[0, b] = dy[t, b, j0:j1]
                for k in range(len(history)):
                    history_step[k][0, b] = history[k][t, b, j0:j1]
                for k in range(len(saved)):
                    _gather_blocks(saved_step[k][0, b], saved[k][t, b], H, j0, U)
                backward_row(rows, 0, b, dy_step, cell_carry, saved_step, history_step,
                             dgx_step, dgh_step)
                _scatter_blocks(dgx[t, b], dgx_step[0, b], H, j0, U)
                if separate_dgh:
                    _scatter_blocks(dgh[t, b], dgh_step[0, b], H, j0, U)
            else:                               # padded step: the carries pass through
                _zero_blocks(dgx[t, b], H, j0, U)
                if separate_dgh:
                    _zero_blocks(dgh[t, b], H, j0, U)
        if workers > 1 and not wait_for_step(barrier, workers, s, yield_address):
            return False
        panel_product(dgh[t], w_panels, dh_recurrent, s % 2 == 1)
        dh = cell_carry[0]
        for b in range(B):                      # dh_{t-1} = direct part + dgh_t W_hh
            for u in range(U):
                dh[b, u] += dh_recurrent[b, u]
    for k in range(len(carry)):
        for b in range(B):
            carry[k][b, j0:j1] = cell_carry[k][b]
    if workers > 1 and not wait_for_step(barrier, workers, T, yield_address):
        return False                            # every worker's dgx, dgh columns written
    _weight_gradients(worker, workers, blas, x, history[0], dgx, dgh, w_ih, dx, dw_ih, dw_hh,
                      db_ih, db_hh)
    return True


@nb.njit(**INLINE)
def _weight_gradients(worker, workers, blas, x, h_prev, dgx, dgh, w_ih, dx, dw_ih, dw_hh, db_ih,
                      db_hh):
    """The worker's share of ``backends.weight_gradients``: a block of gate rows of
    dW_ih = dG_x^T X, dW_hh = dG_h^T H_prev, db_ih and db_hh (sums over all T*B rows),
    and a block of the rows of dX = dG_x W_ih.

    Blocks of whole rows, not the worker's units: one GEMM each, with M = G*H /
    workers rows (the units' G gate blocks would make G GEMMs of M = U).
    """
    T, B, I = x.shape
    H = h_prev.shape[2]
    GH = dgx.shape[2]
    rows = T * B
    x_rows, h_rows = x.reshape(rows, I), h_prev.reshape(rows, H)
    dgx_rows, dgh_rows = dgx.reshape(rows, GH), dgh.reshape(rows, GH)
    c0, c1 = unit_range(worker, workers, GH)
    gemm(blas, dgx_rows[:, c0:c1].T, x_rows, dw_ih[c0:c1])
    gemm(blas, dgh_rows[:, c0:c1].T, h_rows, dw_hh[c0:c1])
    sums = np.zeros((2, c1 - c0))               # float64 sums over T*B rows
    for row in range(rows):
        for c in range(c0, c1):
            sums[0, c - c0] += dgx_rows[row, c]
            sums[1, c - c0] += dgh_rows[row, c]
    for c in range(c0, c1):
        db_ih[c] = sums[0, c - c0]
        db_hh[c] = sums[1, c - c0]
    r0, r1 = unit_range(worker, workers, rows)
    gemm(blas, dgx_rows[r0:r1], w_ih, dx.reshape(rows, I)[r0:r1])
