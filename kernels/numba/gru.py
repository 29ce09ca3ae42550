"""GRU rows (gate order r, z, n; PyTorch/cuDNN form, reset gate after W_hn h)::

    r = sig(gx_r + gh_r + b_hr) ;  z = sig(gx_z + gh_z + b_hz)
    n = tanh(gx_n + r (gh_n + b_hn)) ;  h_t = (1 - z) n + z h_{t-1}

Saved per step: ``gates`` (3H), the activated r, z, n, and ``gh_n`` (H),
``W_hn h + b_hn`` (for dr).  The backward row writes dgx and dgh apart: they
differ in the n block (d gh_n = dn r).  See ``drivers.py`` for the row
contract.
"""

from __future__ import annotations

import numba as nb

from . import INLINE
from .activations import one, sigmoid, tanh


@nb.njit(**INLINE)
def gru_forward_row(t, ty, ts, b, gx, gh, b_hh, state, y, saved):
    h, y_t, gates, gh_n = state[0][b], y[ty, b], saved[0][ts, b], saved[1][ts, b]
    H = h.shape[0]
    gx_t, gh_b = gx[t, b], gh[b]
    gx_r, gx_z, gx_n = gx_t[:H], gx_t[H:2 * H], gx_t[2 * H:]
    gh_r, gh_z, gh_nn = gh_b[:H], gh_b[H:2 * H], gh_b[2 * H:]
    b_r, b_z, b_n = b_hh[:H], b_hh[H:2 * H], b_hh[2 * H:]
    s_r, s_z, s_n = gates[:H], gates[H:2 * H], gates[2 * H:]
    for j in range(H):
        r = sigmoid(gx_r[j] + gh_r[j] + b_r[j])
        z = sigmoid(gx_z[j] + gh_z[j] + b_z[j])
        hn = gh_nn[j] + b_n[j]                 # W_hn h + b_hn, kept for dr
        n = tanh(gx_n[j] + r * hn)
        hj = n + z * (h[j] - n)                # (1 - z) n + z h
        h[j], y_t[j] = hj, hj
        s_r[j], s_z[j], s_n[j], gh_n[j] = r, z, n, hn


@nb.njit(**INLINE)
def gru_backward_row(t, b, dy, carry, saved, history, dgx, dgh):
    dh, dy_t, h_prev = carry[0][b], dy[t, b], history[0][t, b]
    gates, gh_n = saved[0][t, b], saved[1][t, b]
    dx_t, dh_t = dgx[t, b], dgh[t, b]
    H = dh.shape[0]
    s_r, s_z, s_n = gates[:H], gates[H:2 * H], gates[2 * H:]
    dx_r, dx_z, dx_n = dx_t[:H], dx_t[H:2 * H], dx_t[2 * H:]
    dh_r, dh_z, dh_n = dh_t[:H], dh_t[H:2 * H], dh_t[2 * H:]
    for j in range(H):
        r, z, n = s_r[j], s_z[j], s_n[j]
        dhj = dh[j] + dy_t[j]
        dn = dhj * (one(z) - z) * (one(n) - n * n)      # h = n + z (h_prev - n)
        dz = dhj * (h_prev[j] - n) * z * (one(z) - z)
        dr = dn * gh_n[j] * r * (one(r) - r)            # n = tanh(gx_n + r gh_n)
        dx_r[j], dx_z[j], dx_n[j] = dr, dz, dn
        dh_r[j], dh_z[j], dh_n[j] = dr, dz, dn * r
        dh[j] = dhj * z                                 # the direct path of h_{t-1}
