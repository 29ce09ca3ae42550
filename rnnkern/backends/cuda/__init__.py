"""CUDA backend (CuPy arrays): cuBLAS GEMMs and our kernels of ``kernels/cuda/``.

Per layer-direction (contract in ``rnnkern.backends``; details in ``driver``)::

    forward   gx = x @ W_ih^T + b_ih              one GEMM over all T*B rows
              persistent: rnn_persistent_forward  ONE cooperative launch, all steps
              step: per step gh = h @ W_hh^T (GEMM) + rnn_forward_step (one kernel)
    backward  persistent: rnn_persistent_backward ONE cooperative launch, all steps
              step: per step rnn_backward_step (one kernel) + dgh @ W_hh (GEMM)
              weight_gradients                     dW_ih, dW_hh, db, dx: GEMMs over all T*B rows

Modules::

    driver      the orchestration above, written against a launcher
    launchers   the launcher interface and the host-call counts
    planner     which path a direction takes, the persistent launch, forcing a path
    modules     the sources, their instantiations (from the cell registry),
                the compile options, get_kernel, the launch checks
    emulation   the same orchestration and sources on NumPy arrays, compiled
                for the host by g++, cooperative kernels included (tests
                without a GPU)

CuPy is imported only when a launcher is first needed, i.e. when CuPy arrays
arrive; importing this package does not import CuPy.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from ...dispatch import namespace_of
from .. import step_of
from .driver import backward_direction_with, forward_direction_with
from .launchers import Launcher
from .modules import CudaKernelError, get_kernel
from .planner import DeviceLimits

__all__ = ["forward_direction", "backward_direction", "step", "CupyLauncher", "cupy_launcher"]


@functools.cache
def _pointer_group_dtype(count):
    """A struct of ``count`` pointers, laid out as the kernels' ``StepArrays<T, count>``."""
    return np.dtype([("at", np.uintp, (count,))])


class CupyLauncher(Launcher):
    """Launches the RawModule kernels on CuPy arrays (current device and stream).

    A tuple of arrays becomes one by-value ``StepArrays`` parameter: a
    size-1 NumPy array holding their device addresses, whose bytes CuPy
    passes as the parameter's value.  No argument checks here: the driver
    checks each direction's first launch (``modules.check_launch``).
    """

    def __init__(self):
        import cupy

        super().__init__(cupy)

    def device_limits(self):
        return _device_limits(self.xp.cuda.Device().id)

    def capture(self, enqueue):
        """A CUDA graph of what ``enqueue()`` launches, captured on a side stream."""
        recorded = super().capture(enqueue)
        for name in recorded.kernel_names:     # compile and load before, not while capturing
            get_kernel(name)
        stream = self.xp.cuda.Stream(non_blocking=True)
        with stream:
            stream.begin_capture()
            try:
                for call in recorded.calls:
                    call()
            finally:
                cuda_graph = stream.end_capture()
        return dataclasses.replace(
            recorded, run=lambda: cuda_graph.launch(self.xp.cuda.get_current_stream()))

    def _launch(self, name, grid, block, args, shared_bytes, cooperative):
        kernel = get_kernel(name)
        values = tuple(_by_value(a) if isinstance(a, tuple) else a for a in args)
        if not cooperative:
            kernel(grid, block, values)
            return
        try:
            if shared_bytes > 48 * 1024:      # above the default, the kernel must opt in
                kernel.max_dynamic_shared_size_bytes = shared_bytes
            kernel(grid, block, values, shared_mem=shared_bytes)
        except Exception as err:              # e.g. more blocks than can be resident at once
            raise CudaKernelError(
                f"{name}: cooperative launch of {grid[0]} blocks x {block[0]} threads with "
                f"{shared_bytes} B of shared memory failed ({type(err).__name__}: {err}); "
                f"run with rnnkern.backends.cuda.planner.use_path('step') or "
                f"RNNKERN_CUDA_PATH=step, and report the device") from err


@functools.cache
def _device_limits(device_id):
    """The planner's view of CUDA device ``device_id`` (CuPy's device attributes)."""
    import cupy

    attributes = cupy.cuda.Device(device_id).attributes
    name = cupy.cuda.runtime.getDeviceProperties(device_id)["name"]
    return DeviceLimits(name=name.decode() if isinstance(name, bytes) else str(name),
                        multiprocessors=attributes["MultiProcessorCount"],
                        shared_bytes_per_block=attributes["MaxSharedMemoryPerBlockOptin"])


def _by_value(group):
    addresses = np.array([a.data.ptr for a in group], dtype=np.uintp)
    return addresses.view(_pointer_group_dtype(len(group)))


@functools.cache
def cupy_launcher():
    """The launcher of the CuPy kernels (one per process; CuPy imported here)."""
    return CupyLauncher()


def _names(prefix, values):
    return [f"{prefix}[{k}]" for k in range(len(values))]


def forward_direction(cell, x, params, state, lengths, reverse, *, keep=True):
    """Run one layer-direction on CuPy arrays (see ``rnnkern.backends``)."""
    namespace_of(x, *params.values(), *state, lengths,
                 names=["x", *params, *_names("state", state), "lengths"])
    with x.device:
        return forward_direction_with(cupy_launcher(), cell, x, params, state, lengths, reverse,
                                      keep=keep)


def backward_direction(cell, dy, dstate_n, tape):
    """Backpropagate one layer-direction on CuPy arrays (see ``rnnkern.backends``)."""
    namespace_of(dy, *dstate_n, tape["x_rows"],
                 names=["dy", *_names("dstate", dstate_n), "x of the forward"])
    with dy.device:
        return backward_direction_with(cupy_launcher(), cell, dy, dstate_n, tape)


step = step_of(forward_direction)          # nothing prepared across calls (yet)
