"""The plain NumPy reference, checked against finite differences.

The reference is the second oracle (it works without torch), so its
gradients are checked directly: central differences in float64 on a small
stacked, bidirectional layer with lengths and initial states.
"""

import numpy as np
import pytest

import rnnkern as rk
from rnnkern.reference import reference_backward, reference_forward

CELLS = ["rnn_tanh", "rnn_relu", "lstm", "gru"]
NUM_GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}


def random_problem(cell, rng, T=4, B=3, I=3, H=4, L=2, bidirectional=True):
    D = 2 if bidirectional else 1
    G = NUM_GATES[cell]
    params = {}
    for layer in range(L):
        for d in range(D):
            s = f"_l{layer}" + ("_reverse" if d else "")
            in_size = I if layer == 0 else D * H
            params["weight_ih" + s] = rng.uniform(-0.6, 0.6, (G * H, in_size))
            params["weight_hh" + s] = rng.uniform(-0.6, 0.6, (G * H, H))
            params["bias_ih" + s] = rng.uniform(-0.6, 0.6, G * H)
            params["bias_hh" + s] = rng.uniform(-0.6, 0.6, G * H)
    inputs = {"x": rng.standard_normal((T, B, I)), "h0": rng.standard_normal((L * D, B, H)),
              "c0": rng.standard_normal((L * D, B, H)) if cell == "lstm" else None}
    weights = {"dy": rng.standard_normal((T, B, D * H)), "dh": rng.standard_normal((L * D, B, H)),
               "dc": rng.standard_normal((L * D, B, H)) if cell == "lstm" else None}
    return params, inputs, weights, dict(num_layers=L, bidirectional=bidirectional, lengths=[4, 1, 3])


def loss(cell, params, inputs, weights, opts):
    y, h_n, c_n, _ = reference_forward(cell, params, inputs["x"], inputs["h0"], inputs["c0"], **opts)
    value = np.sum(y * weights["dy"]) + np.sum(h_n * weights["dh"])
    return value + (np.sum(c_n * weights["dc"]) if c_n is not None else 0.0)


@pytest.mark.parametrize("cell", CELLS)
def test_reference_gradients_match_finite_differences(cell, rng):
    params, inputs, weights, opts = random_problem(cell, rng)
    _, _, _, cache = reference_forward(cell, params, inputs["x"], inputs["h0"], inputs["c0"], **opts)
    dx, dh0, dc0, grads = reference_backward(weights["dy"], weights["dh"], weights["dc"], cache)
    analytic = dict(grads, x=dx, h0=dh0, **({"c0": dc0} if cell == "lstm" else {}))
    eps = 1e-6
    for name, grad in analytic.items():
        source = inputs if name in inputs else params
        array = source[name]
        # A sample of entries of every array keeps the test quick.
        for flat in rng.choice(array.size, size=min(array.size, 6), replace=False):
            idx = np.unravel_index(flat, array.shape)
            old = array[idx]
            array[idx] = old + eps
            up = loss(cell, params, inputs, weights, opts)
            array[idx] = old - eps
            down = loss(cell, params, inputs, weights, opts)
            array[idx] = old
            numeric = (up - down) / (2 * eps)
            assert abs(numeric - grad[idx]) <= 1e-6 * max(1.0, abs(numeric)), (name, idx)


@pytest.mark.parametrize("cell", CELLS)
def test_numba_path_matches_reference(cell, rng):
    layer_cls, extra = {"lstm": (rk.LSTM, {}), "gru": (rk.GRU, {}),
                        "rnn_tanh": (rk.RNN, {"nonlinearity": "tanh"}),
                        "rnn_relu": (rk.RNN, {"nonlinearity": "relu"})}[cell]
    params, inputs, weights, opts = random_problem(cell, rng, T=7, B=3, I=5, H=9)
    layer = layer_cls(5, 9, 2, bidirectional=True, dtype="float64", **extra)
    layer.load_state_dict(params)
    state = (inputs["h0"], inputs["c0"]) if cell == "lstm" else inputs["h0"]
    y, st_out, tape = layer.forward(inputs["x"], state, lengths=[7, 1, 3])
    dstate = (weights["dh"], weights["dc"]) if cell == "lstm" else weights["dh"]
    dx, dstate0, grads = layer.backward(weights["dy"], tape, dstate)
    opts["lengths"] = [7, 1, 3]
    y_ref, h_ref, c_ref, cache = reference_forward(cell, params, inputs["x"], inputs["h0"], inputs["c0"], **opts)
    dx_ref, dh0_ref, dc0_ref, grads_ref = reference_backward(weights["dy"], weights["dh"], weights["dc"], cache)
    tol = dict(rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(y, y_ref, **tol)
    np.testing.assert_allclose(dx, dx_ref, **tol)
    np.testing.assert_allclose(dstate0[0] if cell == "lstm" else dstate0, dh0_ref, **tol)
    if cell == "lstm":
        np.testing.assert_allclose(st_out[1], c_ref, **tol)
        np.testing.assert_allclose(dstate0[1], dc0_ref, **tol)
    for name in grads_ref:
        np.testing.assert_allclose(grads[name], grads_ref[name], **tol, err_msg=name)
