"""Atomics and a spin barrier for Numba threads that meet every step.

Two workers (OS threads, each running a ``nogil`` Numba function over a
whole sequence, ``split.py``) meet once a step.  A barrier through
Numba's ``prange`` costs a fork and a join a step (measured on the 2-core
development VM: 1.5 us with the OpenMP layer, 20 us with the workqueue
layer); this one costs an atomic add and a few loads.

The barrier is ONE ``int64`` array shared by the workers, zero at the start::

    barrier[ARRIVED]   arrivals so far; step s is over for everyone once
                       it reaches workers * (s + 1) (it only grows, so no
                       sense reversal is needed)
    barrier[ABORT]     nonzero: give up waiting (set by the Python side when a
                       worker could not start or failed; a waiting worker
                       returns False instead of spinning forever)

ARRIVED on a cache line of its own.  Loads in the spin loop are ``seq_cst`` atomic
loads: a plain load would be hoisted out of the loop by LLVM.  A waiter
spins ``SPIN_LIMIT`` rounds with the CPU's pause hint, then yields its core
to the OS (``sched_yield`` called by address) every round, so a preempted
peer costs a context switch, not a core.
"""

from __future__ import annotations

import ctypes
import platform

import numba as nb
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from . import INLINE

ARRIVED, ABORT, BARRIER_SIZE = 0, 16, 24     # int64 slots
SPIN_LIMIT = 1000        # pause rounds before yielding: ~10 us on Zen 4 (a pause ~9 ns here)

_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


def _element_pointer(context, builder, array_type, array, index):
    array = context.make_array(array_type)(context, builder, array)
    return cgutils.get_item_pointer(context, builder, array_type, array, [index])


@intrinsic
def atomic_add(typingctx, array, index, value):
    """``array[index] += value`` atomically (seq_cst); returns the old value (int64 arrays)."""
    if not (isinstance(array, types.Array) and array.dtype == types.int64):
        return None
    sig = types.int64(array, types.intp, types.int64)

    def codegen(context, builder, signature, args):
        pointer = _element_pointer(context, builder, signature.args[0], args[0], args[1])
        return builder.atomic_rmw("add", pointer, args[2], "seq_cst")

    return sig, codegen


@intrinsic
def atomic_load(typingctx, array, index):
    """``array[index]`` read with a seq_cst atomic load (never hoisted out of a loop)."""
    if not (isinstance(array, types.Array) and array.dtype == types.int64):
        return None
    sig = types.int64(array, types.intp)

    def codegen(context, builder, signature, args):
        pointer = _element_pointer(context, builder, signature.args[0], args[0], args[1])
        return builder.load_atomic(pointer, "seq_cst", 8)

    return sig, codegen


@intrinsic
def cpu_relax(typingctx):
    """The spin-wait hint (x86 ``pause``); nothing elsewhere."""
    def codegen(context, builder, signature, args):
        if _X86:
            function = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), []), "llvm.x86.sse2.pause")
            builder.call(function, [])
        return context.get_dummy_value()

    return types.void(), codegen


@intrinsic
def call_int_function(typingctx, address):
    """Call ``int f(void)`` at ``address`` (``sched_yield``); its result is dropped."""
    def codegen(context, builder, signature, args):
        function_type = ir.FunctionType(ir.IntType(32), [])
        builder.call(builder.inttoptr(args[0], function_type.as_pointer()), [])
        return context.get_dummy_value()

    return types.void(types.int64), codegen


def sched_yield_address() -> int:
    """The address of libc's ``sched_yield`` (0 where there is none: then the waiter only spins)."""
    try:
        function = ctypes.CDLL(None).sched_yield
    except (AttributeError, OSError):
        return 0
    return ctypes.cast(function, ctypes.c_void_p).value or 0


@nb.njit(**INLINE)
def wait_for_step(barrier, workers, step, yield_address):
    """Arrive at the end of ``step`` (0, 1, ...) and wait for the other workers.

    Returns False if the barrier was aborted while waiting.
    """
    target = workers * (step + 1)
    atomic_add(barrier, ARRIVED, 1)
    spins = 0
    while atomic_load(barrier, ARRIVED) < target:
        if atomic_load(barrier, ABORT) != 0:
            return False
        if spins < SPIN_LIMIT:
            spins += 1
            cpu_relax()
            continue
        if yield_address != 0:
            call_int_function(yield_address)
        else:
            cpu_relax()
    return True
