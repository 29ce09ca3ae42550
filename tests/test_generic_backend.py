"""The generic array-API path (array-api-strict as the foreign library).

The same layer runs NumPy arrays on the Numba kernels and array-api-strict
arrays on the plain array-API backend; the two must agree.
"""

import array_api_strict as xps
import numpy as np
import pytest

import rnnkern as rk
from conftest import TOLERANCE, make_layer


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_generic_path_matches_numba_path(cell, dtype, batch_first, rng):
    layer = make_layer(cell, 4, 7, 2, bidirectional=True, batch_first=batch_first, dtype=dtype,
                       seed=1)
    x = rng.standard_normal((3, 5, 4) if batch_first else (5, 3, 4)).astype(dtype)
    lengths = [5, 2, 1]
    y, state, tape = layer.forward(x, lengths=lengths)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx, dstate0, grads = layer.backward(dy, tape)

    y_s, state_s, tape_s = layer.forward(xps.asarray(x), lengths=xps.asarray(lengths))
    assert rk.namespace_of(y_s) is not None and type(y_s).__module__.startswith("array_api_strict")
    dx_s, dstate0_s, grads_s = layer.backward(xps.asarray(dy), tape_s)
    tol = TOLERANCE[dtype]
    np.testing.assert_allclose(np.asarray(y_s), y, **tol)
    np.testing.assert_allclose(np.asarray(dx_s), dx, **tol)
    states, states_s = (state, state_s) if cell.num_states > 1 else ([state], [state_s])
    for s, s_s in zip(states, states_s, strict=True):
        np.testing.assert_allclose(np.asarray(s_s), s, **tol)
    for name in grads:
        np.testing.assert_allclose(np.asarray(grads_s[name]), grads[name], **tol, err_msg=name)


def test_tape_cannot_cross_libraries(rng):
    layer = rk.GRU(2, 3, seed=0)
    x = rng.standard_normal((4, 2, 2)).astype("float32")
    y, _, tape = layer.forward(x)
    with pytest.raises(TypeError, match="dy"):
        layer.backward(xps.asarray(np.ones_like(y)), tape)
