"""NumPy backend: Numba kernels around BLAS GEMMs.

Per layer-direction (contract in ``rnnkern.backends``)::

    forward   gx = x @ W_ih^T + b_ih              one GEMM over all T*B rows
              numba forward_sequence               per step: h @ W_hh^T + fused cell step
    backward  numba backward_sequence              per step: fused cell step + dgh @ W_hh
              dW_ih = dGx^T X,  dW_hh = dGh^T H_prev,  db = column sums,
              dx = dGx W_ih                        four GEMMs over all T*B rows
"""

from __future__ import annotations

import numpy as np

from rnnkern.kernels import numba_rnn

from . import int32_lengths
from .cpu_blas import gemm_function


def _rows(a):
    """(T, B, F) -> (T*B, F), C-contiguous (copies only when it must)."""
    return np.ascontiguousarray(a).reshape(-1, a.shape[-1])


def _matmul(a, b):
    """a @ b on the BLAS the Numba kernels use (see numba_rnn.gemm)."""
    out = np.empty((a.shape[0], b.shape[1]), np.result_type(a, b))
    numba_rnn.gemm(gemm_function(out.dtype), a, b, out)
    return out


def forward_direction(cell, x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, reverse):
    T, B, _ = x.shape
    GH, H = w_hh.shape
    dtype = x.dtype
    gx = _matmul(_rows(x), w_ih.T).reshape(T, B, GH)
    gx += b_ih
    lengths = int32_lengths(np, lengths, B, T)
    lstm, gru = cell.has_cell_state, cell.keeps_gh_n
    h = np.array(h0, dtype=dtype, order="C", copy=True)
    c = np.array(c0, dtype=dtype, order="C", copy=True) if lstm else np.empty((B, 0), dtype)
    y = np.empty((T, B, H), dtype)
    h_prev = np.empty((T, B, H), dtype)
    c_prev = np.empty((T, B, H if lstm else 0), dtype)
    gates = np.empty((T, B, GH), dtype)
    gh_n = np.empty((T, B, H if gru else 0), dtype)
    numba_rnn.forward_sequence(
        numba_rnn.CELL_KIND[cell.name], gemm_function(dtype), gx, np.ascontiguousarray(w_hh.T), np.ascontiguousarray(b_hh),
        h, c, lengths, reverse, y, h_prev, c_prev, gates, gh_n, np.empty((B, GH), dtype))
    saved = {"x": x, "w_ih": w_ih, "w_hh": w_hh, "lengths": lengths, "reverse": reverse,
             "h_prev": h_prev, "c_prev": c_prev, "gates": gates, "gh_n": gh_n}
    return y, h, (c if lstm else None), saved


def backward_direction(cell, dy, dh_n, dc_n, saved):
    x, w_ih, w_hh, h_prev = saved["x"], saved["w_ih"], saved["w_hh"], saved["h_prev"]
    T, B, I = x.shape
    GH, H = w_hh.shape
    dtype = x.dtype
    lstm = cell.has_cell_state
    dh = np.array(dh_n, dtype=dtype, order="C", copy=True)
    dc = np.array(dc_n, dtype=dtype, order="C", copy=True) if lstm else np.empty((B, 0), dtype)
    dgx = np.empty((T, B, GH), dtype)
    dgh = np.empty((T, B, GH), dtype) if cell.keeps_gh_n else dgx
    numba_rnn.backward_sequence(
        numba_rnn.CELL_KIND[cell.name], gemm_function(dtype), np.ascontiguousarray(dy), np.ascontiguousarray(w_hh),
        saved["gates"], saved["gh_n"], h_prev, saved["c_prev"], saved["lengths"],
        saved["reverse"], dh, dc, dgx, dgh, np.empty((B, H), dtype))
    dgx_rows, dgh_rows = _rows(dgx), _rows(dgh)
    dw_ih = _matmul(dgx_rows.T, _rows(x))
    dw_hh = _matmul(dgh_rows.T, _rows(h_prev))
    dx = _matmul(dgx_rows, w_ih).reshape(T, B, I)
    return (dx, dh, (dc if lstm else None), dw_ih, dw_hh,
            dgx_rows.sum(axis=0), dgh_rows.sum(axis=0))
