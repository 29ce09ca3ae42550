"""Which path a layer-direction takes on the GPU, and how the persistent kernels launch.

Two paths run a layer-direction on CuPy arrays (``driver``):

- **persistent**: one cooperative launch of ``rnn_persistent_forward`` /
  ``rnn_persistent_backward`` (``kernels/cuda/persistent_kernels.cu``) for
  the whole sequence; each block keeps its slice of W_hh in shared memory;
  one grid barrier a step.  Host calls per direction: O(1).
- **step**: per time step a cuBLAS GEMM and one fused step kernel.  Host
  calls per direction: O(T); the GEMMs pay off at large batch.

``plan_direction`` picks one from the shapes and the device's limits
(``DeviceLimits``): persistent where the batch is small
(``PERSISTENT_MAX_BATCH``), there is no projection (``proj_size`` needs a
GEMM between steps) and a block's share of the work fits on chip with every
block co-resident; the step path otherwise.  The choice can be forced
(``use_path``, or ``$RNNKERN_CUDA_PATH`` for batch jobs and benchmarks), and
every plan taken is recorded for ``rnnkern.show_config()``
(``recent_plans``).

Persistent launch: ``blocks = ceil(H / units)`` blocks of ``threads``
threads, ``units = ceil(H / (multiprocessors * blocks_per_multiprocessor))``
hidden units per block (all their gate rows), so every block is resident at
once, as a grid barrier needs.  Shared memory per block, in elements of the
dtype (the kernel's layout, with B' = B rounded up to ``ROWS_PER_THREAD``
and U' = U rounded up to ``UNITS_PER_THREAD``, the register blocking of its
dot products)::

    forward   G*U*(H + 1)  +  B'*H  +  max(B'*G*U, ROWS_PER_THREAD*G*threads)
    backward  U'*(G*H + 1)  +  max(B*U', UNITS_PER_THREAD*threads)
"""

from __future__ import annotations

import contextlib
import dataclasses

import numpy as np

from ..paths import PathSetting, PlanLog

__all__ = ["PATHS", "PERSISTENT_THREADS", "ROWS_PER_THREAD", "UNITS_PER_THREAD",
           "PERSISTENT_MAX_BATCH", "DeviceLimits", "Plan",
           "EMULATED_DEVICE", "shared_bytes", "plan_direction", "use_path", "path_choice",
           "recent_plans"]

#: What ``use_path`` and ``$RNNKERN_CUDA_PATH`` accept.
PATHS = ("auto", "persistent", "step")
#: The persistent kernels' launch bound and register blocking (the constants
#: of the same names in persistent_kernels.cu).
PERSISTENT_THREADS = 256
ROWS_PER_THREAD = 4
UNITS_PER_THREAD = 4
#: The largest batch ``auto`` sends to the persistent kernels.  Their dot
#: products run on CUDA cores at a few FLOPs per loaded weight; from about
#: this batch on, a per-step cuBLAS GEMM does the same work faster than a
#: launch costs.  (To be tuned on a GPU.)
PERSISTENT_MAX_BATCH = 16
_ENVIRONMENT = "RNNKERN_CUDA_PATH"


@dataclasses.dataclass(frozen=True)
class DeviceLimits:
    """What the planner needs to know of a device.

    Attributes
    ----------
    name : str
    multiprocessors : int
        SMs: the persistent grid has at most ``multiprocessors *
        blocks_per_multiprocessor`` blocks, all resident at once.
    shared_bytes_per_block : int
        The most dynamic shared memory a block may have (the opt-in maximum).
    threads_per_block : int
        Threads per persistent block (at most ``PERSISTENT_THREADS``).
    blocks_per_multiprocessor : int
        Persistent blocks per SM the plan counts on.
    """

    name: str
    multiprocessors: int
    shared_bytes_per_block: int
    threads_per_block: int = PERSISTENT_THREADS
    blocks_per_multiprocessor: int = 1


#: The limits the host emulation plans with: a few small "SMs", so that small
#: test shapes spread over several blocks and a block count that does not
#: divide H is the rule.
EMULATED_DEVICE = DeviceLimits(name="host emulation", multiprocessors=3,
                               shared_bytes_per_block=48 * 1024, threads_per_block=64)


@dataclasses.dataclass(frozen=True)
class Plan:
    """The path of one layer-direction, and the persistent launch if it is that path.

    ``reason`` says why in words (shown by ``show_config`` and the bench).
    """

    path: str
    reason: str
    units: int = 0
    blocks: int = 0
    threads: int = 0
    forward_shared_bytes: int = 0
    backward_shared_bytes: int = 0

    def describe(self) -> str:
        if self.path == "persistent":
            return (f"persistent: {self.blocks} blocks x {self.threads} threads, "
                    f"{self.units} units a block, shared memory "
                    f"{self.forward_shared_bytes} B forward / {self.backward_shared_bytes} B "
                    f"backward ({self.reason})")
        return f"step ({self.reason})"


def shared_bytes(num_gates: int, itemsize: int, batch: int, hidden: int, units: int,
                 threads: int) -> tuple:
    """Dynamic shared memory per block of the persistent kernels: ``(forward, backward)``."""
    G, B, H, U = num_gates, batch, hidden, units
    padded_rows = -(-B // ROWS_PER_THREAD) * ROWS_PER_THREAD
    padded_units = -(-U // UNITS_PER_THREAD) * UNITS_PER_THREAD
    forward = (G * U * (H + 1) + padded_rows * H
               + max(padded_rows * G * U, ROWS_PER_THREAD * G * threads))
    backward = padded_units * (G * H + 1) + max(B * padded_units, UNITS_PER_THREAD * threads)
    return forward * itemsize, backward * itemsize


_SETTING = PathSetting(PATHS, _ENVIRONMENT)


@contextlib.contextmanager
def use_path(path: str):
    """Force the CUDA path inside a ``with`` block: ``"persistent"``, ``"step"`` or ``"auto"``.

    Forcing ``"persistent"`` where it cannot run (a projection, or more than
    fits on chip) raises ValueError at the layer call instead of falling back.
    """
    with _SETTING.forced(path):
        yield


def path_choice() -> str:
    """The path asked for now: ``use_path``'s, else ``$RNNKERN_CUDA_PATH``'s, else ``"auto"``."""
    return _SETTING.choice()


# (cell, dtype, batch, hidden, projected, device) -> Plan
_RECENT = PlanLog(lambda key: (f"{key[0]} {key[1]} B={key[2]} H={key[3]}"
                               f"{' proj' if key[4] else ''} on {key[5]}"))


def recent_plans() -> dict:
    """The plans taken in this process, newest last: ``{description of the direction: Plan}``."""
    return _RECENT.described()


def plan_direction(cell, dtype, batch: int, hidden: int, *, projected: bool,
                   limits: DeviceLimits, choice: str | None = None) -> Plan:
    """The path of one layer-direction of ``cell`` with a ``(batch, hidden)`` state.

    Parameters
    ----------
    cell : rnnkern.cells.Cell
    dtype : dtype of the arrays
    batch, hidden : int
    projected : bool
        Whether the direction has a projection (LSTM ``proj_size``).
    limits : DeviceLimits
    choice : {"auto", "persistent", "step"}, optional
        Default ``path_choice()``.

    Raises
    ------
    ValueError
        If ``"persistent"`` is forced where it cannot run.
    """
    choice = path_choice() if choice is None else _SETTING.checked(choice, "choice")
    plan = _plan(cell, np.dtype(dtype), batch, hidden, projected, limits, choice)
    _RECENT.record((cell.name, str(np.dtype(dtype)), batch, hidden, projected, limits.name),
                   plan)
    return plan


def _plan(cell, dtype, batch, hidden, projected, limits, choice):
    if choice == "step":
        return Plan("step", "forced")
    blocks_at_most = limits.multiprocessors * limits.blocks_per_multiprocessor
    units = -(-hidden // blocks_at_most)
    threads = min(limits.threads_per_block, PERSISTENT_THREADS)
    forward, backward = shared_bytes(cell.num_gates, dtype.itemsize, batch, hidden, units,
                                     threads)
    if projected:
        why_not = "proj_size: the projection runs as a GEMM between steps"
    elif choice == "auto" and batch > PERSISTENT_MAX_BATCH:
        why_not = f"batch {batch} > {PERSISTENT_MAX_BATCH}: per-step GEMMs pay off"
    elif max(forward, backward) > limits.shared_bytes_per_block:
        why_not = (f"a block's W_hh slice and state need {max(forward, backward)} B of shared "
                   f"memory, more than the {limits.shared_bytes_per_block} B of {limits.name}")
    else:
        return Plan("persistent", "forced" if choice == "persistent" else
                    f"batch {batch} <= {PERSISTENT_MAX_BATCH}, W_hh fits on chip",
                    units=units, blocks=-(-hidden // units), threads=threads,
                    forward_shared_bytes=forward, backward_shared_bytes=backward)
    if choice == "persistent":
        raise ValueError(f"CUDA path 'persistent' was forced, but {cell.name} with batch "
                         f"{batch}, hidden {hidden}, {dtype} cannot take it: {why_not}")
    return Plan("step", why_not)
