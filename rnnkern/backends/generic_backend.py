"""Generic backend: plain array-API code for any array library.

Slow (one Python iteration and several small array operations per step) but
written only with array-API calls and the cell's own pointwise steps, so it
runs on torch, JAX, array-api-strict, ... and is the reference the fused
backends are checked against.  See ``rnnkern.backends`` for the contract.
"""

from __future__ import annotations

import array_api_compat

from . import time_order


def _active_mask(xp, lengths, t, like):
    """(B, 1) boolean: which rows are inside their sequence at time t."""
    if lengths is None:
        return xp.ones((like.shape[0], 1), dtype=xp.bool, device=array_api_compat.device(like))
    return xp.reshape(lengths > t, (-1, 1))


def forward_direction(cell, x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, reverse):
    xp = array_api_compat.array_namespace(x)
    T, B, _ = x.shape
    gx_all = xp.matmul(x, xp.permute_dims(w_ih, (1, 0))) + b_ih      # (T, B, G*H)
    w_hh_t = xp.permute_dims(w_hh, (1, 0))
    h, c = h0, c0
    ys = [None] * T
    saved = {"h_prev": [None] * T, "gates": [None] * T,
             "c_prev": [None] * T, "gh_n": [None] * T}
    for t in time_order(T, reverse):
        active = _active_mask(xp, lengths, t, h)
        h_new, c_new, gates, gh_n = cell.forward_step(
            xp, gx_all[t, ...], xp.matmul(h, w_hh_t), b_hh, h, c)
        saved["h_prev"][t], saved["c_prev"][t] = h, c
        saved["gates"][t], saved["gh_n"][t] = gates, gh_n
        ys[t] = xp.where(active, h_new, xp.zeros_like(h_new))
        h = xp.where(active, h_new, h)
        if c is not None:
            c = xp.where(active, c_new, c)
    saved.update(x=x, w_ih=w_ih, w_hh=w_hh, lengths=lengths, reverse=reverse, cell=cell)
    return xp.stack(ys, axis=0), h, c, saved


def backward_direction(cell, dy, dh_n, dc_n, saved):
    xp = array_api_compat.array_namespace(dy)
    x, w_ih, w_hh = saved["x"], saved["w_ih"], saved["w_hh"]
    T = x.shape[0]
    dh, dc = dh_n, dc_n
    dgx_all, dgh_all = [None] * T, [None] * T
    for t in time_order(T, not saved["reverse"]):
        active = _active_mask(xp, saved["lengths"], t, dh)
        dgx, dgh, dh_direct, dc_prev = cell.backward_step(
            xp, dh + dy[t, ...], dc, saved["gates"][t], saved["gh_n"][t],
            saved["h_prev"][t], saved["c_prev"][t])
        zero = xp.zeros_like(dgx)
        dgx, dgh = xp.where(active, dgx, zero), xp.where(active, dgh, zero)
        dgx_all[t], dgh_all[t] = dgx, dgh
        dh = xp.where(active, dh_direct, dh) + xp.matmul(dgh, w_hh)
        if dc is not None:
            dc = xp.where(active, dc_prev, dc)
    dgx_all, dgh_all = xp.stack(dgx_all, axis=0), xp.stack(dgh_all, axis=0)
    h_prev = xp.stack(saved["h_prev"], axis=0)
    G_H = dgx_all.shape[-1]
    flat = lambda a: xp.reshape(a, (-1, a.shape[-1]))   # (T*B, .)
    dw_ih = xp.matmul(xp.permute_dims(flat(dgx_all), (1, 0)), flat(x))
    dw_hh = xp.matmul(xp.permute_dims(flat(dgh_all), (1, 0)), flat(h_prev))
    db_ih = xp.reshape(xp.sum(flat(dgx_all), axis=0), (G_H,))
    db_hh = xp.reshape(xp.sum(flat(dgh_all), axis=0), (G_H,))
    dx = xp.matmul(dgx_all, w_ih)
    return dx, dh, dc, dw_ih, dw_hh, db_ih, db_hh
