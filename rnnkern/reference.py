"""Plain NumPy reference: every cell, step by step, written for reading.

Independent of the cell interface and the kernels (it shares no code with
them), so it can check both; the tests check it in turn against finite
differences.  It is also the "plain NumPy" column of ``python -m rnnkern
bench``.  Time-major only: ``x`` is ``(T, B, I)``; ``params`` uses PyTorch's
names; ``lengths`` follows packed-sequence semantics (see ``rnnkern.cells``).

>>> y, h_n, c_n, cache = reference_forward("lstm", params, x, num_layers=2)
>>> dx, dh0, dc0, grads = reference_backward(dy, dh_n_grad, dc_n_grad, cache)
"""

from __future__ import annotations

import numpy as np

__all__ = ["reference_forward", "reference_backward"]


def _sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def _step(cell, x_t, h, c, w_ih, w_hh, b_ih, b_hh):
    """One cell step; returns (h_new, c_new, what the backward step needs)."""
    H = h.shape[1]
    gx = x_t @ w_ih.T + b_ih
    gh = h @ w_hh.T + b_hh
    if cell in ("rnn_tanh", "rnn_relu"):
        a = gx + gh
        h_new = np.tanh(a) if cell == "rnn_tanh" else np.maximum(a, 0)
        return h_new, None, {"h_new": h_new}
    if cell == "lstm":
        a = gx + gh
        i, f = _sigmoid(a[:, :H]), _sigmoid(a[:, H:2 * H])
        g, o = np.tanh(a[:, 2 * H:3 * H]), _sigmoid(a[:, 3 * H:])
        c_new = f * c + i * g
        h_new = o * np.tanh(c_new)
        return h_new, c_new, {"i": i, "f": f, "g": g, "o": o, "c_new": c_new}
    if cell == "gru":
        r = _sigmoid(gx[:, :H] + gh[:, :H])
        z = _sigmoid(gx[:, H:2 * H] + gh[:, H:2 * H])
        n = np.tanh(gx[:, 2 * H:] + r * gh[:, 2 * H:])
        h_new = (1 - z) * n + z * h
        return h_new, None, {"r": r, "z": z, "n": n, "gh_n": gh[:, 2 * H:]}
    raise ValueError(f"cell: unknown {cell!r}")


def _step_backward(cell, dh, dc, x_t, h, c, w_ih, w_hh, k):
    """Gradients of one step from dh (and dc) at its output.

    Returns (dx_t, dh_prev, dc_prev, dW_ih, dW_hh, db_ih, db_hh).
    """
    if cell in ("rnn_tanh", "rnn_relu"):
        h_new = k["h_new"]
        da = dh * (1 - h_new ** 2) if cell == "rnn_tanh" else dh * (h_new > 0)
        dgx = dgh = da
        dh_prev, dc_prev = dgh @ w_hh, None
    elif cell == "lstm":
        i, f, g, o, c_new = k["i"], k["f"], k["g"], k["o"], k["c_new"]
        tc = np.tanh(c_new)
        dc_total = dc + dh * o * (1 - tc ** 2)
        dgx = dgh = np.concatenate([dc_total * g * i * (1 - i),
                                    dc_total * c * f * (1 - f),
                                    dc_total * i * (1 - g ** 2),
                                    dh * tc * o * (1 - o)], axis=1)
        dh_prev, dc_prev = dgh @ w_hh, dc_total * f
    else:  # gru
        r, z, n, gh_n = k["r"], k["z"], k["n"], k["gh_n"]
        dn_pre = dh * (1 - z) * (1 - n ** 2)
        dz_pre = dh * (h - n) * z * (1 - z)
        dr_pre = dn_pre * gh_n * r * (1 - r)
        dgx = np.concatenate([dr_pre, dz_pre, dn_pre], axis=1)
        dgh = np.concatenate([dr_pre, dz_pre, dn_pre * r], axis=1)
        dh_prev, dc_prev = dh * z + dgh @ w_hh, None
    return (dgx @ w_ih, dh_prev, dc_prev, dgx.T @ x_t, dgh.T @ h,
            dgx.sum(axis=0), dgh.sum(axis=0))


def _names(layer, reverse):
    s = f"_l{layer}" + ("_reverse" if reverse else "")
    return "weight_ih" + s, "weight_hh" + s, "bias_ih" + s, "bias_hh" + s


def reference_forward(cell, params, x, h0=None, c0=None, lengths=None,
                      num_layers=1, bidirectional=False):
    """Forward pass of a stacked (bi)directional layer; see the module docstring.

    Returns ``y (T, B, D*H)``, ``h_n (L*D, B, H)``, ``c_n`` (LSTM, else None)
    and a cache for :func:`reference_backward`.
    """
    T, B, _ = x.shape
    D = 2 if bidirectional else 1
    H = params["weight_hh_l0"].shape[1]
    lengths = np.full(B, T) if lengths is None else np.asarray(lengths)
    zeros = np.zeros((num_layers * D, B, H), x.dtype)
    h0 = zeros if h0 is None else h0
    c0 = zeros if c0 is None else c0
    h_n, c_n, steps = np.zeros_like(h0), np.zeros_like(c0), {}
    inp = x
    for layer in range(num_layers):
        outs = []
        for d in range(D):
            idx = layer * D + d
            w_ih, w_hh, b_ih, b_hh = (params.get(n, 0.0) for n in _names(layer, d == 1))
            h, c = h0[idx].copy(), c0[idx].copy()
            y = np.zeros((T, B, H), x.dtype)
            order = range(T - 1, -1, -1) if d else range(T)
            for t in order:
                active = (t < lengths)[:, None]
                h_new, c_new, kept = _step(cell, inp[t], h, c, w_ih, w_hh, b_ih, b_hh)
                steps[idx, t] = (h, c, kept, active)
                y[t] = np.where(active, h_new, 0)
                h = np.where(active, h_new, h)
                c = np.where(active, c_new, c) if c_new is not None else c
            h_n[idx], c_n[idx] = h, c
            outs.append(y)
        steps[layer, "input"] = inp
        inp = np.concatenate(outs, axis=2)
    cache = {"cell": cell, "params": params, "steps": steps, "T": T, "D": D, "H": H,
             "num_layers": num_layers}
    return inp, h_n, (c_n if cell == "lstm" else None), cache


def reference_backward(dy, dh_n, dc_n, cache):
    """Gradients for :func:`reference_forward`: ``dx, dh0, dc0, grads``."""
    cell, params, steps = cache["cell"], cache["params"], cache["steps"]
    T, D, H = cache["T"], cache["D"], cache["H"]
    dh0, dc0 = np.zeros_like(dh_n), np.zeros_like(dh_n)
    dc_n = np.zeros_like(dh_n) if dc_n is None else dc_n
    grads = {}
    for layer in reversed(range(cache["num_layers"])):
        inp = steps[layer, "input"]
        dinp = np.zeros_like(inp)
        for d in range(D):
            idx = layer * D + d
            names = _names(layer, d == 1)
            w_ih, w_hh = params[names[0]], params[names[1]]
            g = [np.zeros_like(w_ih), np.zeros_like(w_hh),
                 np.zeros(w_ih.shape[0], dy.dtype), np.zeros(w_ih.shape[0], dy.dtype)]
            dh, dc = dh_n[idx].copy(), dc_n[idx].copy()
            order = range(T) if d else range(T - 1, -1, -1)    # reverse of forward
            for t in order:
                h, c, kept, active = steps[idx, t]
                # An inactive row's step is the identity on the state: it gets
                # no gradient (zero dh, dc in, so all its terms vanish) and
                # passes dh, dc through unchanged.
                dx_t, dh_prev, dc_prev, *dparams = _step_backward(
                    cell, np.where(active, dh + dy[t, :, d * H:(d + 1) * H], 0),
                    np.where(active, dc, 0), inp[t], h, c, w_ih, w_hh, kept)
                dinp[t] += dx_t
                for acc, grad in zip(g, dparams):
                    acc += grad
                dh = np.where(active, dh_prev, dh)
                if dc_prev is not None:
                    dc = np.where(active, dc_prev, dc)
            dh0[idx], dc0[idx] = dh, dc
            for n, grad in zip(names, g):
                if n in params:
                    grads[n] = grad
        dy = dinp
    return dy, dh0, (dc0 if cell == "lstm" else None), grads
