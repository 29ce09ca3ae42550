"""The small-batch forward driver: W_hh split by hidden units over workers, resident in cache.

At batch 1-8 a step's recurrent product is a matrix-vector product: it
reads all of W_hh (1 MB for an LSTM of 256 float32 units) for 2-16 FLOPs a
weight, so its cost is the bytes of W_hh over the bandwidth of wherever
W_hh lives.  Here ``workers`` OS threads (one per core, 1 or 2) each own a
contiguous range of hidden units ``j0 <= j < j1`` with ALL their gate rows,
pack that slice of W_hh once per call (in their own thread, so it lands in
their own core's L2 and stays there for the whole sequence), and per step:

    gh[b, g*U + u] = sum_k h_{t-1}[b, k] W_hh[g*H + j0 + u, k]     (u < U = j1 - j0)
    the cell's forward row on the worker's units (its gate blocks U wide)
    h_t[b, j0:j1] -> the shared, double-buffered h
    barrier (kernels.numba.atomics.wait_for_step)

No BLAS call and no Python between steps.  Because each worker reads the
whole of ``h_{t-1}`` but writes only its own units of ``h_t``, and ``h``
alternates between two buffers, one barrier a step is enough: a worker
that passes the barrier of step s writes the buffer that every worker
finished reading before arriving there.

The rows are the cells' own (``drivers.forward_row``, one per registry
cell) called on views U units wide: a row takes its width from its state
row (``state[0][b].shape[0]``), and every per-row array of width m*H is m
blocks of H columns (the registry's gate blocks), unit j in column
``block*H + j``.  So the worker gathers its gate columns of ``gx`` and
scatters its columns of ``y``, ``history`` and ``saved`` with that rule,
for any cell, and what it writes is the general driver's layout
(``drivers.forward_sequence``): the same ``y``, final state and BPTT tape.
Projections (``proj_size``) are not handled: they need all of ``m_t``
between steps (the planner sends them to the general driver).
"""

from __future__ import annotations

import numba as nb

from . import INLINE, JIT
from .activations import one
from .atomics import wait_for_step
from .drivers import forward_row


@nb.njit(**INLINE)
def unit_range(worker, workers, hidden):
    """The hidden units ``[j0, j1)`` of ``worker``: an even split of ``hidden``."""
    return worker * hidden // workers, (worker + 1) * hidden // workers


@nb.njit(**INLINE)
def _dot(w_r, h_b):
    """sum_k w_r[k] h_b[k]."""
    acc = one(h_b[0]) - one(h_b[0])
    for k in range(h_b.shape[0]):
        acc += w_r[k] * h_b[k]
    return acc


@nb.njit(**INLINE)
def _recurrent_product(t, lengths, h_prev, w_packed, gh):
    """gh[b] = h_prev[b] @ w_packed^T for the active rows b.

    Four rows of W at a time against one row of h: four dot products in one
    loop over k (vectorized over k, reassociated), so each load of h_b
    serves four rows and four reductions run side by side.  (Measured on Zen
    4, float32, 512 rows x 256: 75-110 GB/s of W at B = 1, about 80 GFLOP/s
    at B = 8; one dot product at a time gave 70 GB/s and 45 GFLOP/s.)
    """
    B, P = h_prev.shape
    R = w_packed.shape[0]
    for r in range(0, R - 3, 4):
        w0, w1, w2, w3 = w_packed[r], w_packed[r + 1], w_packed[r + 2], w_packed[r + 3]
        for b in range(B):
            if t < lengths[b]:
                h_b = h_prev[b]
                a0 = a1 = a2 = a3 = one(h_b[0]) - one(h_b[0])
                for k in range(P):
                    hk = h_b[k]
                    a0 += w0[k] * hk
                    a1 += w1[k] * hk
                    a2 += w2[k] * hk
                    a3 += w3[k] * hk
                gh[b, r], gh[b, r + 1], gh[b, r + 2], gh[b, r + 3] = a0, a1, a2, a3
    for r in range(R - R % 4, R):
        for b in range(B):
            if t < lengths[b]:
                gh[b, r] = _dot(w_packed[r], h_prev[b])


@nb.njit(**JIT)
def forward_worker(rows, worker, workers, gx, w_hh, b_hh, lengths, reverse, keep, state, y,
                   history, saved, h_steps, barrier, yield_address,
                   w_packed, b_packed, gx_step, gh, cell_state, y_step, saved_step):
    """One worker's share of a layer-direction's forward over all T steps.

    Every worker of a call gets the same shared arrays and its own scratch.

    Parameters (outputs after the inputs they pair with)
    ----------
    rows : CellRows          the cell's rows (drivers.CellRows)
    worker, workers : int    this worker's index, and how many meet at the barrier
    gx : (T, B, G*H)         x @ W_ih^T + b_ih, as for drivers.forward_sequence
    w_hh : (G*H, H)          C-contiguous
    b_hh : (G*H,)
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
    w_packed : (G*U, H)      scratch: this worker's gate rows of W_hh, packed here
    b_packed : (G*U,)        scratch: the same rows of b_hh
    gx_step : (1, B, G*U)    scratch: this step's gate columns of gx
    gh : (B, G*U)            scratch: this step's recurrent product
    cell_state : tuple of (B, U)   scratch: the worker's units of each state
    y_step : (1, B, U)       scratch: what the row writes as y
    saved_step : tuple of (1, B, W*U)   scratch: what the row writes as saved

    Returns
    -------
    bool
        False if the barrier was aborted (the outputs are then incomplete).
    """
    T, B = gx.shape[0], gx.shape[1]
    H = state[0].shape[1]
    G = w_hh.shape[0] // H
    j0, j1 = unit_range(worker, workers, H)
    U = j1 - j0
    for g in range(G):                          # pack: this worker's rows, gate by gate
        for u in range(U):
            w_packed[g * U + u] = w_hh[g * H + j0 + u]
            b_packed[g * U + u] = b_hh[g * H + j0 + u]
    for k in range(len(state)):
        for b in range(B):
            cell_state[k][b] = state[k][b, j0:j1]
    for s in range(T):
        t = T - 1 - s if reverse else s
        h_prev, h_next = h_steps[s % 2], h_steps[(s + 1) % 2]
        if keep:
            for k in range(len(state)):
                for b in range(B):
                    history[k][t, b, j0:j1] = cell_state[k][b]
        _recurrent_product(t, lengths, h_prev, w_packed, gh)
        for b in range(B):
            if t < lengths[b]:
                for g in range(G):
                    gx_step[0, b, g * U:(g + 1) * U] = gx[t, b, g * H + j0:g * H + j1]
                forward_row(rows, 0, 0, 0, b, gx_step, gh, b_packed, cell_state, y_step,
                            saved_step)
                y[t, b, j0:j1] = y_step[0, b]
                if keep:
                    for k in range(len(saved)):
                        for block in range(saved[k].shape[2] // H):
                            saved[k][t, b, block * H + j0:block * H + j1] = \
                                saved_step[k][0, b, block * U:(block + 1) * U]
            else:                               # padded step: state held, y = 0
                y[t, b, j0:j1] = 0
                if keep:
                    for k in range(len(saved)):
                        for block in range(saved[k].shape[2] // H):
                            saved[k][t, b, block * H + j0:block * H + j1] = 0
            h_next[b, j0:j1] = cell_state[0][b]
        if workers > 1 and not wait_for_step(barrier, workers, s, yield_address):
            return False
    for k in range(len(state)):
        for b in range(B):
            state[k][b, j0:j1] = cell_state[k][b]
    return True
