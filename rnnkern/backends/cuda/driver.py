"""The orchestration of one layer-direction on the CUDA kernels, for any cell.

See ``rnnkern.backends`` for the contract.  A layer-direction takes one of
two paths (``planner.plan_direction`` picks it)::

    both          gx = X W_ih^T + b_ih                      one GEMM, all T steps
    persistent    rnn_persistent_forward<T, Cell>           ONE cooperative launch
                  rnn_persistent_backward<T, Cell>          ONE cooperative launch
    step          forward, per step:
                      gh = h_{t-1} W_hh^T                   GEMM
                      rnn_forward_step<T, Cell, I>          ONE fused kernel
                  backward, per step:
                      rnn_backward_step<T, Cell, I>         ONE fused kernel
                      dh_recurrent = dgh_t W_hh             GEMM
    both          weight_gradients: dW_ih, dW_hh, db, dX    GEMMs over all T*B rows

Both paths fill the same buffers in the same layouts (states in slots,
saved arrays, gate gradients), so the tape, the weight gradients and the
tests do not care which ran.  Nothing here synchronises with the host or
copies to it: the calls only enqueue work on the current stream.  The
launch arguments are checked once per direction (the step path's other
steps pass slices of the same buffers).

Everything that depends on the cell comes from its registry entry: one
buffer per state (``Cell.state_names``), per saved array (``Cell.saved``,
``width * H`` columns) and per pre-activation gradient
(``Cell.step_gradients``), passed to the kernels as groups (tuples), in
registry order; the kernel names from ``Cell.kernels["cuda"]``.

The functions here are written against a *launcher*
(``rnnkern.backends.cuda.launchers``): ``rnnkern.backends.cuda`` runs them
with CuPy, cuBLAS and the RawModule kernels;
``rnnkern.backends.cuda.emulation`` with NumPy and the same ``.cu`` sources
compiled for the host, so the tests without a GPU run this very code, and
count the same launches.
"""

from __future__ import annotations

import functools
import types

import numpy as np

from .. import int32_lengths, step_of, time_order, weight_gradients
from .modules import (check_launch, elementwise_launch, index_type, kernel_name,
                      persistent_kernel_name)
from .planner import plan_direction

__all__ = ["forward_direction_with", "backward_direction_with", "backend_with", "forward_step_arguments",
           "backward_step_arguments", "step_launch"]


def backend_with(launcher, name=None):
    """This orchestration on ``launcher`` as a backend (``forward_direction``,
    ``backward_direction`` and ``step`` of the contract in ``rnnkern.backends``).

    The emulated backend, the metrics' counting runs and the tests use it;
    ``launcher.counts`` then counts the host calls of every direction run.
    """
    forward_direction = functools.partial(forward_direction_with, launcher)
    return types.SimpleNamespace(
        __name__=name or f"{__name__}.backend_with({type(launcher).__name__})",
        forward_direction=forward_direction,
        backward_direction=functools.partial(backward_direction_with, launcher),
        step=step_of(forward_direction))


def forward_step_arguments(state_next, y_t, saved_t, gx_t, gh, b_hh, state_prev, lengths, t,
                           batch, hidden):
    """The arguments of ``rnn_forward_step<T, Cell, Index>`` in its parameter order.

    Parameters
    ----------
    state_next : sequence of (B, H) arrays    the states after step t (outputs)
    y_t : (B, H) array                        output of step t
    saved_t : sequence of (B, w*H) arrays     one per ``Cell.saved`` (outputs)
    gx_t, gh : (B, G*H) arrays                x_t W_ih^T + b_ih, h_{t-1} W_hh^T
    b_hh : (G*H,) array
    state_prev : sequence of (B, H) arrays    the states entering step t
    lengths : (B,) int32 array
    t, batch, hidden : int

    Returns
    -------
    list
        Arrays, tuples of arrays (the cell's groups) and ``np.int32`` sizes.
    """
    return [tuple(state_next), y_t, tuple(saved_t), gx_t, gh, b_hh, tuple(state_prev), lengths,
            np.int32(t), np.int32(batch), np.int32(hidden)]


def backward_step_arguments(dgates_t, dstate_prev, dy_t, dh_recurrent, dstate, saved_t,
                            state_prev, lengths, t, batch, hidden):
    """The arguments of ``rnn_backward_step<T, Cell, Index>`` in its parameter order.

    Parameters
    ----------
    dgates_t : sequence of (B, G*H) arrays   one per ``Cell.step_gradients`` (outputs)
    dstate_prev : sequence of (B, H) arrays  gradients of the states entering step t,
                                             dh without the part through W_hh (outputs)
    dy_t : (B, H) array
    dh_recurrent : (B, H) array              dgh_{t+1} W_hh
    dstate : sequence of (B, H) arrays       gradients of the states after step t,
                                             dh without the part through W_hh
    saved_t : sequence of (B, w*H) arrays    what the forward step kept
    state_prev : sequence of (B, H) arrays   the states entering step t
    lengths : (B,) int32 array
    t, batch, hidden : int
    """
    return [tuple(dgates_t), tuple(dstate_prev), dy_t, dh_recurrent, tuple(dstate),
            tuple(saved_t), tuple(state_prev), lengths, np.int32(t), np.int32(batch),
            np.int32(hidden)]


def step_launch(cell, step, dtype, batch, hidden):
    """The step kernel of a direction and its launch: ``(name, grid, block)``.

    One thread per element of the (B, H) state (``elementwise_launch``); the
    32-bit instantiation where every index fits (``index_type``), else the
    64-bit one.
    """
    grid, block = elementwise_launch(batch * hidden)
    index = index_type(cell, batch, hidden, grid[0] * block[0])
    return kernel_name(cell, step, dtype, index), grid, block


def _step_masks(xp, lengths, steps, dtype):
    """``(active, inactive)``, ``(T, B, 1)`` arrays of 1 and 0: row b active at step t.

    Computed once per direction, so the projection's per-step masking is one
    elementwise product into a buffer, with nothing allocated in the loop.
    """
    active = (lengths.reshape(1, -1, 1) > xp.arange(steps).reshape(-1, 1, 1)).astype(dtype)
    return active, 1 - active


def _state_slots(steps, reverse, keep):
    """Where the states live in their ``(slots, B, H)`` buffers.

    Returns ``(schedule, first, last, slots)``: ``schedule`` lists ``(t, slot
    read, slot written)`` in the order the direction visits the steps;
    ``first``/``last`` hold the initial and the final state.

    With ``keep`` there are T + 1 slots: slot t holds the state before step t
    going forward (initial state in slot 0, final in slot T), slot t + 1 in
    reverse (initial in slot T, final in slot 0), so slots ``0:T`` (forward)
    or ``1:T+1`` (reverse) are the states each step started from, in time
    order, without a copy.  Without ``keep`` (inference) two slots ping-pong.
    """
    order = time_order(steps, reverse)
    if not keep:
        return [(t, k % 2, 1 - k % 2) for k, t in enumerate(order)], 0, steps % 2, 2
    schedule = [(t, t + 1, t) if reverse else (t, t, t + 1) for t in order]
    return schedule, (steps if reverse else 0), (0 if reverse else steps), steps + 1


def forward_direction_with(launcher, cell, x, params, state, lengths, reverse, *, keep=True):
    """The forward orchestration, with kernels run by ``launcher``.

    Parameters and returns as ``forward_direction`` in ``rnnkern.backends``;
    ``launcher`` as in ``rnnkern.backends.cuda.launchers``.  The path
    (persistent or step) is ``planner.plan_direction``'s; both fill the same
    buffers, so the tape and the backward do not depend on it.

    With a projection (``weight_hr`` in ``params``, LSTM ``proj_size``; step
    path only) the step kernel computes ``m_t = o tanh(c_t)`` in place of
    ``h`` (its state slot 0 and ``y_t`` are H wide buffers of their own), and
    each step ends with ``h_t = m_t W_hr^T`` (GEMM) where the row is active.
    """
    xp = launcher.xp
    w_ih, w_hh, w_hr = params["weight_ih"], params["weight_hh"], params.get("weight_hr")
    T, B, I = x.shape
    GH, P = w_hh.shape
    H = GH // cell.num_gates
    dtype = x.dtype
    plan = plan_direction(cell, dtype, B, H, projected=w_hr is not None,
                          limits=launcher.device_limits())
    x_rows = xp.ascontiguousarray(x).reshape(T * B, I)
    gx = launcher.matmul(x_rows, w_ih.T).reshape(T, B, GH)   # X W_ih^T: one GEMM, all steps
    gx += params["bias_ih"]
    lengths = int32_lengths(xp, lengths, B, T)
    b_hh = xp.ascontiguousarray(params["bias_hh"])
    schedule, first, last, slots = _state_slots(T, reverse, keep)
    states = tuple(xp.empty((slots, B, s.shape[-1]), dtype=dtype) for s in state)
    for buffer, initial in zip(states, state, strict=True):
        buffer[first] = initial
    y = xp.empty((T, B, P), dtype=dtype)
    # what BPTT keeps, one array per Cell.saved; inference overwrites one step
    saved = tuple(xp.empty((T if keep else 1, B, s.width * H), dtype=dtype) for s in cell.saved)
    buffers = {"gx": gx, "b_hh": b_hh, "lengths": lengths, "states": states, "y": y,
               "saved": saved}
    if plan.path == "persistent":
        _forward_persistent(launcher, cell, plan, buffers, xp.ascontiguousarray(w_hh),
                            reverse, keep)
        cell_y = None
    else:
        cell_y = _forward_steps(launcher, cell, buffers, w_hh, w_hr, schedule, reverse, keep)

    state_n = tuple(s[last] for s in states)
    if not keep:
        return y, state_n, None
    seen = slice(1, T + 1) if reverse else slice(0, T)   # the states entering each step
    tape = {"x_rows": x_rows, "w_ih": w_ih, "w_hh": w_hh, "w_hr": w_hr, "lengths": lengths,
            "reverse": reverse, "history": tuple(s[seen] for s in states), "saved": saved,
            "m": cell_y, "plan": plan}
    return y, state_n, tape


def _forward_persistent(launcher, cell, plan, buffers, w_hh, reverse, keep):
    """The whole direction in ONE cooperative launch of ``rnn_persistent_forward``."""
    xp = launcher.xp
    T, B, GH = buffers["gx"].shape
    name = persistent_kernel_name(cell, "forward", buffers["gx"].dtype)
    args = [buffers["states"], buffers["y"], buffers["saved"], buffers["gx"], w_hh,
            buffers["b_hh"], buffers["lengths"], np.int32(T), np.int32(B),
            np.int32(GH // cell.num_gates), np.int32(plan.units), np.int32(reverse),
            np.int32(keep)]
    grid, block = (plan.blocks,), (plan.threads,)
    check_launch(name, grid, block, args, xp)
    launcher.launch(name, grid, block, args, shared_bytes=plan.forward_shared_bytes,
                    cooperative=True)


def _forward_steps(launcher, cell, buffers, w_hh, w_hr, schedule, reverse, keep):
    """The step path: per step a GEMM and one ``rnn_forward_step``.

    Without a projection the loop runs as a captured graph (``_as_graph``):
    one host call per direction instead of two per step.  Returns the
    kernel's own ``m_t`` of every step with a projection (the tape's
    ``"m"``), else None.
    """
    xp = launcher.xp
    T, B, GH = buffers["gx"].shape
    loop = dict(buffers, w_hh_t=w_hh.T, gh=xp.empty((B, GH), dtype=buffers["gx"].dtype))
    if w_hr is not None:
        loop["w_hh_t"] = xp.ascontiguousarray(w_hh.T)
        return _enqueue_forward_steps(launcher, cell, loop, schedule, keep, w_hr)
    key = ("forward", cell.name, str(loop["gx"].dtype), _device_of(loop["gx"]), T, B, GH,
           w_hh.shape[1], reverse, keep)
    initial = schedule[0][1]                     # the slot the first step reads
    _as_graph(launcher, key, loop,
              inputs=("gx", "b_hh", "lengths", "w_hh_t", ("states", initial)),
              outputs=("states", "y", "saved") if keep else ("states", "y"),
              enqueue=lambda on: _enqueue_forward_steps(launcher, cell, on, schedule, keep))
    return None


def _enqueue_forward_steps(launcher, cell, loop, schedule, keep, w_hr=None):
    """Enqueue the step path's time loop on the buffers of ``loop``.

    Without a projection only launches and GEMMs, which ``capture`` records:
    nothing else may run here then (it would run once, at capture).
    """
    xp = launcher.xp
    gx, states, y, saved, lengths, gh = (loop[k] for k in ("gx", "states", "y", "saved",
                                                           "lengths", "gh"))
    T, B, GH = gx.shape
    H = GH // cell.num_gates
    dtype = gx.dtype
    cell_y = None
    if w_hr is not None:         # the kernel's h: m_t, ping-pong; m_t of every step kept
        cell_h = xp.zeros((2, B, H), dtype=dtype)
        cell_y = xp.empty((T if keep else 1, B, H), dtype=dtype)
        w_hr_t = xp.ascontiguousarray(w_hr.T)           # (H, P)
        projected = xp.empty((B, w_hr.shape[0]), dtype=dtype)
        active, inactive = _step_masks(xp, lengths, T, dtype)

    name, grid, block = step_launch(cell, "forward", dtype, B, H)
    for k, (t, prev, nxt) in enumerate(schedule):
        launcher.matmul(states[0][prev], loop["w_hh_t"], out=gh)    # gh = h_{t-1} W_hh^T
        step = t if keep else 0
        state_next, state_prev = [s[nxt] for s in states], [s[prev] for s in states]
        y_t = y[t]
        if w_hr is not None:
            state_next[0], state_prev[0] = cell_h[1 - k % 2], cell_h[k % 2]
            y_t = cell_y[step]
        args = forward_step_arguments(state_next, y_t, [a[step] for a in saved], gx[t], gh,
                                      loop["b_hh"], state_prev, lengths, t, B, H)
        if k == 0:
            check_launch(name, grid, block, args, xp)
        launcher.launch(name, grid, block, args)
        if w_hr is not None:                           # h_t = m_t W_hr^T where active
            launcher.matmul(state_next[0], w_hr_t, out=projected)
            xp.multiply(projected, active[t], out=y[t])
            xp.multiply(states[0][prev], inactive[t], out=states[0][nxt])   # held where inactive
            states[0][nxt] += y[t]
    return cell_y


def _device_of(a):
    """The device id of a CuPy array (None for NumPy): graphs bind one device's buffers."""
    return getattr(getattr(a, "device", None), "id", None)


def _as_graph(launcher, key, buffers, inputs, outputs, enqueue):
    """Run ``enqueue(on)``'s launches as a graph captured once per ``key``.

    A graph binds the addresses of the buffers it was captured on, so each
    key owns a workspace: one buffer like each of ``buffers`` (arrays, or
    tuples of arrays), created with the graph and kept with it in
    ``launcher.graphs``.  Per call: ``inputs`` are copied into the
    workspace (a name, or ``(name, k)`` for element ``k`` of each array,
    e.g. the states' initial slot), the graph is replayed, ``outputs`` are
    copied out into ``buffers`` (fresh arrays of this call, which may escape
    to the caller and the tape).  Copies are device-side and cost far less
    than the per-step host calls they save.
    """
    xp = launcher.xp
    entry = launcher.graphs.get(key)
    if entry is None:
        workspace = {name: _like(xp, buffer) for name, buffer in buffers.items()}
        entry = (launcher.capture(lambda: enqueue(workspace)), workspace)
        launcher.graphs.put(key, entry)
    graph, workspace = entry
    for entry_name in inputs:
        name, index = entry_name if isinstance(entry_name, tuple) else (entry_name, ...)
        _copy(xp, workspace[name], buffers[name], index)
    launcher.replay(graph)
    for name in outputs:
        _copy(xp, buffers[name], workspace[name])


def _like(xp, buffer):
    if isinstance(buffer, tuple):
        return tuple(_like(xp, b) for b in buffer)
    return xp.empty(buffer.shape, dtype=buffer.dtype)


def _copy(xp, destination, source, index=...):
    """``destination[index] = source[index]`` for an array or each of a tuple's."""
    if isinstance(destination, tuple):
        for d, s in zip(destination, source, strict=True):
            _copy(xp, d, s, index)
    else:
        xp.copyto(destination[index], source[index])


def backward_direction_with(launcher, cell, dy, dstate_n, tape):
    """The BPTT orchestration, with kernels run by ``launcher``.

    Parameters and returns as ``backward_direction`` in ``rnnkern.backends``.
    The path is the forward's (``tape["plan"]``).

    With a projection each step starts with ``dm = dh_t W_hr`` (``dh_t``: all
    of the gradient reaching ``h_t``), which the kernel sees as its ``dh``;
    the direct path of ``h_{t-1}`` is zero (it enters only through W_hh), and
    ``dW_hr = sum_t dh_t^T m_t`` is one GEMM at the end.
    """
    xp = launcher.xp
    x_rows, w_ih, w_hh = tape["x_rows"], tape["w_ih"], tape["w_hh"]
    history, w_hr = tape["history"], tape["w_hr"]
    T, B, P = history[0].shape
    GH = w_hh.shape[0]
    dtype = dy.dtype
    dy = xp.ascontiguousarray(dy)
    # d gx, and d gh where the cell writes it apart (else d gh is d gx)
    dgates = tuple(xp.empty((T, B, GH), dtype=dtype) for _ in cell.step_gradients)
    if tape["plan"].path == "persistent":
        dstate0, dh_projected = _backward_persistent(launcher, cell, tape, dy, dstate_n,
                                                     dgates), None
    else:
        dstate0, dh_projected = _backward_steps(launcher, cell, tape, dy, dstate_n, dgates)
    dx_rows, grads = weight_gradients(xp, launcher.matmul, x_rows, history[0].reshape(T * B, P),
                                      dgates[0].reshape(T * B, GH),
                                      dgates[-1].reshape(T * B, GH), w_ih)
    if w_hr is not None:         # dW_hr = sum_t dh_t^T m_t
        grads["weight_hr"] = launcher.matmul(dh_projected.reshape(T * B, P).T,
                                             tape["m"].reshape(T * B, -1))
    return dx_rows.reshape(T, B, w_ih.shape[1]), dstate0, grads


def _backward_persistent(launcher, cell, tape, dy, dstate_n, dgates):
    """The whole BPTT in ONE cooperative launch of ``rnn_persistent_backward``.

    Returns the gradients of the initial states: the kernel turns its
    ``carry`` (in: those of the final states) into them.
    """
    xp = launcher.xp
    plan, history = tape["plan"], tape["history"]
    T, B, H = history[0].shape
    carry = tuple(xp.ascontiguousarray(xp.asarray(d, dtype=dy.dtype)).copy() for d in dstate_n)
    name = persistent_kernel_name(cell, "backward", dy.dtype)
    args = [dgates, carry, dy, tape["saved"], history, xp.ascontiguousarray(tape["w_hh"]),
            tape["lengths"], np.int32(T), np.int32(B), np.int32(H), np.int32(plan.units),
            np.int32(tape["reverse"])]
    grid, block = (plan.blocks,), (plan.threads,)
    check_launch(name, grid, block, args, xp)
    launcher.launch(name, grid, block, args, shared_bytes=plan.backward_shared_bytes,
                    cooperative=True)
    return carry


def _backward_steps(launcher, cell, tape, dy, dstate_n, dgates):
    """The step path of BPTT: per step one ``rnn_backward_step`` and a GEMM.

    Without a projection the loop runs as a captured graph, as the
    forward's.  Returns ``(dstate0, dh_projected)``, the latter the gradient
    reaching each step's projected ``h_t`` (None without a projection).
    """
    xp = launcher.xp
    history = tape["history"]
    T, B, P = history[0].shape
    dtype = dy.dtype
    # The carried gradients, ping-pong: step k reads [k % 2] and writes [1 - k % 2].
    carry = tuple(xp.empty((2, B, d.shape[-1]), dtype=dtype) for d in dstate_n)
    for buffer, final in zip(carry, dstate_n, strict=True):
        buffer[0] = final
    loop = {"dy": dy, "dgates": dgates, "carry": carry, "saved": tape["saved"],
            "history": history, "lengths": tape["lengths"], "w_hh": tape["w_hh"],
            "dh_recurrent": xp.zeros((B, P), dtype=dtype)}   # none after the last step
    if tape["w_hr"] is not None:
        dh_projected = _enqueue_backward_steps(launcher, cell, loop, tape["reverse"],
                                               tape["w_hr"])
    else:
        key = ("backward", cell.name, str(dtype), _device_of(dy), T, B, P,
               tape["w_hh"].shape[0], tape["reverse"])
        _as_graph(launcher, key, loop,
                  inputs=("dy", "carry", "saved", "history", "lengths", "w_hh", "dh_recurrent"),
                  outputs=("dgates", "carry", "dh_recurrent"),
                  enqueue=lambda on: _enqueue_backward_steps(launcher, cell, on,
                                                             tape["reverse"]))
        dh_projected = None
    last = T % 2
    dstate0 = (carry[0][last] + loop["dh_recurrent"],) + tuple(c[last] for c in carry[1:])
    return dstate0, dh_projected


def _enqueue_backward_steps(launcher, cell, loop, reverse, w_hr=None):
    """Enqueue the step path's BPTT loop on the buffers of ``loop``; with a
    projection, return ``dh_projected`` (see ``_backward_steps``).  Without
    one, only launches and GEMMs (see ``_enqueue_forward_steps``)."""
    xp = launcher.xp
    dy, dgates, carry, saved, history, lengths, w_hh, dh_recurrent = (
        loop[k] for k in ("dy", "dgates", "carry", "saved", "history", "lengths", "w_hh",
                          "dh_recurrent"))
    T, B, P = history[0].shape
    H = w_hh.shape[0] // cell.num_gates
    dtype = dy.dtype
    dgh = dgates[-1]
    dh_projected = None
    if w_hr is not None:         # what the kernel sees as h: H wide, of its own
        dh_projected = xp.empty((T, B, P), dtype=dtype)
        dm = xp.empty((B, H), dtype=dtype)
        zeros_h = xp.zeros((B, H), dtype=dtype)        # dy_t, dh_recurrent, h_{t-1} for the kernel
        unused_dm_prev = xp.empty((B, H), dtype=dtype)
        carried = xp.empty((B, P), dtype=dtype)          # dh_t before dy_t, every step
        active, inactive = _step_masks(xp, lengths, T, dtype)

    name, grid, block = step_launch(cell, "backward", dtype, B, H)
    for k, t in enumerate(time_order(T, not reverse)):
        read, write = k % 2, 1 - k % 2
        dstate, dstate_prev = [c[read] for c in carry], [c[write] for c in carry]
        if w_hr is None:
            state_prev, dy_t, recurrent = [s[t] for s in history], dy[t], dh_recurrent
        else:                    # dh_t = dh (carried, + through W_hh) + dy_t, where active
            xp.add(dstate[0], dh_recurrent, out=carried)
            xp.add(carried, dy[t], out=dh_projected[t])
            xp.multiply(dh_projected[t], active[t], out=dh_projected[t])
            launcher.matmul(dh_projected[t], w_hr, out=dm)   # dm = dh_t W_hr
            xp.multiply(carried, inactive[t], out=carry[0][write])   # inactive rows: passed on
            dstate[0], dstate_prev[0] = dm, unused_dm_prev
            state_prev = [zeros_h] + [s[t] for s in history[1:]]
            dy_t, recurrent = zeros_h, zeros_h
        args = backward_step_arguments([d[t] for d in dgates], dstate_prev, dy_t, recurrent,
                                       dstate, [a[t] for a in saved], state_prev,
                                       lengths, t, B, H)
        if k == 0:
            check_launch(name, grid, block, args, xp)
        launcher.launch(name, grid, block, args)
        launcher.matmul(dgh[t], w_hh, out=dh_recurrent)      # the part of dh_{t-1} through W_hh
    return dh_projected
