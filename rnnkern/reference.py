"""Plain NumPy reference: every cell, step by step, written for reading.

Independent of the kernels and of the array-API steps in ``rnnkern.cells``
(it shares no math with them), so it can check both; the tests check it in
turn against finite differences.  The registry names each cell's step pair
here (``Cell.reference_steps``).  It is also the "plain NumPy" column of ``python -m rnnkern
bench``.  Time-major only: ``x`` is ``(T, B, I)``; ``params`` uses PyTorch's
names; ``lengths`` follows packed-sequence semantics (see ``rnnkern.cells``).

>>> y, (h_n, c_n), cache = reference_forward(rnnkern.cells.CELLS["lstm"], params, x, num_layers=2)
>>> dx, (dh0, dc0), grads = reference_backward(dy, (dh_n_grad, dc_n_grad), cache)
"""

from __future__ import annotations

import numpy as np

__all__ = ["reference_forward", "reference_backward",
           "rnn_tanh_step", "rnn_tanh_step_backward", "rnn_relu_step", "rnn_relu_step_backward",
           "lstm_step", "lstm_step_backward", "gru_step", "gru_step_backward"]


def _sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


# --------------------------------------------------------------------------
# One step of each cell (the registry, rnnkern.cells, points at these pairs).
#
#   step(gx, gh, state) -> (new_state, kept)
#       gx = x_t W_ih^T + b_ih and gh = h_{t-1} W_hh^T + b_hh (biases included)
#   step_backward(dstate, state, kept) -> (dgx, dgh, dstate_direct)
#       dgx, dgh: gradients of gx and gh; dstate_direct: gradients of the state
#       entering the step, except the part of dh that flows through W_hh
# --------------------------------------------------------------------------

def _rnn_step(act, gx, gh, state):
    h_new = act(gx + gh)
    return (h_new,), {"h_new": h_new}


def rnn_tanh_step(gx, gh, state):
    """h_t = tanh(gx + gh)."""
    return _rnn_step(np.tanh, gx, gh, state)


def rnn_relu_step(gx, gh, state):
    """h_t = max(gx + gh, 0)."""
    return _rnn_step(lambda a: np.maximum(a, 0), gx, gh, state)


def rnn_tanh_step_backward(dstate, state, kept):
    (dh,) = dstate
    da = dh * (1 - kept["h_new"] ** 2)
    return da, da, (np.zeros_like(dh),)


def rnn_relu_step_backward(dstate, state, kept):
    (dh,) = dstate
    da = dh * (kept["h_new"] > 0)
    return da, da, (np.zeros_like(dh),)


def lstm_step(gx, gh, state):
    """i, f, g, o = sig, sig, tanh, sig of gx + gh; c = f c + i g; h = o tanh(c)."""
    _, c = state
    H = c.shape[1]                       # h is proj_size wide with a projection
    a = gx + gh
    i, f = _sigmoid(a[:, :H]), _sigmoid(a[:, H:2 * H])
    g, o = np.tanh(a[:, 2 * H:3 * H]), _sigmoid(a[:, 3 * H:])
    c_new = f * c + i * g
    h_new = o * np.tanh(c_new)
    return (h_new, c_new), {"i": i, "f": f, "g": g, "o": o, "c_new": c_new}


def lstm_step_backward(dstate, state, kept):
    (dh, dc), (_, c) = dstate, state
    i, f, g, o, c_new = kept["i"], kept["f"], kept["g"], kept["o"], kept["c_new"]
    tc = np.tanh(c_new)
    dc_total = dc + dh * o * (1 - tc ** 2)
    da = np.concatenate([dc_total * g * i * (1 - i),
                         dc_total * c * f * (1 - f),
                         dc_total * i * (1 - g ** 2),
                         dh * tc * o * (1 - o)], axis=1)
    return da, da, (np.zeros_like(dh), dc_total * f)


def gru_step(gx, gh, state):
    """r, z = sig(gx + gh); n = tanh(gx_n + r gh_n); h = (1 - z) n + z h."""
    (h,) = state
    H = h.shape[1]
    r = _sigmoid(gx[:, :H] + gh[:, :H])
    z = _sigmoid(gx[:, H:2 * H] + gh[:, H:2 * H])
    n = np.tanh(gx[:, 2 * H:] + r * gh[:, 2 * H:])
    h_new = (1 - z) * n + z * h
    return (h_new,), {"r": r, "z": z, "n": n, "gh_n": gh[:, 2 * H:]}


def gru_step_backward(dstate, state, kept):
    (dh,), (h,) = dstate, state
    r, z, n, gh_n = kept["r"], kept["z"], kept["n"], kept["gh_n"]
    dn_pre = dh * (1 - z) * (1 - n ** 2)
    dz_pre = dh * (h - n) * z * (1 - z)
    dr_pre = dn_pre * gh_n * r * (1 - r)
    dgx = np.concatenate([dr_pre, dz_pre, dn_pre], axis=1)
    dgh = np.concatenate([dr_pre, dz_pre, dn_pre * r], axis=1)
    return dgx, dgh, (dh * z,)


def _names(layer, reverse):
    s = f"_l{layer}" + ("_reverse" if reverse else "")
    return "weight_ih" + s, "weight_hh" + s, "bias_ih" + s, "bias_hh" + s, "weight_hr" + s


def _state_widths(cell, params):
    """Width of each state: h is P wide (weight_hh's columns), the others H."""
    sizes = {"P": params["weight_hh_l0"].shape[1],
             "H": params["weight_ih_l0"].shape[0] // cell.num_gates}
    return tuple(sizes[s] for s in cell.state_sizes)


def reference_forward(cell, params, x, state0=None, lengths=None, num_layers=1,
                      bidirectional=False):
    """Forward pass of a stacked (bi)directional layer; see the module docstring.

    With ``weight_hr_l{k}`` in ``params`` (LSTM ``proj_size``) each step's
    ``h`` is projected: ``h_t = m_t W_hr^T`` with ``m_t = o * tanh(c_t)``.

    Parameters
    ----------
    cell : rnnkern.cells.Cell
        Its ``reference_steps`` (the step pairs of this module) do the math.
    params : dict
        PyTorch names (``weight_ih_l0``, ...); missing biases count as zero.
    x : (T, B, I) array
    state0 : tuple of (L*D, B, width) arrays, optional
        One per state of the cell (``(h0,)`` or ``(h0, c0)``); zeros if None.

    Returns
    -------
    y : (T, B, D*P) array
    state_n : tuple of (L*D, B, width) arrays
    cache : for :func:`reference_backward`
    """
    forward_step = cell.reference_steps[0]
    T, B, _ = x.shape
    D = 2 if bidirectional else 1
    widths = _state_widths(cell, params)
    P = widths[0]
    lengths = np.full(B, T) if lengths is None else np.asarray(lengths)
    if state0 is None:
        state0 = tuple(np.zeros((num_layers * D, B, w), x.dtype) for w in widths)
    state_n, steps = tuple(np.zeros_like(s) for s in state0), {}
    inp = x
    for layer in range(num_layers):
        outs = []
        for d in range(D):
            idx = layer * D + d
            names = _names(layer, d == 1)
            w_ih, w_hh, b_ih, b_hh = (params.get(n, 0.0) for n in names[:4])
            w_hr = params.get(names[4])
            state = tuple(s[idx].copy() for s in state0)
            y = np.zeros((T, B, P), x.dtype)
            order = range(T - 1, -1, -1) if d else range(T)
            for t in order:
                active = (t < lengths)[:, None]
                new_state, kept = forward_step(inp[t] @ w_ih.T + b_ih, state[0] @ w_hh.T + b_hh,
                                               state)
                if w_hr is not None:                  # h_t = m_t W_hr^T
                    kept["m"] = new_state[0]
                    new_state = (new_state[0] @ w_hr.T,) + new_state[1:]
                steps[idx, t] = (state, kept, active)
                y[t] = np.where(active, new_state[0], 0)
                state = tuple(np.where(active, new, old) for new, old in zip(new_state, state))
            for s_n, s in zip(state_n, state):
                s_n[idx] = s
            outs.append(y)
        steps[layer, "input"] = inp
        inp = np.concatenate(outs, axis=2)
    cache = {"cell": cell, "params": params, "steps": steps, "T": T, "D": D, "P": P,
             "widths": widths, "num_layers": num_layers}
    return inp, state_n, cache


def reference_backward(dy, dstate_n, cache):
    """Gradients for :func:`reference_forward`.

    ``dstate_n`` is a tuple like ``state_n`` (None for zeros).  Returns
    ``dx, dstate0 (tuple), grads (dict of PyTorch names)``.
    """
    cell, params, steps = cache["cell"], cache["params"], cache["steps"]
    backward_step = cell.reference_steps[1]
    T, D, P = cache["T"], cache["D"], cache["P"]
    lead, batch = cache["num_layers"] * D, dy.shape[1]
    if dstate_n is None:
        dstate_n = (None,) * cell.num_states
    dstate_n = tuple(np.zeros((lead, batch, w), dy.dtype) if d is None else d
                     for d, w in zip(dstate_n, cache["widths"]))
    dstate0 = tuple(np.zeros_like(d) for d in dstate_n)
    grads = {}
    for layer in reversed(range(cache["num_layers"])):
        inp = steps[layer, "input"]
        dinp = np.zeros_like(inp)
        for d in range(D):
            idx = layer * D + d
            names = _names(layer, d == 1)
            w_ih, w_hh, w_hr = params[names[0]], params[names[1]], params.get(names[4])
            g = {n: np.zeros_like(params[n]) for n in names if n in params}
            dstate = tuple(s[idx].copy() for s in dstate_n)
            order = range(T) if d else range(T - 1, -1, -1)    # reverse of forward
            for t in order:
                state, kept, active = steps[idx, t]
                # An inactive row's step is the identity on the state: it gets
                # no gradient (zero gradients in, so all its terms vanish) and
                # passes the state gradients through unchanged.
                into = tuple(np.where(active, s, 0) for s in
                             (dstate[0] + dy[t, :, d * P:(d + 1) * P],) + dstate[1:])
                if w_hr is not None:                  # h_t = m_t W_hr^T
                    g[names[4]] += into[0].T @ kept["m"]
                    into = (into[0] @ w_hr,) + into[1:]
                dgx, dgh, direct = backward_step(into, state, kept)
                if w_hr is not None:                  # h_{t-1} enters only through W_hh
                    direct = (np.zeros_like(dstate[0]),) + direct[1:]
                dinp[t] += dgx @ w_ih
                for n, grad in zip(names, (dgx.T @ inp[t], dgh.T @ state[0],
                                           dgx.sum(axis=0), dgh.sum(axis=0))):
                    if n in g:
                        g[n] += grad
                previous = (direct[0] + dgh @ w_hh,) + direct[1:]
                dstate = tuple(np.where(active, new, old) for new, old in zip(previous, dstate))
            for s0, s in zip(dstate0, dstate):
                s0[idx] = s
            grads.update(g)
        dy = dinp
    return dy, dstate0, grads
