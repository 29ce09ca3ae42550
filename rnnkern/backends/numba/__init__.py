"""Numba backend (NumPy arrays): Numba kernels around BLAS GEMMs.

Per layer-direction (contract in ``rnnkern.backends``)::

    forward   gx = x @ W_ih^T + b_ih              one GEMM over all T*B rows
              drivers.forward_sequence            per step: h @ W_hh^T + the cell's fused rows
    backward  drivers.backward_sequence           per step: the cell's fused rows + dgh @ W_hh
              weight_gradients                     dW_ih, dW_hh, db, dx: GEMMs over all T*B rows

The kernels live in ``rnnkern.kernels.numba``; ``blas`` picks the CBLAS their
GEMMs call.
"""

from __future__ import annotations

import numpy as np

from rnnkern.kernels.numba import drivers, gemm

from .. import int32_lengths, weight_gradients
from .blas import gemm_function

__all__ = ["forward_direction", "backward_direction"]


def _rows(a):
    """(T, B, F) -> (T*B, F), C-contiguous (copies only when it must)."""
    return np.ascontiguousarray(a).reshape(-1, a.shape[-1])


def _matmul(a, b):
    """a @ b on the BLAS the Numba kernels use (see kernels.numba.gemm)."""
    out = np.empty((a.shape[0], b.shape[1]), np.result_type(a, b))
    gemm.gemm(gemm_function(out.dtype), a, b, out)
    return out


def _own_copy(a, dtype):
    return np.array(a, dtype=dtype, order="C", copy=True)


def forward_direction(cell, x, params, state, lengths, reverse, *, keep=True):
    w_ih, w_hh = params["weight_ih"], params["weight_hh"]
    T, B, _ = x.shape
    GH, P = w_hh.shape
    H = w_ih.shape[0] // cell.num_gates
    dtype = x.dtype
    gx = _matmul(_rows(x), w_ih.T).reshape(T, B, GH)
    gx += params["bias_ih"]
    lengths = int32_lengths(np, lengths, B, T)
    state = tuple(_own_copy(s, dtype) for s in state)
    y = np.empty((T, B, P), dtype)
    history = tuple(np.empty((T,) + s.shape, dtype) for s in state)
    saved = tuple(np.empty((T, B, s.width * H), dtype) for s in cell.saved)
    w_hr = params.get("weight_hr")
    if w_hr is None:
        projection = (_NONE_2D[dtype], state, y, _NONE_2D[dtype])
    else:                        # the rows write m_t = o tanh(c_t); the driver projects it
        m = np.zeros((B, H), dtype)
        projection = (np.ascontiguousarray(w_hr.T), (m,) + state[1:], np.empty((T, B, H), dtype),
                      np.empty((B, P), dtype))
    drivers.forward_sequence(
        drivers.CellRows(cell.kernels["numba"]), gemm_function(dtype), gx,
        np.ascontiguousarray(w_hh.T), np.ascontiguousarray(params["bias_hh"]), lengths, reverse,
        state, y, history, saved, np.empty((B, GH), dtype), *projection)
    if not keep:
        return y, state, None
    tape = {"x": x, "w_ih": w_ih, "w_hh": w_hh, "w_hr": w_hr, "lengths": lengths,
            "reverse": reverse, "history": history, "saved": saved, "m": projection[2]}
    return y, state, tape


def backward_direction(cell, dy, dstate_n, tape):
    x, w_ih, w_hh, history = tape["x"], tape["w_ih"], tape["w_hh"], tape["history"]
    T, B, I = x.shape
    GH, P = w_hh.shape
    H = w_ih.shape[0] // cell.num_gates
    dtype = x.dtype
    carry = tuple(_own_copy(d, dtype) for d in dstate_n)
    dgx = np.empty((T, B, GH), dtype)
    dgh = np.empty((T, B, GH), dtype) if "dgh" in cell.step_gradients else dgx
    dy = np.ascontiguousarray(dy)
    w_hr = tape["w_hr"]
    if w_hr is None:
        projection = (_NONE_2D[dtype], carry, dy, _NONE_3D[dtype])
    else:                        # the rows see dm = dh W_hr; dy is already in it
        projection = (np.ascontiguousarray(w_hr), (np.empty((B, H), dtype),) + carry[1:],
                      np.broadcast_to(np.zeros((1, 1, H), dtype), (T, B, H)),
                      np.empty((T, B, P), dtype))
    drivers.backward_sequence(
        drivers.CellRows(cell.kernels["numba"]), gemm_function(dtype), dy,
        np.ascontiguousarray(w_hh), tape["lengths"], tape["reverse"], history, tape["saved"],
        carry, dgx, dgh, np.empty((B, P), dtype), *projection)
    dx, grads = weight_gradients(np, _matmul, _rows(x), _rows(history[0]), _rows(dgx),
                                 _rows(dgh), w_ih)
    if w_hr is not None:         # dW_hr = sum_t dh_t^T m_t
        grads["weight_hr"] = _matmul(_rows(projection[3]).T, _rows(tape["m"]))
    return dx.reshape(T, B, I), carry, grads


# Stand-ins for the projection arguments of a layer without one.
_NONE_2D = {np.dtype(t): np.empty((0, 0), t) for t in (np.float32, np.float64)}
_NONE_3D = {np.dtype(t): np.empty((0, 0, 0), t) for t in (np.float32, np.float64)}
