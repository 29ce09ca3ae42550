"""Numba CPU kernels: fused cell steps and the time loops around them.

Everything sits in this one file on purpose: Numba's on-disk cache
(``cache=True``) only notices edits to the file of the function it caches,
so callees in other files could go stale.

Layout of the work for one layer and direction (see ``rnnkern.cells`` for the
equations and ``rnnkern.backends.numpy_backend`` for the GEMMs around these)::

    forward_sequence   for each step: gh = h @ W_hh^T (BLAS), then one fused
                       pointwise pass (bias, gates, state update, length mask,
                       what BPTT keeps)
    backward_sequence  for each step backwards: one fused pointwise pass
                       (pre-activation gradients, carried dh/dc), then
                       dh += dgh @ W_hh (BLAS)

The time loops run inside Numba, so no Python sits between steps.  The
pointwise passes go one batch row at a time over 1-D views, one view per gate,
with no branch in the inner loop, and use the polynomial ``exp`` below, so
LLVM vectorizes them; the cell is chosen once per step, outside those loops.
"""

from __future__ import annotations

import numba as nb
import numpy as np
from numba.core import types
from llvmlite import ir
from numba.extending import intrinsic, overload

# One fastmath setting for the package, without nnan/ninf so NaN and inf still
# behave; error_model="numpy" drops the division checks that block vectorizing.
FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}
JIT = dict(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
INLINE = dict(JIT, inline="always")

# Cell kinds understood by the sequence drivers (see rnnkern.cells.CELLS).
RNN_TANH, RNN_RELU, LSTM, GRU = 0, 1, 2, 3
CELL_KIND = {"rnn_tanh": RNN_TANH, "rnn_relu": RNN_RELU, "lstm": LSTM, "gru": GRU}


# ----------------------------------------------------------------------------
# Vectorizable exp, sigmoid, tanh
#
# exp(x) = 2^n * exp(r),  n = round(x / ln 2),  r = x - n ln 2 in [-ln2/2, ln2/2]
# with ln 2 split in a high and a low part (Cody-Waite) so r is exact, exp(r) a
# Taylor polynomial (degree 6 in float32: error < 2e-7; degree 12 in float64:
# error < 1e-15), and 2^n built directly in the exponent bits.
# ----------------------------------------------------------------------------

@intrinsic
def _float_from_bits(typingctx, bits):
    """Reinterpret int32 bits as float32, int64 bits as float64."""
    target = {types.int32: types.float32, types.int64: types.float64}.get(bits)
    if target is None:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(target))

    return target(bits), codegen


_LOG2E_32, _LN2_HI_32, _LN2_LO_32 = np.float32(1.4426950408889634), np.float32(0.693359375), np.float32(-2.12194440e-4)
_EXP_MIN_32, _EXP_MAX_32 = np.float32(-87.0), np.float32(88.0)
_HALF_32, _ONE_32 = np.float32(0.5), np.float32(1.0)


def _taylor(k):
    value = 1.0
    for m in range(2, k + 1):
        value /= m
    return value


_C32 = tuple(np.float32(_taylor(k)) for k in range(7))
_C64 = tuple(_taylor(k) for k in range(13))
_LN2_HI_64, _LN2_LO_64 = 6.93147180369123816490e-01, 1.90821492927058770002e-10


@nb.njit(**INLINE)
def _exp32(x):
    x = _EXP_MAX_32 if x > _EXP_MAX_32 else x          # comparisons keep NaN
    x = _EXP_MIN_32 if x < _EXP_MIN_32 else x
    n = np.floor(x * _LOG2E_32 + _HALF_32)
    r = x - n * _LN2_HI_32 - n * _LN2_LO_32
    p = _C32[6]
    p = p * r + _C32[5]
    p = p * r + _C32[4]
    p = p * r + _C32[3]
    p = p * r + _C32[2]
    p = p * r + _C32[1]
    p = p * r + _C32[0]
    # numba widens int32 arithmetic to int64: narrow again before the bitcast
    return p * _float_from_bits(np.int32((np.int32(n) + 127) << 23))


@nb.njit(**INLINE)
def _exp64(x):
    x = 708.0 if x > 708.0 else x
    x = -708.0 if x < -708.0 else x
    n = np.floor(x * 1.4426950408889634 + 0.5)
    r = x - n * _LN2_HI_64 - n * _LN2_LO_64
    p = _C64[12]
    p = p * r + _C64[11]
    p = p * r + _C64[10]
    p = p * r + _C64[9]
    p = p * r + _C64[8]
    p = p * r + _C64[7]
    p = p * r + _C64[6]
    p = p * r + _C64[5]
    p = p * r + _C64[4]
    p = p * r + _C64[3]
    p = p * r + _C64[2]
    p = p * r + _C64[1]
    p = p * r + _C64[0]
    return p * _float_from_bits((np.int64(n) + 1023) << 52)


def fast_exp(x):
    """exp(x), vectorizable; float32 or float64 by the type of x."""
    raise NotImplementedError("only callable from Numba-compiled code")


@overload(fast_exp, jit_options=JIT)
def _fast_exp_overload(x):
    if x == types.float32:
        return lambda x: _exp32(x)
    if x == types.float64:
        return lambda x: _exp64(x)
    return None


def one(x):
    """The constant 1 in the type of x (so float32 math stays float32)."""
    raise NotImplementedError("only callable from Numba-compiled code")


@overload(one, jit_options=JIT)
def _one_overload(x):
    if x == types.float32:
        return lambda x: _ONE_32
    return lambda x: 1.0


@nb.njit(**INLINE)
def sigmoid(x):
    """1 / (1 + exp(-x))."""
    return one(x) / (one(x) + fast_exp(-x))


@nb.njit(**INLINE)
def tanh(x):
    """tanh(x) = 1 - 2 / (exp(2x) + 1): exact to an absolute 1e-7 (f32), 1e-16 (f64)."""
    return one(x) - (one(x) + one(x)) / (fast_exp(x + x) + one(x))


# ----------------------------------------------------------------------------
# GEMM: out = a @ b, through one of two BLAS
#
# ``blas`` is a pair (address of a CBLAS ``?gemm``, 1 if its sizes are 64-bit
# integers (ILP64) else 0), see rnnkern.backends.cpu_blas; address 0 means
# ``np.dot``, which Numba sends to SciPy's OpenBLAS.  Passing the address at
# run time (not baking it in) keeps the compiled code cacheable and lets one
# build serve NumPy's OpenBLAS, MKL and SciPy's OpenBLAS alike.
# ----------------------------------------------------------------------------

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112


def _cblas_gemm_caller(index_bits):
    """An intrinsic calling cblas_?gemm by address, sizes of ``index_bits`` bits:

    cblas_?gemm(RowMajor, transa, transb, m, n, k, 1, a, lda, b, ldb, 0, c, ldc)
    """
    @intrinsic
    def call(typingctx, address, transa, transb, m, n, k, a, lda, b, ldb, c, ldc):
        scalar = c.dtype
        if scalar not in (types.float32, types.float64):
            return None
        sig = types.void(address, transa, transb, m, n, k, a, lda, b, ldb, c, ldc)

        def codegen(context, builder, signature, args):
            enum, index = ir.IntType(32), ir.IntType(index_bits)
            real = context.get_value_type(scalar)
            ptr = real.as_pointer()
            fnty = ir.FunctionType(ir.VoidType(), [enum, enum, enum, index, index, index, real,
                                                   ptr, index, ptr, index, real, ptr, index])
            function = builder.inttoptr(args[0], fnty.as_pointer())

            def integer(i, bits):
                return context.cast(builder, args[i], signature.args[i], getattr(types, f"int{bits}"))

            def data(i):
                return context.make_array(signature.args[i])(context, builder, args[i]).data

            builder.call(function, [ir.Constant(enum, _ROW_MAJOR), integer(1, 32), integer(2, 32),
                                    integer(3, index_bits), integer(4, index_bits),
                                    integer(5, index_bits), ir.Constant(real, 1.0),
                                    data(6), integer(7, index_bits), data(8), integer(9, index_bits),
                                    ir.Constant(real, 0.0), data(10), integer(11, index_bits)])
            return context.get_dummy_value()

        return sig, codegen
    return call


_cblas_gemm_lp64 = _cblas_gemm_caller(32)
_cblas_gemm_ilp64 = _cblas_gemm_caller(64)


@nb.njit(**JIT)
def gemm(blas, a, b, out):
    """out = a @ b (2-D; a, b C- or F-contiguous, out C-contiguous)."""
    address, ilp64 = blas
    if address == 0:
        np.dot(a, b, out)
        return
    M, K = a.shape
    N = b.shape[1]
    if a.flags.c_contiguous:
        transa, lda = _NO_TRANS, K
    else:                                   # a transposed C array: a.T is C
        transa, lda = _TRANS, M
    if b.flags.c_contiguous:
        transb, ldb = _NO_TRANS, N
    else:
        transb, ldb = _TRANS, K
    if ilp64:
        _cblas_gemm_ilp64(address, transa, transb, M, N, K, a, lda, b, ldb, out, N)
    else:
        _cblas_gemm_lp64(address, transa, transb, M, N, K, a, lda, b, ldb, out, N)


# ----------------------------------------------------------------------------
# Fused forward steps, one batch row each.
#   gx, gh, b_hh, gates: (G*H,)   h, c, y: (H,)   h and c are updated in place.
# ----------------------------------------------------------------------------

@nb.njit(**INLINE)
def _rnn_forward_row(relu, gx, gh, b_hh, h, y, gates):
    for j in range(h.shape[0]):
        a = gx[j] + gh[j] + b_hh[j]
        if relu:
            hj = a if a > 0 else a * 0          # max(a, 0); select, not a branch
        else:
            hj = tanh(a)
        h[j] = hj
        y[j] = hj
        gates[j] = hj                          # backward needs h_t itself


@nb.njit(**INLINE)
def _lstm_forward_row(gx, gh, b_hh, h, c, y, gates):
    H = h.shape[0]
    gx_i, gx_f, gx_g, gx_o = gx[:H], gx[H:2 * H], gx[2 * H:3 * H], gx[3 * H:]
    gh_i, gh_f, gh_g, gh_o = gh[:H], gh[H:2 * H], gh[2 * H:3 * H], gh[3 * H:]
    b_i, b_f, b_g, b_o = b_hh[:H], b_hh[H:2 * H], b_hh[2 * H:3 * H], b_hh[3 * H:]
    s_i, s_f, s_g, s_o = gates[:H], gates[H:2 * H], gates[2 * H:3 * H], gates[3 * H:]
    for j in range(H):
        i = sigmoid(gx_i[j] + gh_i[j] + b_i[j])
        f = sigmoid(gx_f[j] + gh_f[j] + b_f[j])
        g = tanh(gx_g[j] + gh_g[j] + b_g[j])
        o = sigmoid(gx_o[j] + gh_o[j] + b_o[j])
        cj = f * c[j] + i * g                  # c_t = f c_{t-1} + i g
        hj = o * tanh(cj)                      # h_t = o tanh(c_t)
        c[j], h[j], y[j] = cj, hj, hj
        s_i[j], s_f[j], s_g[j], s_o[j] = i, f, g, o


@nb.njit(**INLINE)
def _gru_forward_row(gx, gh, b_hh, h, y, gates, gh_n):
    H = h.shape[0]
    gx_r, gx_z, gx_n = gx[:H], gx[H:2 * H], gx[2 * H:]
    gh_r, gh_z, gh_nn = gh[:H], gh[H:2 * H], gh[2 * H:]
    b_r, b_z, b_n = b_hh[:H], b_hh[H:2 * H], b_hh[2 * H:]
    s_r, s_z, s_n = gates[:H], gates[H:2 * H], gates[2 * H:]
    for j in range(H):
        r = sigmoid(gx_r[j] + gh_r[j] + b_r[j])
        z = sigmoid(gx_z[j] + gh_z[j] + b_z[j])
        hn = gh_nn[j] + b_n[j]                 # W_hn h + b_hn, kept for dr
        n = tanh(gx_n[j] + r * hn)
        hj = n + z * (h[j] - n)                # (1 - z) n + z h
        h[j], y[j] = hj, hj
        s_r[j], s_z[j], s_n[j], gh_n[j] = r, z, n, hn


@nb.njit(**JIT)
def forward_sequence(cell, blas, gx, w_hh_t, b_hh, h, c, lengths, reverse,
                     y, h_prev, c_prev, gates, gh_n, gh):
    """Run one layer-direction forward over all T steps.

    Parameters (outputs after the inputs they pair with)
    ----------
    cell : int           one of RNN_TANH, RNN_RELU, LSTM, GRU
    blas : (int, int)    the GEMM to call (see gemm)
    gx : (T, B, G*H)     x @ W_ih^T + b_ih for every step
    w_hh_t : (H, G*H)    W_hh transposed, C-contiguous
    b_hh : (G*H,)
    h, c : (B, H)        initial state on entry, final state on exit (c: (B, 0)
                         unless LSTM)
    lengths : (B,) int   row b is active at time t iff t < lengths[b]
    reverse : bool       t = T-1 ... 0
    y : (T, B, H)        outputs, zero where inactive
    h_prev, c_prev : (T, B, H)  state entering step t (c_prev (T, B, 0) unless LSTM)
    gates : (T, B, G*H)  activated gates (RNN: h_t)
    gh_n : (T, B, H)     GRU: W_hn h + b_hn ((T, B, 0) otherwise)
    gh : (B, G*H)        workspace
    """
    T, B = gx.shape[0], gx.shape[1]
    for s in range(T):
        t = T - 1 - s if reverse else s
        h_prev[t] = h
        c_prev[t] = c
        gemm(blas, h, w_hh_t, gh)
        for b in range(B):
            if t < lengths[b]:
                if cell == LSTM:
                    _lstm_forward_row(gx[t, b], gh[b], b_hh, h[b], c[b], y[t, b], gates[t, b])
                elif cell == GRU:
                    _gru_forward_row(gx[t, b], gh[b], b_hh, h[b], y[t, b], gates[t, b], gh_n[t, b])
                else:
                    _rnn_forward_row(cell == RNN_RELU, gx[t, b], gh[b], b_hh, h[b], y[t, b], gates[t, b])
            else:                               # padded step: state held, y = 0
                y[t, b] = 0
                gates[t, b] = 0


# ----------------------------------------------------------------------------
# Fused backward steps, one batch row each.
#   dy, dh, dc: (H,)  dh (and dc) enter as the gradient carried into step t
#   and leave as the part of dh_{t-1} not through W_hh (and dc_{t-1}).
#   dgx, dgh: (G*H,) gradients of the pre-activations from x and from h.
# ----------------------------------------------------------------------------

@nb.njit(**INLINE)
def _rnn_backward_row(relu, dy, dh, gates, dgx):
    for j in range(dh.shape[0]):
        hj = gates[j]
        g = dh[j] + dy[j]
        if relu:
            da = g if hj > 0 else g * 0        # relu' = [h > 0]
        else:
            da = g * (one(hj) - hj * hj)       # tanh' = 1 - h^2
        dgx[j] = da
        dh[j] = 0


@nb.njit(**INLINE)
def _lstm_backward_row(dy, dh, dc, gates, c_prev, dgx):
    H = dh.shape[0]
    s_i, s_f, s_g, s_o = gates[:H], gates[H:2 * H], gates[2 * H:3 * H], gates[3 * H:]
    d_i, d_f, d_g, d_o = dgx[:H], dgx[H:2 * H], dgx[2 * H:3 * H], dgx[3 * H:]
    for j in range(H):
        i, f, g, o = s_i[j], s_f[j], s_g[j], s_o[j]
        tc = tanh(f * c_prev[j] + i * g)       # tanh(c_t), recomputed
        dhj = dh[j] + dy[j]
        dcj = dc[j] + dhj * o * (one(tc) - tc * tc)
        d_i[j] = dcj * g * i * (one(i) - i)
        d_f[j] = dcj * c_prev[j] * f * (one(f) - f)
        d_g[j] = dcj * i * (one(g) - g * g)
        d_o[j] = dhj * tc * o * (one(o) - o)
        dc[j] = dcj * f
        dh[j] = 0


@nb.njit(**INLINE)
def _gru_backward_row(dy, dh, gates, gh_n, h_prev, dgx, dgh):
    H = dh.shape[0]
    s_r, s_z, s_n = gates[:H], gates[H:2 * H], gates[2 * H:]
    dx_r, dx_z, dx_n = dgx[:H], dgx[H:2 * H], dgx[2 * H:]
    dh_r, dh_z, dh_n = dgh[:H], dgh[H:2 * H], dgh[2 * H:]
    for j in range(H):
        r, z, n = s_r[j], s_z[j], s_n[j]
        dhj = dh[j] + dy[j]
        dn = dhj * (one(z) - z) * (one(n) - n * n)      # h = n + z (h_prev - n)
        dz = dhj * (h_prev[j] - n) * z * (one(z) - z)
        dr = dn * gh_n[j] * r * (one(r) - r)            # n = tanh(gx_n + r gh_n)
        dx_r[j], dx_z[j], dx_n[j] = dr, dz, dn
        dh_r[j], dh_z[j], dh_n[j] = dr, dz, dn * r
        dh[j] = dhj * z


@nb.njit(**JIT)
def backward_sequence(cell, blas, dy, w_hh, gates, gh_n, h_prev, c_prev, lengths, reverse,
                      dh, dc, dgx, dgh, dh_through_w):
    """Backpropagate one layer-direction through all T steps.

    Parameters (outputs after the inputs they pair with)
    ----------
    cell : int           one of RNN_TANH, RNN_RELU, LSTM, GRU
    blas : (int, int)    the GEMM to call (see gemm)
    dy : (T, B, H)       gradient of y
    w_hh : (G*H, H)      C-contiguous
    gates, gh_n, h_prev, c_prev, lengths, reverse : as kept by forward_sequence
    dh, dc : (B, H)      gradient of the final state on entry, of the initial
                         state on exit (dc: (B, 0) unless LSTM)
    dgx : (T, B, G*H)    gradient of x @ W_ih^T + b_ih
    dgh : (T, B, G*H)    gradient of h @ W_hh^T + b_hh (the same array as dgx
                         unless GRU)
    dh_through_w : (B, H)  workspace
    """
    T, B = dy.shape[0], dy.shape[1]
    for s in range(T):
        t = s if reverse else T - 1 - s
        for b in range(B):
            if t < lengths[b]:
                if cell == LSTM:
                    _lstm_backward_row(dy[t, b], dh[b], dc[b], gates[t, b], c_prev[t, b], dgx[t, b])
                elif cell == GRU:
                    _gru_backward_row(dy[t, b], dh[b], gates[t, b], gh_n[t, b], h_prev[t, b],
                                      dgx[t, b], dgh[t, b])
                else:
                    _rnn_backward_row(cell == RNN_RELU, dy[t, b], dh[b], gates[t, b], dgx[t, b])
            else:                               # padded step: dh, dc pass through
                dgx[t, b] = 0
                dgh[t, b] = 0
        gemm(blas, dgh[t], w_hh, dh_through_w)
        dh += dh_through_w                      # dh_{t-1} = direct part + dgh W_hh
