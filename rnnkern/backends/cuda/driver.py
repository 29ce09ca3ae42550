"""CuPy backend: cuBLAS GEMMs and the fused CUDA step kernels of ``kernels/rnn_cells.cu``.

See ``rnnkern.backends`` for the contract.  One layer-direction runs as::

    forward   gx = X W_ih^T + b_ih                      one GEMM, all T steps
              per step:  gh = h_{t-1} W_hh^T            GEMM
                         <cell>_forward_step            ONE fused kernel
    backward  per step:  <cell>_backward_step           ONE fused kernel
                         dh_recurrent = dgh_t W_hh      GEMM
              dW_ih = dGx^T X,  dW_hh = dGh^T H_prev,   GEMMs over all steps
              db_ih = sum dGx,  db_hh = sum dGh,  dX = dGx W_ih

The time loop only enqueues work on the current stream: no host
synchronisation, no device-to-host copy.

The orchestration (``forward_direction_with`` / ``backward_direction_with``)
is written against a *launcher*: an object with ``xp`` (the array module) and
``launch(name, grid, block, args)``.  Here it is CuPy with the RawModule
kernels; ``rnnkern.cuda_emulation`` gives NumPy with the same ``.cu`` sources
compiled for the host, so the tests without a GPU run this very code.
"""

from __future__ import annotations

import functools

import numpy as np

from . import int32_lengths, time_order
from ..cuda_modules import check_launch, elementwise_launch, get_kernel, kernel_name
from ..dispatch import namespace_of

__all__ = ["forward_direction", "backward_direction",
           "forward_direction_with", "backward_direction_with"]

# The parameter lists of the step kernels in kernels/rnn_cells.cu, pointers
# only, in order; the scalars (t, batch, hidden) follow.
_RNN_FORWARD = ("h_next", "y_t", "gates_t", "gx_t", "gh", "b_hh", "h_prev", "lengths")
_RNN_BACKWARD = ("dgx_t", "dh_prev_direct", "dy_t", "dh_direct", "dh_recurrent", "gates_t",
                 "lengths")
_FORWARD_PARAMETERS = {
    "rnn_tanh": _RNN_FORWARD,
    "rnn_relu": _RNN_FORWARD,
    "lstm": ("h_next", "c_next", "y_t", "gates_t", "gx_t", "gh", "b_hh", "h_prev", "c_prev",
             "lengths"),
    "gru": ("h_next", "y_t", "gates_t", "gh_n_t", "gx_t", "gh", "b_hh", "h_prev", "lengths"),
}
_BACKWARD_PARAMETERS = {
    "rnn_tanh": _RNN_BACKWARD,
    "rnn_relu": _RNN_BACKWARD,
    "lstm": ("dgx_t", "dh_prev_direct", "dc_prev", "dy_t", "dh_direct", "dh_recurrent", "dc",
             "gates_t", "c_prev", "lengths"),
    "gru": ("dgx_t", "dgh_t", "dh_prev_direct", "dy_t", "dh_direct", "dh_recurrent",
            "gates_t", "gh_n_t", "h_prev", "lengths"),
}


class _CupyLauncher:
    """Launches the RawModule kernels on CuPy arrays (current device and stream)."""

    def __init__(self):
        import cupy

        self.xp = cupy

    def launch(self, name, grid, block, args):
        check_launch(name, grid, block, args, self.xp)
        get_kernel(name)(grid, block, tuple(args))


@functools.cache
def _cupy_launcher():
    return _CupyLauncher()


def forward_direction(cell, x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, reverse):
    """Run one layer-direction on CuPy arrays (see ``rnnkern.backends``)."""
    namespace_of(x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths,
                 names=["x", "weight_ih", "weight_hh", "bias_ih", "bias_hh", "h0", "c0",
                        "lengths"])
    with x.device:
        return forward_direction_with(_cupy_launcher(), cell, x, w_ih, w_hh, b_ih, b_hh,
                                      h0, c0, lengths, reverse)


def backward_direction(cell, dy, dh_n, dc_n, saved):
    """Backpropagate one layer-direction on CuPy arrays (see ``rnnkern.backends``)."""
    namespace_of(dy, dh_n, dc_n, saved["x_flat"], names=["dy", "dh_n", "dc_n", "x of the forward"])
    with dy.device:
        return backward_direction_with(_cupy_launcher(), cell, dy, dh_n, dc_n, saved)


def _state_slots(t, reverse):
    """(slot read, slot written) of the (T+1, B, H) state buffer at time t.

    Slot t holds the state before step t going forward (h0 in slot 0, h_n in
    slot T), slot t+1 going in reverse (h0 in slot T, h_n in slot 0), so
    ``states[0:T]`` (forward) or ``states[1:T+1]`` (reverse) are the states
    each step started from, in time order, without a copy.
    """
    return (t + 1, t) if reverse else (t, t + 1)


def forward_direction_with(launcher, cell, x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, reverse):
    """The forward orchestration, with kernels run by ``launcher``.

    Parameters and returns as ``forward_direction`` in ``rnnkern.backends``;
    ``launcher`` has ``xp`` (the array module of the arrays) and
    ``launch(name, grid, block, args)``.
    """
    xp = launcher.xp
    T, B, I = x.shape
    H = w_hh.shape[1]
    GH = cell.num_gates * H
    dtype = x.dtype
    x_flat = xp.ascontiguousarray(x).reshape(T * B, I)
    gx = xp.matmul(x_flat, w_ih.T).reshape(T, B, GH)    # X W_ih^T: one GEMM for all steps
    gx += b_ih
    lengths = int32_lengths(xp, lengths, B, T)
    w_hh_t = xp.ascontiguousarray(w_hh.T)              # (H, G*H), read by every step's GEMM
    first_slot, last_slot = (T, 0) if reverse else (0, T)      # h0 and h_n, see _state_slots
    h_states = xp.empty((T + 1, B, H), dtype=dtype)
    h_states[first_slot] = h0
    c_states = None
    if cell.has_cell_state:
        c_states = xp.empty((T + 1, B, H), dtype=dtype)
        c_states[first_slot] = c0
    buffers = {
        "gh": xp.empty((B, GH), dtype=dtype),
        "b_hh": xp.ascontiguousarray(b_hh),
        "lengths": lengths,
    }
    y = xp.empty((T, B, H), dtype=dtype)
    gates = xp.empty((T, B, GH), dtype=dtype)
    gh_n = xp.empty((T, B, H), dtype=dtype) if cell.keeps_gh_n else None

    name = kernel_name(cell.name, "forward", dtype)
    parameters = _FORWARD_PARAMETERS[cell.name]
    grid, block = elementwise_launch(B * H)
    sizes = (np.int32(B), np.int32(H))
    for t in time_order(T, reverse):
        prev, nxt = _state_slots(t, reverse)
        xp.matmul(h_states[prev], w_hh_t, out=buffers["gh"])   # gh = h_{t-1} W_hh^T
        buffers.update(h_next=h_states[nxt], h_prev=h_states[prev], y_t=y[t], gates_t=gates[t],
                       gx_t=gx[t])
        if c_states is not None:
            buffers.update(c_next=c_states[nxt], c_prev=c_states[prev])
        if gh_n is not None:
            buffers["gh_n_t"] = gh_n[t]
        launcher.launch(name, grid, block, [buffers[p] for p in parameters] + [np.int32(t), *sizes])

    seen = slice(1, T + 1) if reverse else slice(0, T)       # h_{t-1} of each step, in time order
    saved = {"x_flat": x_flat, "w_ih": w_ih, "w_hh": w_hh, "lengths": lengths,
             "reverse": reverse, "gates": gates, "gh_n": gh_n, "h_prev": h_states[seen],
             "c_prev": None if c_states is None else c_states[seen]}
    c_n = None if c_states is None else c_states[last_slot]
    return y, h_states[last_slot], c_n, saved


def backward_direction_with(launcher, cell, dy, dh_n, dc_n, saved):
    """The BPTT orchestration, with kernels run by ``launcher``.

    Parameters and returns as ``backward_direction`` in ``rnnkern.backends``.
    """
    xp = launcher.xp
    x_flat, w_ih, w_hh = saved["x_flat"], saved["w_ih"], saved["w_hh"]
    gates, h_prev = saved["gates"], saved["h_prev"]
    T, B, H = h_prev.shape
    GH = gates.shape[-1]
    dtype = dy.dtype
    dy = xp.ascontiguousarray(dy)
    dgx = xp.empty((T, B, GH), dtype=dtype)
    dgh = xp.empty((T, B, GH), dtype=dtype) if cell.keeps_gh_n else dgx
    # Ping-pong buffers: step k reads [k % 2] and writes [1 - k % 2].
    dh_direct = xp.empty((2, B, H), dtype=dtype)
    dh_direct[0] = dh_n
    dc = None
    if cell.has_cell_state:
        dc = xp.empty((2, B, H), dtype=dtype)
        dc[0] = dc_n
    dh_recurrent = xp.zeros((B, H), dtype=dtype)       # dgh_{t+1} W_hh; none after the last step
    buffers = {"dh_recurrent": dh_recurrent, "lengths": saved["lengths"]}

    name = kernel_name(cell.name, "backward", dtype)
    parameters = _BACKWARD_PARAMETERS[cell.name]
    grid, block = elementwise_launch(B * H)
    sizes = (np.int32(B), np.int32(H))
    for k, t in enumerate(time_order(T, not saved["reverse"])):
        read, write = k % 2, 1 - k % 2
        buffers.update(dgx_t=dgx[t], dgh_t=dgh[t], dy_t=dy[t], gates_t=gates[t],
                       h_prev=h_prev[t], dh_direct=dh_direct[read],
                       dh_prev_direct=dh_direct[write])
        if dc is not None:
            buffers.update(dc=dc[read], dc_prev=dc[write], c_prev=saved["c_prev"][t])
        if saved["gh_n"] is not None:
            buffers["gh_n_t"] = saved["gh_n"][t]
        launcher.launch(name, grid, block, [buffers[p] for p in parameters] + [np.int32(t), *sizes])
        xp.matmul(dgh[t], w_hh, out=dh_recurrent)          # the part of dh_{t-1} through W_hh

    last = T % 2
    dh0 = dh_direct[last] + dh_recurrent
    dc0 = None if dc is None else dc[last]
    dgx_flat, dgh_flat = dgx.reshape(T * B, GH), dgh.reshape(T * B, GH)
    dw_ih = xp.matmul(dgx_flat.T, x_flat)                      # dGx^T X
    dw_hh = xp.matmul(dgh_flat.T, h_prev.reshape(T * B, H))    # dGh^T H_prev
    db_ih = dgx_flat.sum(axis=0)
    db_hh = dgh_flat.sum(axis=0)
    dx = xp.matmul(dgx_flat, w_ih).reshape(T, B, w_ih.shape[1])    # dGx W_ih
    return dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh
