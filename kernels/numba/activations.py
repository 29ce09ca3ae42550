"""Vectorizable exp, sigmoid and tanh for the Numba kernels (float32 and float64).

LLVM vectorizes loops over these (AVX-512 here), which it cannot do with
``math.exp``'s library call.
"""

from __future__ import annotations

import numba as nb
import numpy as np
from numba.core import types
from numba.extending import intrinsic, overload

from . import INLINE, JIT

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
