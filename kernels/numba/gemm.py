"""GEMM for the Numba kernels: ``out = a @ b`` through a CBLAS called by address."""

from __future__ import annotations

import numba as nb
import numpy as np
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

from . import JIT

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
