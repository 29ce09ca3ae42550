"""GEMM for the Numba kernels: ``out = a @ b`` through a CBLAS called by address."""

from __future__ import annotations

import numba as nb
import numpy as np
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

from . import INLINE, JIT

# ----------------------------------------------------------------------------
# GEMM: out = a @ b, through one of two BLAS
#
# ``blas`` is a triple (address of a CBLAS ``?gemm``, 1 if its sizes are 64-bit
# integers (ILP64) else 0, address of the same BLAS's ``?gemv``), see
# rnnkern.backends.numba.blas; gemm address 0 means ``np.dot``, which Numba
# sends to SciPy's OpenBLAS.  Passing the addresses at run time (not baking
# them in) keeps the compiled code cacheable and lets one build serve NumPy's
# OpenBLAS, MKL and SciPy's OpenBLAS alike.
#
# A product with one row (the recurrent step at batch 1, ``h (1, P) @ W^T``)
# or one column goes to ``?gemv``: a GEMM with M = 1 runs the GEMM machinery
# (packing, blocking) for a matrix-vector product, measured 22 us against
# 13.6 us for GEMV on a 1024x256 float32 W_hh.
#
# A product with an inner size of one (a weight gradient over one row, T*B = 1:
# ``dG^T (G*H, 1) @ x (1, I)``) is an outer product, written here: OpenBLAS's GEMM
# took 81 us for a 1024x256 float32 one, this loop 32 (the stores alone).
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


def _cblas_gemv_caller(index_bits):
    """An intrinsic calling cblas_?gemv by address, sizes of ``index_bits`` bits:

    cblas_?gemv(RowMajor, trans, rows, cols, 1, a, lda, x, 1, 0, y, 1)
    """
    @intrinsic
    def call(typingctx, address, trans, rows, cols, a, lda, x, y):
        scalar = y.dtype
        if scalar not in (types.float32, types.float64):
            return None
        sig = types.void(address, trans, rows, cols, a, lda, x, y)

        def codegen(context, builder, signature, args):
            enum, index = ir.IntType(32), ir.IntType(index_bits)
            real = context.get_value_type(scalar)
            ptr = real.as_pointer()
            fnty = ir.FunctionType(ir.VoidType(), [enum, enum, index, index, real, ptr, index,
                                                   ptr, index, real, ptr, index])
            function = builder.inttoptr(args[0], fnty.as_pointer())

            def integer(i, bits):
                return context.cast(builder, args[i], signature.args[i], getattr(types, f"int{bits}"))

            def data(i):
                return context.make_array(signature.args[i])(context, builder, args[i]).data

            one = ir.Constant(index, 1)
            builder.call(function, [ir.Constant(enum, _ROW_MAJOR), integer(1, 32),
                                    integer(2, index_bits), integer(3, index_bits),
                                    ir.Constant(real, 1.0), data(4), integer(5, index_bits),
                                    data(6), one, ir.Constant(real, 0.0), data(7), one])
            return context.get_dummy_value()

        return sig, codegen
    return call


_cblas_gemv_lp64 = _cblas_gemv_caller(32)
_cblas_gemv_ilp64 = _cblas_gemv_caller(64)


@nb.njit(**JIT)
def _gemv(address, ilp64, trans, rows, cols, matrix, lda, x, y):
    """y = op(matrix) x, matrix (rows, cols) row-major with leading dimension lda."""
    if ilp64:
        _cblas_gemv_ilp64(address, trans, rows, cols, matrix, lda, x, y)
    else:
        _cblas_gemv_lp64(address, trans, rows, cols, matrix, lda, x, y)


@nb.njit(**JIT)
def gemm(blas, a, b, out):
    """out = a @ b (2-D; a, b with a unit stride, out with contiguous rows; see _operand_layout).

    One row (M = 1) or one column (N = 1) goes to the BLAS's ``?gemv``
    (``K > 0``: a GEMV of empty vectors would leave ``out`` unwritten); an inner
    size of one (K = 1) is an outer product, computed here.
    """
    address, ilp64, gemv_address = blas
    if address == 0:                        # np.dot wants contiguous operands
        out[:] = np.dot(np.ascontiguousarray(a), np.ascontiguousarray(b))
        return
    M, K = a.shape
    N = b.shape[1]
    item = out.itemsize
    if gemv_address != 0 and K > 0:
        # the vector operand and the output must be contiguous (increments of 1)
        if M == 1 and (K == 1 or a.strides[1] == item) and (N == 1 or out.strides[1] == item):
            trans, ld = _operand_layout(b)      # out^T = b^T a^T
            if trans == _NO_TRANS:              # b (K, N) row-major
                _gemv(gemv_address, ilp64, _TRANS, K, N, b, ld, a, out)
            else:                               # b.T (N, K) row-major
                _gemv(gemv_address, ilp64, _NO_TRANS, N, K, b, ld, a, out)
            return
        if N == 1 and (K == 1 or b.strides[0] == item) and (M == 1 or out.strides[0] == item):
            trans, ld = _operand_layout(a)      # out = a b
            if trans == _NO_TRANS:              # a (M, K) row-major
                _gemv(gemv_address, ilp64, _NO_TRANS, M, K, a, ld, b, out)
            else:                               # a.T (K, M) row-major
                _gemv(gemv_address, ilp64, _TRANS, K, M, a, ld, b, out)
            return
    if K == 1 and (N == 1 or b.strides[1] == item):
        _outer_product(a, b, out)
        return
    transa, lda = _operand_layout(a)
    transb, ldb = _operand_layout(b)
    ldc = _output_leading_dimension(out)
    if ilp64:
        _cblas_gemm_ilp64(address, transa, transb, M, N, K, a, lda, b, ldb, out, ldc)
    else:
        _cblas_gemm_lp64(address, transa, transb, M, N, K, a, lda, b, ldb, out, ldc)


@nb.njit(**INLINE)
def _outer_product(a, b, out):
    """out = a @ b for a (M, 1) and b (1, N) with a contiguous row: row i is a[i, 0] b."""
    b_row = b[0]
    for i in range(a.shape[0]):
        scale = a[i, 0]
        row = out[i]
        for j in range(b_row.shape[0]):
            row[j] = scale * b_row[j]


@nb.njit(**INLINE)
def _operand_layout(a):
    """(CBLAS transpose flag, leading dimension) of a 2-D operand with a unit stride.

    Rows contiguous: row-major as it is; columns contiguous: the transpose of
    a row-major matrix.  Views qualify (a block of columns of a C array, its
    transpose), with the leading dimension read from the strides.  Leading
    dimensions are at least 1, as CBLAS demands even of empty operands.
    """
    rows, cols = a.shape
    item = a.itemsize
    if cols <= 1 or a.strides[1] == item:
        return _NO_TRANS, max(a.strides[0] // item if rows > 1 else cols, cols, 1)
    if rows <= 1 or a.strides[0] == item:
        return _TRANS, max(a.strides[1] // item if cols > 1 else rows, rows, 1)
    raise ValueError("gemm: an operand has no unit stride")


@nb.njit(**INLINE)
def _output_leading_dimension(out):
    """The leading dimension of a row-major output (C-contiguous, or a block of rows of one)."""
    rows, cols = out.shape
    item = out.itemsize
    if cols > 1 and out.strides[1] != item:
        raise ValueError("gemm: the output's rows are not contiguous")
    return max(out.strides[0] // item if rows > 1 else cols, cols, 1)
