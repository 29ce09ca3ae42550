"""LSTM rows (gate order i, f, g, o; each gate a block of H columns)::

    i, f, g, o = sig, sig, tanh, sig of (gx + gh + b_hh)
    c_t = f c_{t-1} + i g ;  h_t = o tanh(c_t)

State ``(h, c)``; saved per step: ``gates`` (4H), the activated i, f, g, o.
``c_{t-1}`` comes from the driver's state history.  See ``drivers.py`` for
the row contract.
"""

from __future__ import annotations

import numba as nb

from . import INLINE
from .activations import one, sigmoid, tanh


@nb.njit(**INLINE)
def lstm_forward_row(t, ty, ts, b, gx, gh, b_hh, state, y, saved):
    h, c, y_t, gates = state[0][b], state[1][b], y[ty, b], saved[0][ts, b]
    H = h.shape[0]
    gx_t, gh_b = gx[t, b], gh[b]
    # one 1-D view per gate: no index arithmetic in the loop, so it vectorizes
    gx_i, gx_f, gx_g, gx_o = gx_t[:H], gx_t[H:2 * H], gx_t[2 * H:3 * H], gx_t[3 * H:]
    gh_i, gh_f, gh_g, gh_o = gh_b[:H], gh_b[H:2 * H], gh_b[2 * H:3 * H], gh_b[3 * H:]
    b_i, b_f, b_g, b_o = b_hh[:H], b_hh[H:2 * H], b_hh[2 * H:3 * H], b_hh[3 * H:]
    s_i, s_f, s_g, s_o = gates[:H], gates[H:2 * H], gates[2 * H:3 * H], gates[3 * H:]
    for j in range(H):
        i = sigmoid(gx_i[j] + gh_i[j] + b_i[j])
        f = sigmoid(gx_f[j] + gh_f[j] + b_f[j])
        g = tanh(gx_g[j] + gh_g[j] + b_g[j])
        o = sigmoid(gx_o[j] + gh_o[j] + b_o[j])
        cj = f * c[j] + i * g                  # c_t = f c_{t-1} + i g
        hj = o * tanh(cj)                      # h_t = o tanh(c_t)
        c[j], h[j], y_t[j] = cj, hj, hj
        s_i[j], s_f[j], s_g[j], s_o[j] = i, f, g, o


@nb.njit(**INLINE)
def lstm_backward_row(t, b, dy, carry, saved, history, dgx, dgh):
    dh, dc, dy_t = carry[0][b], carry[1][b], dy[t, b]
    gates, c_prev, da = saved[0][t, b], history[1][t, b], dgx[t, b]
    H = dh.shape[0]
    s_i, s_f, s_g, s_o = gates[:H], gates[H:2 * H], gates[2 * H:3 * H], gates[3 * H:]
    d_i, d_f, d_g, d_o = da[:H], da[H:2 * H], da[2 * H:3 * H], da[3 * H:]
    for j in range(H):
        i, f, g, o = s_i[j], s_f[j], s_g[j], s_o[j]
        tc = tanh(f * c_prev[j] + i * g)       # tanh(c_t), recomputed
        dhj = dh[j] + dy_t[j]
        dcj = dc[j] + dhj * o * (one(tc) - tc * tc)     # h = o tanh(c)
        d_i[j] = dcj * g * i * (one(i) - i)
        d_f[j] = dcj * c_prev[j] * f * (one(f) - f)
        d_g[j] = dcj * i * (one(g) - g * g)
        d_o[j] = dhj * tc * o * (one(o) - o)
        dc[j] = dcj * f                        # c = f c_prev + i g
        dh[j] = 0                              # h_{t-1} reaches h_t only through W_hh
