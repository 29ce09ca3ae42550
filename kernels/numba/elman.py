"""Elman RNN rows: ``h_t = act(gx + gh + b_hh)``, act = tanh or relu.

Saved per step: ``gates`` (H) = h_t itself (act' is read off the output:
tanh' = 1 - h^2, relu' = [h > 0]).  See ``drivers.py`` for the row contract.
"""

from __future__ import annotations

import numba as nb

from . import INLINE
from .activations import one, tanh


@nb.njit(**INLINE)
def _forward_row(relu, t, ty, ts, b, gx, gh, b_hh, state, y, saved):
    h, y_t, h_saved = state[0][b], y[ty, b], saved[0][ts, b]
    gx_t, gh_b = gx[t, b], gh[b]
    for j in range(h.shape[0]):
        a = gx_t[j] + gh_b[j] + b_hh[j]
        if relu:
            hj = a if a > 0 else a * 0          # max(a, 0); select, not a branch
        else:
            hj = tanh(a)
        h[j], y_t[j], h_saved[j] = hj, hj, hj


@nb.njit(**INLINE)
def _backward_row(relu, t, b, dy, carry, saved, history, dgx, dgh):
    dh, dy_t, h, da = carry[0][b], dy[t, b], saved[0][t, b], dgx[t, b]
    for j in range(dh.shape[0]):
        hj = h[j]
        g = dh[j] + dy_t[j]
        if relu:
            da[j] = g if hj > 0 else g * 0      # relu' = [h > 0]
        else:
            da[j] = g * (one(hj) - hj * hj)     # tanh' = 1 - h^2
        dh[j] = 0                               # h_{t-1} reaches h_t only through W_hh


@nb.njit(**INLINE)
def tanh_forward_row(t, ty, ts, b, gx, gh, b_hh, state, y, saved):
    _forward_row(False, t, ty, ts, b, gx, gh, b_hh, state, y, saved)


@nb.njit(**INLINE)
def tanh_backward_row(t, b, dy, carry, saved, history, dgx, dgh):
    _backward_row(False, t, b, dy, carry, saved, history, dgx, dgh)


@nb.njit(**INLINE)
def relu_forward_row(t, ty, ts, b, gx, gh, b_hh, state, y, saved):
    _forward_row(True, t, ty, ts, b, gx, gh, b_hh, state, y, saved)


@nb.njit(**INLINE)
def relu_backward_row(t, b, dy, carry, saved, history, dgx, dgh):
    _backward_row(True, t, b, dy, carry, saved, history, dgx, dgh)
