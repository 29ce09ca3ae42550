"""Generic backend: plain array-API code for any array library.

Slow (one Python iteration and several small array operations per step) but
written only with array-API calls and the cell's own pointwise steps
(``Cell.forward_step``/``backward_step``), so it runs on torch, JAX,
array-api-strict, ... and is the reference the fused backends are checked
against.  See ``rnnkern.backends`` for the contract.
"""

from __future__ import annotations

import array_api_compat

from . import step_of, time_order, weight_gradients

__all__ = ["forward_direction", "backward_direction", "step"]


def _active_mask(xp, lengths, t, like):
    """(B, 1) boolean: which rows are inside their sequence at time t."""
    if lengths is None:
        return xp.ones((like.shape[0], 1), dtype=xp.bool, device=array_api_compat.device(like))
    return xp.reshape(lengths > t, (-1, 1))


def _where_active(xp, active, new, old):
    return tuple(xp.where(active, n, o) for n, o in zip(new, old))


def forward_direction(cell, x, params, state, lengths, reverse, *, keep=True):
    xp = array_api_compat.array_namespace(x)
    T = x.shape[0]
    gx_all = xp.matmul(x, xp.permute_dims(params["weight_ih"], (1, 0))) + params["bias_ih"]
    w_hh_t = xp.permute_dims(params["weight_hh"], (1, 0))
    projection = params.get("weight_hr")          # LSTM proj_size: h_t = m_t W_hr^T
    w_hr_t = None if projection is None else xp.permute_dims(projection, (1, 0))
    ys, history, saved, m = [None] * T, [None] * T, [None] * T, [None] * T
    for t in time_order(T, reverse):
        active = _active_mask(xp, lengths, t, state[0])
        new_state, saved[t] = cell.forward_step(xp, gx_all[t, ...], xp.matmul(state[0], w_hh_t),
                                                params["bias_hh"], state)
        if projection is not None:
            m[t] = new_state[0]
            new_state = (xp.matmul(m[t], w_hr_t),) + new_state[1:]
        history[t] = state
        ys[t] = xp.where(active, new_state[0], xp.zeros_like(new_state[0]))
        state = _where_active(xp, active, new_state, state)
    y = xp.stack(ys, axis=0)
    if not keep:
        return y, state, None
    tape = {"x": x, "params": params, "lengths": lengths, "reverse": reverse,
            "history": history, "saved": saved, "m": m}
    return y, state, tape


def backward_direction(cell, dy, dstate_n, tape):
    xp = array_api_compat.array_namespace(dy)
    x, w_hh = tape["x"], tape["params"]["weight_hh"]
    T, B, I = x.shape
    projection = tape["params"].get("weight_hr")
    dstate = dstate_n
    dgx_all, dgh_all, dh_all = [None] * T, [None] * T, [None] * T
    for t in time_order(T, not tape["reverse"]):
        active = _active_mask(xp, tape["lengths"], t, dstate[0])
        into = (dstate[0] + dy[t, ...],) + tuple(dstate[1:])
        if projection is not None:                # h_t = m_t W_hr^T: dm = dh W_hr
            dh_all[t] = xp.where(active, into[0], xp.zeros_like(into[0]))
            into = (xp.matmul(into[0], projection),) + into[1:]
        dgx, dgh, direct = cell.backward_step(xp, into, tape["saved"][t], tape["history"][t])
        if projection is not None:                # h_{t-1} enters only through W_hh
            direct = (xp.zeros_like(dstate[0]),) + tuple(direct[1:])
        zero = xp.zeros_like(dgx)
        dgx_all[t], dgh_all[t] = xp.where(active, dgx, zero), xp.where(active, dgh, zero)
        dstate = _where_active(xp, active, direct, dstate)
        dstate = (dstate[0] + xp.matmul(dgh_all[t], w_hh),) + dstate[1:]
    rows = lambda parts: xp.reshape(xp.stack(parts, axis=0), (T * B, -1))    # noqa: E731
    dx, grads = weight_gradients(xp, xp.matmul, xp.reshape(x, (T * B, I)),
                                 rows([h[0] for h in tape["history"]]), rows(dgx_all),
                                 rows(dgh_all), tape["params"]["weight_ih"])
    if projection is not None:                    # dW_hr = sum_t dh_t^T m_t
        grads["weight_hr"] = xp.matmul(xp.permute_dims(rows(dh_all), (1, 0)), rows(tape["m"]))
    return xp.reshape(dx, (T, B, I)), dstate, grads


step = step_of(forward_direction)
