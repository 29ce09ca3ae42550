"""The plain NumPy reference, checked against finite differences.

The reference is the second oracle (it works without torch), so its
gradients are checked directly: central differences in float64 on a small
stacked, bidirectional layer with lengths and initial states.
"""

import numpy as np

from conftest import make_layer
from rnnkern.reference import reference_backward, reference_forward


def random_problem(cell, rng, T=4, B=3, I=3, H=4, L=2, bidirectional=True):
    D = 2 if bidirectional else 1
    G = cell.num_gates
    params = {}
    for layer in range(L):
        for d in range(D):
            s = f"_l{layer}" + ("_reverse" if d else "")
            in_size = I if layer == 0 else D * H
            params["weight_ih" + s] = rng.uniform(-0.6, 0.6, (G * H, in_size))
            params["weight_hh" + s] = rng.uniform(-0.6, 0.6, (G * H, H))
            params["bias_ih" + s] = rng.uniform(-0.6, 0.6, G * H)
            params["bias_hh" + s] = rng.uniform(-0.6, 0.6, G * H)
    inputs = {"x": rng.standard_normal((T, B, I))}
    inputs.update({f"{s}0": rng.standard_normal((L * D, B, H)) for s in cell.state_names})
    weights = {"dy": rng.standard_normal((T, B, D * H))}
    weights.update({f"d{s}": rng.standard_normal((L * D, B, H)) for s in cell.state_names})
    return params, inputs, weights, dict(num_layers=L, bidirectional=bidirectional, lengths=[4, 1, 3])


def states(cell, arrays, prefix="", suffix="0"):
    """The tuple of a cell's state arrays from a dict keyed like "h0" or "dh"."""
    return tuple(arrays[f"{prefix}{s}{suffix}"] for s in cell.state_names)


def loss(cell, params, inputs, weights, opts):
    y, state_n, _ = reference_forward(cell, params, inputs["x"], states(cell, inputs), **opts)
    return np.sum(y * weights["dy"]) + sum(np.sum(s * d) for s, d in
                                           zip(state_n, states(cell, weights, "d", "")))


def test_reference_gradients_match_finite_differences(cell, rng):
    params, inputs, weights, opts = random_problem(cell, rng)
    _, _, cache = reference_forward(cell, params, inputs["x"], states(cell, inputs), **opts)
    dx, dstate0, grads = reference_backward(weights["dy"], states(cell, weights, "d", ""), cache)
    analytic = dict(grads, x=dx, **{f"{s}0": d for s, d in zip(cell.state_names, dstate0)})
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


def test_numba_path_matches_reference(cell, rng):
    params, inputs, weights, opts = random_problem(cell, rng, T=7, B=3, I=5, H=9)
    layer = make_layer(cell, 5, 9, 2, bidirectional=True, dtype="float64")
    layer.load_state_dict(params)
    user_form = lambda t: t if len(t) > 1 else t[0]       # noqa: E731
    y, st_out, tape = layer.forward(inputs["x"], user_form(states(cell, inputs)),
                                    lengths=[7, 1, 3])
    dx, dstate0, grads = layer.backward(weights["dy"], tape,
                                        user_form(states(cell, weights, "d", "")))
    opts["lengths"] = [7, 1, 3]
    y_ref, state_ref, cache = reference_forward(cell, params, inputs["x"], states(cell, inputs),
                                                **opts)
    dx_ref, dstate0_ref, grads_ref = reference_backward(weights["dy"],
                                                        states(cell, weights, "d", ""), cache)
    tol = dict(rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(y, y_ref, **tol)
    np.testing.assert_allclose(dx, dx_ref, **tol)
    pairs = zip(st_out if cell.num_states > 1 else [st_out], state_ref, strict=True)
    for ours, ref in pairs:
        np.testing.assert_allclose(ours, ref, **tol)
    pairs = zip(dstate0 if cell.num_states > 1 else [dstate0], dstate0_ref, strict=True)
    for ours, ref in pairs:
        np.testing.assert_allclose(ours, ref, **tol)
    for name in grads_ref:
        np.testing.assert_allclose(grads[name], grads_ref[name], **tol, err_msg=name)
