"""Register-tiled products against weights packed once per call: ``out = a @ W^T``.

The split driver's per-step products (``split.py``) are small GEMMs whose
weight operand is the same for all T steps: ``h_{t-1} (B, H) @ W_slice^T``.
A BLAS repacks W on every call and, at batch 1-8, takes a GEMV or a
poorly blocked GEMM.  Here W is packed ONCE into panels of ``NR`` columns
(:func:`pack_gate_rows`, :func:`pack_columns`), and each tile of the product
keeps its ``m x NR`` accumulators in vector registers for the whole sum over
k::

    for k < K:   c[i, :] += a[row0 + i, k] * panel[k, :]      (i < m <= MR)

that is, per k, ``VECTORS`` vector loads of the panel, ``m`` broadcasts of
``a`` and ``m * VECTORS`` FMAs.  The tile is written in LLVM IR (llvmlite)
with explicit vector types and ``llvm.fma``, because Numba's loop vectorizer
does not keep an accumulator tile in registers (a plain-Numba version of
this loop, accumulating into the output, ran at 8 GFLOP/s) and prefers
256-bit vectors on this CPU.

Sizes, from the host CPU's vector registers (``llvmlite``'s feature list):
AVX-512 (32 registers of 64 bytes): MR = 6 rows x 4 vectors, 24
accumulators; AVX/AVX2 (16 of 32 bytes): 6 x 2; otherwise 16-byte vectors,
6 x 2.  Measured on the 2-core VM (AVX-512, one thread, float32): 6 x 4
tiles ran a 32 x 256 by 256 x 512 product at ~180 GFLOP/s and 64 x 512 by
512 x 1024 at ~150, where OpenBLAS's single-threaded SGEMM ran 106 and 120
(it packs W on every call); 4 x 4 tiles ran 130 and 118.  On the Zen 3 VM
(AVX2, 6 x 2): 88-97 GFLOP/s from batch 4 up, about one core's peak.  Tiles
of fewer rows cover several panels (:func:`panels_at_once`).
"""

from __future__ import annotations

import llvmlite.binding as llvm
import numba as nb
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from . import INLINE


def _host_vector_shape():
    """(vector bytes, vectors per tile row) for this CPU."""
    features = llvm.get_host_cpu_features()
    if features.get("avx512f", False):
        return 64, 4
    if features.get("avx", False):
        return 32, 2
    return 16, 2


VECTOR_BYTES, VECTORS = _host_vector_shape()
REGISTERS = 32 if VECTOR_BYTES == 64 else 16
"""Vector registers: 32 with AVX-512, 16 with AVX/AVX2 and SSE."""
MR = 6
"""Rows of ``a`` per tile."""


def panel_width(itemsize: int) -> int:
    """``NR``: the columns of one panel (``VECTORS`` vectors) for elements of ``itemsize`` bytes."""
    return VECTORS * VECTOR_BYTES // itemsize


@nb.njit(**INLINE)
def panels_at_once(rows):
    """How many adjacent panels one tile of ``rows`` rows (1 <= rows <= MR) covers.

    A tile's accumulators are its FMA chains: each FMA waits for the previous
    one on the same accumulator (4 cycles on Zen 3 and on Intel cores since
    Skylake, two FMAs issued a cycle), so fewer than ``FMA_CHAINS`` of them
    leave the FMA units idle.  A full tile has ``MR * VECTORS``; a tile of
    fewer rows (batch 1, the last ``B % MR`` rows) takes more panels instead,
    as long as its accumulators and the panel vectors of one k fit in the
    registers (more spills: measured, AVX2, 2 rows x 3 panels ran at half the
    speed of 2 x 2).  Every output element is still one chain over k in
    order, so the grouping does not change a result.

    Measured on the Zen 3 VM (AVX2, one thread, float32, K = 256, 512
    columns): batch 1 9.8 -> 6.8-7.4 us (then L2-bound: ~75 GB/s of panels),
    batch 2 10.5 -> 7.0, batch 8 (6 + 2 rows) 27.2 -> 24.4.
    """
    chains = -(-FMA_CHAINS // (rows * VECTORS))
    fitting = (REGISTERS - 1) // ((rows + 1) * VECTORS)     # accumulators, panel vectors, a
    return max(1, min(chains, fitting))


FMA_CHAINS = 8
"""Independent FMAs a core keeps in flight: latency 4 cycles x 2 FMA units."""


@intrinsic
def _tile(typingctx, a, row0, rows, panels, panel, group, out):
    """``out[row0 + i, (panel+q)*NR : (panel+q+1)*NR] = a[row0 + i] @ panels[panel+q]`` for
    i < rows and q < group.

    ``a`` (B, K) and ``out`` (B, >= P*NR) with contiguous rows; ``panels``
    (P, K, NR) C-contiguous; 1 <= rows <= MR, 1 <= group <= panels_at_once(rows).
    One LLVM block per (rows, group), picked by a switch.
    """
    if not (isinstance(a, types.Array) and isinstance(out, types.Array) and
            isinstance(panels, types.Array) and a.dtype == out.dtype == panels.dtype and
            a.dtype in (types.float32, types.float64)):
        return None
    sig = types.void(a, types.intp, types.intp, panels, types.intp, types.intp, out)

    def codegen(context, builder, signature, args):
        a_array = context.make_array(signature.args[0])(context, builder, args[0])
        panel_array = context.make_array(signature.args[3])(context, builder, args[3])
        out_array = context.make_array(signature.args[6])(context, builder, args[6])
        real = context.get_value_type(signature.args[0].dtype)
        itemsize = context.get_abi_sizeof(real)
        lanes = VECTOR_BYTES // itemsize
        width = lanes * VECTORS                            # NR
        vector = ir.VectorType(real, lanes)
        intp = context.get_value_type(types.intp)
        fma = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vector, [vector, vector, vector]),
            f"llvm.fma.v{lanes}f{itemsize * 8}")
        row0, rows, panel, group = args[1], args[2], args[4], args[5]
        K = cgutils.unpack_tuple(builder, panel_array.shape, 3)[1]
        size = ir.Constant(intp, itemsize)
        lda = builder.sdiv(cgutils.unpack_tuple(builder, a_array.strides, 2)[0], size)
        ldc = builder.sdiv(cgutils.unpack_tuple(builder, out_array.strides, 2)[0], size)
        a_rows = builder.gep(a_array.data, [builder.mul(row0, lda)])
        width_constant = ir.Constant(intp, width)
        c_tile = builder.gep(out_array.data, [builder.add(builder.mul(row0, ldc),
                                                          builder.mul(panel, width_constant))])
        panel_size = builder.mul(K, width_constant)        # elements of one panel
        panel_data = builder.gep(panel_array.data, [builder.mul(panel, panel_size)])
        zero = ir.Constant(vector, [ir.Constant(real, 0.0)] * lanes)
        broadcast = ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes)

        def constant(value):
            return ir.Constant(intp, value)

        def vector_at(base, offset):
            return builder.bitcast(builder.gep(base, [offset]), vector.as_pointer())

        def emit(m, g):
            # accumulators[i][q * VECTORS + j]: row i, vector j of panel q
            accumulators = [[cgutils.alloca_once_value(builder, zero)
                             for _ in range(g * VECTORS)] for _ in range(m)]
            with cgutils.for_range(builder, K) as loop:
                k = loop.index
                row = builder.mul(k, width_constant)
                w = [builder.load(vector_at(panel_data, builder.add(
                         builder.add(builder.mul(constant(q), panel_size), row),
                         constant(j * lanes))), align=itemsize)
                     for q in range(g) for j in range(VECTORS)]
                for i in range(m):
                    a_ik = builder.load(builder.gep(a_rows, [builder.add(
                        builder.mul(constant(i), lda), k)]))
                    a_vector = builder.shuffle_vector(
                        builder.insert_element(ir.Constant(vector, ir.Undefined), a_ik,
                                               ir.Constant(ir.IntType(32), 0)),
                        ir.Constant(vector, ir.Undefined), broadcast)
                    for slot, w_vector in zip(accumulators[i], w):
                        builder.store(builder.call(fma, [a_vector, w_vector, builder.load(slot)]),
                                      slot)
            for i in range(m):
                for column, slot in enumerate(accumulators[i]):     # q * VECTORS + j
                    offset = builder.add(builder.mul(constant(i), ldc), constant(column * lanes))
                    builder.store(builder.load(slot), vector_at(c_tile, offset), align=itemsize)

        end = builder.append_basic_block("tile.end")
        switch = builder.switch(builder.add(builder.mul(rows, constant(MR + 1)), group), end)
        for m in range(1, MR + 1):
            for g in range(1, panels_at_once(m) + 1):
                block = builder.append_basic_block(f"tile.rows{m}.panels{g}")
                switch.add_case(constant(m * (MR + 1) + g), block)
                builder.position_at_end(block)
                emit(m, g)
                builder.branch(end)
        builder.position_at_end(end)
        return context.get_dummy_value()

    return sig, codegen


@nb.njit(**INLINE)
def panel_product(a, panels, out, descending=False):
    """``out[:, :P*NR] = a @ W^T``, W's rows packed into ``panels`` (P, K, NR) as the
    columns of W^T (:func:`pack_gate_rows`, :func:`pack_columns`).

    ``a`` (B, K) and ``out`` (B, >= P*NR) need contiguous rows; the columns of
    ``out`` past W's rows get the zero padding's zeros.  Full tiles of MR rows
    go panel by panel (a panel stays in L1 across the row tiles); the last
    ``B % MR`` rows then take several panels a tile (``panels_at_once``).

    ``descending``: the panels from the last to the first.  A loop of products
    over panels that do not all fit in L2 (a worker's W_hh slice at batch 1 is
    its reads) alternates the order step by step: the panels read last are
    still in L2 and are read first (with LRU eviction a sweep in one order
    would find none of them).  Measured, Zen 3 (512 KiB L2), one thread,
    float32, K = 256, 512 columns (512 KiB of panels), batch 1: 7.55 -> 7.05 us
    a product.  The order does not change a result: every output element is
    one FMA chain over k in order.
    """
    B, P = a.shape[0], panels.shape[0]
    full = B - B % MR
    for q in range(P):
        p = P - 1 - q if descending else q
        for b in range(0, full, MR):
            _tile(a, b, MR, panels, p, 1, out)
    if full < B:
        group = panels_at_once(B - full)
        groups = -(-P // group)
        for i in range(groups):
            p = (groups - 1 - i if descending else i) * group
            _tile(a, full, B - full, panels, p, min(group, P - p), out)


@nb.njit(**INLINE)
def pack_gate_rows(panels, w, H, j0, U):
    """Pack rows ``g*H + j0 + u`` of ``w`` (u < U, every gate block g of H rows) as the
    columns ``g*U + u`` of W^T: ``panels[c // NR, k, c % NR] = w[row(c), k]``, zeros past
    the last column.

    A transpose: each source row is read once, in order, into one column of a
    panel (its writes, NR elements apart, stay in the panel's lines of L1).
    Measured, one thread, float32, K = 128-512: 0.60 ns an element, against
    0.96 for a k-blocked loop over the panel's columns.
    """
    P, K, NR = panels.shape
    columns = w.shape[0] // H * U
    for p in range(P):
        for q in range(NR):
            c = p * NR + q
            if c < columns:
                row = (c // U) * H + j0 + c % U
                for k in range(K):
                    panels[p, k, q] = w[row, k]
            else:
                for k in range(K):
                    panels[p, k, q] = 0


@nb.njit(**INLINE)
def pack_columns(panels, w, j0, U):
    """Pack columns ``j0 <= j < j0 + U`` of ``w`` as they are (W^T's rows j are W's columns):
    ``panels[p, r, q] = w[r, j0 + p*NR + q]``, zeros past the last; row copies."""
    P, K, NR = panels.shape
    for p in range(P):
        width = min(NR, U - p * NR)
        for r in range(K):
            panels[p, r, :width] = w[r, j0 + p * NR:j0 + p * NR + width]
            panels[p, r, width:] = 0


def panel_count(columns: int, itemsize: int) -> int:
    """P: panels for ``columns`` columns (the last one zero-padded)."""
    width = panel_width(itemsize)
    return -(-columns // width)
