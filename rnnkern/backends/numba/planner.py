"""Which driver a layer-direction's forward takes on the CPU, and with how many workers.

Two drivers run a layer-direction forward on NumPy arrays
(``rnnkern.kernels.numba``):

- **general** (``drivers.forward_sequence``): per step one CBLAS product
  ``h @ W_hh^T`` (GEMV at batch 1) and the cell's fused rows.  Best where a
  step's product is a real GEMM (larger batches).
- **small_batch** (``small_batch.forward_worker``): W_hh split by hidden
  units over ``workers`` OS threads (1 or 2), each worker's slice packed
  once per call and resident in its core's L2; product and rows fused per
  step; one spin barrier a step.  Best at small batch, where a step is
  W_hh streamed through the cores, and two cores stream it faster than the
  general driver's per-step GEMV on one.

``plan_direction`` picks one from the batch, the shapes, the dtype and the
cores this process may use. ``auto`` takes small_batch, with two workers,
where all of these hold: inference (a forward without a tape: see
``TRAINING_REASON`` for training); at most ``SMALL_BATCH_MAX_BATCH`` rows;
no projection (``proj_size`` needs all of ``m_t`` between steps); W_hh large
enough for the split to pay (``SPLIT_MIN_WEIGHT_BYTES``) and half of it
within a worker's share of its core's L2 (``WORKER_L2_SHARE`` of
``l2_bytes()``, read from sysfs); two usable cores; and no recent two-worker
run found the second core busy (``report_waits``: the workers step in
lockstep, so a core taken by another process or by a BLAS pool's spinning
threads costs a time slice a step). Where the second core is missing or was
found busy in the last ``BUSY_CORE_SECONDS``, one worker runs the
small-batch driver up to ``ONE_WORKER_MAX_BATCH`` rows (W_hh then has to fit
one worker's L2 share), the general driver above. The fallback for a busy
core is one worker rather than the general driver on purpose: the general
driver's per-step BLAS calls wake the BLAS pool, whose threads then spin on
the second core (OpenBLAS: for ~2^28 cycles after each call), and keep it
busy for the next two-worker try; one worker calls no BLAS between steps.
The choice can be forced (``use_path``, or ``$RNNKERN_CPU_PATH`` for batch
jobs and benchmarks), and every plan taken is recorded for
``rnnkern.show_config()`` (``recent_paths``). Backward always runs the
general driver (its tape is the same whichever forward made it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import time
from pathlib import Path

import numpy as np

from ..paths import PathSetting, PlanLog

__all__ = ["PATHS", "SMALL_BATCH_MAX_BATCH", "SPLIT_MIN_WEIGHT_BYTES", "WORKER_L2_SHARE",
           "ONE_WORKER_MAX_BATCH", "TRAINING_REASON", "BUSY_CORE_SECONDS", "Plan", "use_path",
           "path_choice", "usable_cores", "l2_bytes", "policy", "plan_direction", "recent_paths",
           "report_waits"]

#: What ``use_path`` and ``$RNNKERN_CPU_PATH`` accept.
PATHS = ("auto", "small_batch", "general")
#: The largest batch ``auto`` sends to the small-batch driver.  (Measured on
#: the 2-core Zen 4 VM; see the benchmarks.)
SMALL_BATCH_MAX_BATCH = 8
#: ``auto`` splits only a W_hh larger than this.  At B = 1 each step's
#: product streams W_hh through the cores, so two cores read it about twice
#: as fast wherever it lives; but a step also pays a barrier and a cross-core
#: exchange of h (together ~1-2 us), and the call a helper thread's start.
#: Measured on the 2-core VM (float32, B = 1, H = 256): the split ran the
#: LSTM's 1 MiB W_hh 1.45x faster than one worker, the RNN's 256 KiB no faster.
SPLIT_MIN_WEIGHT_BYTES = 512 * 1024
#: The share of a core's L2 a worker's slice of W_hh may take (beside the
#: state, the scratch and the step's gx) for ``auto`` to pick small_batch.
WORKER_L2_SHARE = 0.75
#: Why ``auto`` runs a forward that keeps a tape on the general driver.
#: A tape is for a backward, and the backward's multi-threaded BLAS calls
#: leave the pool's threads spinning on the second core into the next
#: forward, where the two workers step in lockstep.  ``python -m rnnkern
#: bench`` (T = 100, I = 128, H = 256, float32, 2-core VM) gave
#: forward+backward with the small-batch forward 5.34 vs 4.89 ms (LSTM,
#: B = 1) and 19.5 vs 15.3 ms (GRU, B = 8) against the general driver; a
#: later run with training back on the general driver gave 5.43 and 17.5 ms,
#: so that gap is within the spread between runs: training shows no gain
#: from the small-batch forward either way, and stays on the general driver.
TRAINING_REASON = ("a tape: the backward's BLAS threads would spin on the second core in the "
                   "next forward (forward+backward measured no faster)")
#: One worker (one usable core, or the second one found busy) runs the
#: small-batch driver only up to this batch: measured at H = 256, float32,
#: it beat the general driver at B = 1 (LSTM 18.8 vs 22.1 us a step, GRU
#: 13.7 vs 15.3, RNN 5.3 vs 6.1) and lost at B = 2 and above.
ONE_WORKER_MAX_BATCH = 1
#: After a two-worker run whose barrier waits outlasted the spin at more than
#: one step in ``SLOW_WAIT_SHARE``, ``auto`` plans one worker for this long.
BUSY_CORE_SECONDS = 1.0
SLOW_WAIT_SHARE = 16
_ENVIRONMENT = "RNNKERN_CPU_PATH"
_busy_until = 0.0        # time.monotonic() before which the second core counts as busy


@dataclasses.dataclass(frozen=True)
class Plan:
    """The driver of one layer-direction's forward; ``reason`` says why in words."""

    path: str
    reason: str
    workers: int = 0

    def describe(self) -> str:
        if self.path == "small_batch":
            return f"small_batch, {self.workers} worker(s) ({self.reason})"
        return f"general ({self.reason})"


_SETTING = PathSetting(PATHS, _ENVIRONMENT)


@contextlib.contextmanager
def use_path(path: str, *, workers: int | None = None):
    """Force the CPU driver inside a ``with`` block: ``"small_batch"``, ``"general"`` or ``"auto"``.

    ``workers`` (1 or 2) forces the small-batch driver's worker count too
    (two workers run even on one core: correct, but they then share it).
    Forcing ``"small_batch"`` where it cannot run (a projection) raises
    ValueError at the layer call instead of falling back.
    """
    if workers is not None and workers not in (1, 2):
        raise ValueError(f"workers: expected 1, 2 or None, got {workers!r}")
    with _SETTING.forced(path, workers=workers):
        yield


def path_choice() -> str:
    """The path asked for now: ``use_path``'s, else ``$RNNKERN_CPU_PATH``'s, else ``"auto"``."""
    return _SETTING.choice()


def usable_cores() -> int:
    """Cores this process may run threads on: its CPU affinity, capped by ``NUMBA_NUM_THREADS``."""
    import numba

    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(cores, numba.config.NUMBA_NUM_THREADS))


def report_waits(steps: int, slow_waits: int) -> None:
    """What a two-worker run saw: ``slow_waits`` of its ``steps`` barriers outlasted the spin."""
    global _busy_until
    if slow_waits > steps // SLOW_WAIT_SHARE:
        _busy_until = time.monotonic() + BUSY_CORE_SECONDS


def _second_core_busy() -> bool:
    return time.monotonic() < _busy_until


@functools.cache
def l2_bytes() -> int:
    """One core's L2 cache in bytes: from sysfs, else ``sysconf``, else 1 MiB."""
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            if (index / "level").read_text().strip() == "2":
                size = (index / "size").read_text().strip().upper()
                scale = {"K": 1024, "M": 1024**2}.get(size[-1:], 1)
                return int(size.rstrip("KM")) * scale
        except (OSError, ValueError):
            continue
    try:
        size = os.sysconf("SC_LEVEL2_CACHE_SIZE")
    except (AttributeError, ValueError, OSError):
        size = 0
    return size if size > 0 else 1024**2


def _worker_weight_bytes() -> int:
    return int(WORKER_L2_SHARE * l2_bytes())


def policy() -> str:
    """What ``auto`` does on this machine, in words (for ``rnnkern.show_config``)."""
    return (f"small-batch driver for inference up to batch {SMALL_BATCH_MAX_BATCH} where W_hh "
            f"is over {SPLIT_MIN_WEIGHT_BYTES // 1024} KiB and half of it fits "
            f"{_worker_weight_bytes() // 1024} KiB of a core's {l2_bytes() // 1024} KiB L2, on "
            f"{usable_cores()} usable core(s), else the general driver; force with "
            f"rnnkern.backends.numba.planner.use_path or ${_ENVIRONMENT}")


# (cell, dtype, batch, hidden, projected, training) -> Plan
_RECENT = PlanLog(lambda key: (f"{key[0]} {key[1]} B={key[2]} H={key[3]}"
                               f"{' proj' if key[4] else ''} "
                               f"{'training' if key[5] else 'inference'}"))


def recent_paths() -> dict:
    """The plans taken in this process, newest last: ``{description of the direction: Plan}``."""
    return _RECENT.described()


def plan_direction(cell, dtype, batch: int, hidden: int, *, projected: bool,
                   training: bool = False, choice: str | None = None,
                   cores: int | None = None) -> Plan:
    """The driver of one layer-direction's forward of ``cell`` with a ``(batch, hidden)`` state.

    Parameters
    ----------
    cell : rnnkern.cells.Cell
    dtype : dtype of the arrays
    batch, hidden : int
    projected : bool
        Whether the direction has a projection (LSTM ``proj_size``).
    training : bool
        Whether the forward keeps a tape (``keep``): ``auto`` then takes the
        general driver (see ``TRAINING_REASON``).
    choice : {"auto", "small_batch", "general"}, optional
        Default ``path_choice()``.
    cores : int, optional
        Default ``usable_cores()``.

    Raises
    ------
    ValueError
        If ``"small_batch"`` is forced where it cannot run.
    """
    choice = path_choice() if choice is None else _SETTING.checked(choice, "choice")
    workers = _SETTING.forced_options().get("workers")
    cores = usable_cores() if cores is None else cores
    plan = _plan(cell, np.dtype(dtype), batch, hidden, projected, training, choice, workers,
                 cores)
    _RECENT.record((cell.name, str(np.dtype(dtype)), batch, hidden, projected, training), plan)
    return plan


def _plan(cell, dtype, batch, hidden, projected, training, choice, workers, cores):
    if choice == "general":
        return Plan("general", "forced")
    weight_bytes = cell.num_gates * hidden * hidden * dtype.itemsize
    busy = choice == "auto" and workers is None and _second_core_busy()
    if workers is None:
        workers = 2 if cores >= 2 and not busy else 1
    workers = min(workers, hidden)
    slice_bytes = -(-weight_bytes // workers)
    if projected:
        why_not = "proj_size: the projection needs all of m_t between steps"
    elif choice == "small_batch":
        return Plan("small_batch", "forced", workers)
    elif training:
        why_not = TRAINING_REASON
    elif batch > SMALL_BATCH_MAX_BATCH:
        why_not = f"batch {batch} > {SMALL_BATCH_MAX_BATCH}: per-step GEMMs pay off"
    elif weight_bytes <= SPLIT_MIN_WEIGHT_BYTES:
        why_not = f"W_hh ({weight_bytes} B) too small for a split to pay"
    elif slice_bytes > _worker_weight_bytes():
        why_not = (f"a worker's share of W_hh ({slice_bytes} B) is more than the "
                   f"{_worker_weight_bytes()} B it may keep in L2")
    elif workers < 2 and batch > ONE_WORKER_MAX_BATCH:
        why_not = (f"{cores} usable core(s)" if cores < 2 else
                   "a recent two-worker run found the second core busy") + \
            f", and one worker beats the general driver only up to batch {ONE_WORKER_MAX_BATCH}"
    elif workers < 2:
        return Plan("small_batch", f"batch {batch}, W_hh ({weight_bytes} B) in one L2; one "
                                   "worker: " + (f"{cores} usable core(s)" if cores < 2 else
                                                 "a recent two-worker run found the second "
                                                 "core busy"), workers)
    else:
        return Plan("small_batch", f"batch {batch} <= {SMALL_BATCH_MAX_BATCH}, W_hh "
                                   f"({weight_bytes} B) split over {workers} cores' L2", workers)
    if choice == "small_batch":
        raise ValueError(f"CPU path 'small_batch' was forced, but {cell.name} with batch "
                         f"{batch}, hidden {hidden}, {dtype} cannot take it: {why_not}")
    return Plan("general", why_not)
