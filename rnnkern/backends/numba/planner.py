"""Which driver a layer-direction takes on the CPU, and with how many workers.

Two drivers run a layer-direction on NumPy arrays (``rnnkern.kernels.numba``):

- **general** (``drivers.forward_sequence``/``backward_sequence``): per step
  one CBLAS product (GEMV at batch 1) on the BLAS's own threads and the
  cell's fused rows on the calling thread.
- **split** (``split.forward_worker``/``backward_worker``): W split by hidden
  units over ``workers`` OS threads (1 or 2), each packing its slice once per
  call into its core's cache and running its share of everything: the input
  projection, each step's product and rows (one spin barrier a step), the
  weight gradients.  Both cores work on every stage, the rows included, and
  no BLAS pool is woken between steps.

``plan_direction`` picks one from the batch, the shapes, the sequence length,
the cores this process may use and whether it trains; a forward with a tape
and the backward plan alike (both drivers read and write one tape layout).
``auto`` takes split, with two workers, where all of these hold: no projection
(``proj_size`` needs all of ``m_t`` between steps); at least
``SPLIT_MIN_STEPS`` steps (the packing and the helper's wake-up are paid once
a call, the gain once a step); in training (a forward with a tape, the
backward), a ``W_hh`` of at least ``SPLIT_MIN_TRAINING_ROWS`` rows (the
backward's workers exchange a step's ``dG_h``, G times the forward's ``h``); a
step's product of at least ``SPLIT_MIN_STEP_FLOPS`` or a ``W_hh`` of at least
``SPLIT_MIN_WEIGHT_BYTES`` (below both, the barrier and the cross-core
exchange of h, ~1-2 us a step, cost more than the split saves; such layers run
the general driver with the BLAS on one thread, so that no BLAS pool wakes to
spin on the core the next split layer needs); two usable cores; and no other
thread of this process running (``other_threads_running``, read from procfs at
each plan: a BLAS pool still spinning after a NumPy call, the user's own
threads). The workers step in lockstep, so a thread sharing the second core
stalls every step (measured, LSTM B=32 T=64 H=256 float32 training with a
Dense matmul between steps: split 48 ms a step, general 30.8, split alone
22.3). Other processes on the second core are not seen; a detector of slow
barrier waits, tried, mistook a first call's page faults for a busy core. On
one usable core, one split worker up to ``ONE_WORKER_MAX_BATCH`` rows, the
general driver above.

The general driver's per-step product ``h W_hh^T`` runs on a C-contiguous
copy of ``W_hh^T`` (``Plan.transposed_weights``) where a sequence is long
enough to pay for the copy: on some machines OpenBLAS multiplies by it (NN)
much faster than by the transposed view (NT) at batch 2 and up; at batch 1
the product is a GEMV either way, and the copy is pure cost.

The choice can be forced (``use_path``, or ``$RNNKERN_CPU_PATH`` for batch
jobs and benchmarks), and every plan taken is recorded for
``rnnkern.show_config()`` (``recent_paths``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import threading

import numpy as np

from ...validation import dtype_name
from ..paths import PathSetting, PlanLog

__all__ = ["PATHS", "SPLIT_MIN_STEP_FLOPS", "SPLIT_MIN_WEIGHT_BYTES", "SPLIT_MIN_STEPS",
           "SPLIT_MIN_TRAINING_ROWS", "TRANSPOSE_MIN_STEPS", "MAX_WORKERS",
           "ONE_WORKER_MAX_BATCH", "Plan", "use_path",
           "path_choice", "setting", "usable_cores", "other_threads_running", "policy",
           "plan_direction", "recent_paths"]

#: What ``use_path`` and ``$RNNKERN_CPU_PATH`` accept.
PATHS = ("auto", "split", "general")
#: ``auto`` splits a layer-direction whose step product ``2 B G H^2`` has at
#: least this many FLOPs.  Measured on the 2-core VM (float32, T = 100,
#: I = 128, inference / forward+backward ms, general vs split): at 131k FLOPs
#: a step (RNN H=256 B=1, LSTM H=128 B=1, RNN H=128 B=4) the split is level
#: or slower (0.55/1.33 vs 0.55/1.52; 0.64/1.59 vs 0.63/1.82; 0.33/0.99 vs
#: 0.52/1.59), at 393k (GRU H=256 B=1) faster (1.42 vs 1.13 inference).
SPLIT_MIN_STEP_FLOPS = 200_000
#: ... or whose ``W_hh`` has at least this many bytes: at small batch a step reads
#: all of W_hh for few FLOPs, and two workers each read half.  Measured on the
#: 2-core Zen 3 VM (AVX2, 512 KiB L2 a core; float32, T = 100, each call after a
#: gc.collect() as the bench times it; inference / forward+backward ms, general vs
#: split): RNN H=256 B=1 (W_hh 256 KiB, 131k FLOPs) 1.62/3.17 vs 1.27/2.96, LSTM
#: H=128 B=1 (256 KiB) 1.70/3.60 vs 1.50/3.27; GRU H=128 B=1 (192 KiB) 1.65/3.15 vs
#: 1.50/3.22, RNN H=50 B=32 (10 KiB, 160k FLOPs, the sine demo's layer) 0.64/1.25
#: vs 0.85/1.78.  Short sequences pay the split's per-call cost (packing, the
#: helper's start) over fewer steps: RNN H=256 B=1 at T=40 was 1.04/2.11 vs 1.09/2.36.
#: (The AVX-512 VM's "level or slower" above at 131k predates tiles of one row
#: covering several panels, which made the split's batch-1 product ~1.4x faster.)
SPLIT_MIN_WEIGHT_BYTES = 256 * 1024
#: ... and only for sequences of at least this many steps: the split pays its
#: packing and the helper's wake-up once a call and gains on every step.  Measured
#: on the Zen 3 VM (float32, I = 128, H = 256, each call after a gc.collect() as
#: the bench times it, paired; general / split time, above 1: split faster),
#: inference at T = 16 / 32 / 48: LSTM B=1 1.03 / 1.26 / 1.34, GRU B=1 0.96 / 1.17
#: / 1.30, RNN B=1 0.74 / 0.81 / 1.02, LSTM B=32 0.84 / 0.95 / 1.18, GRU B=32 0.81
#: / 1.19 / 0.94; forward+backward: LSTM B=1 0.79 / 0.85 / 1.01, GRU B=1 0.80 /
#: 0.91 / 1.09, LSTM B=32 1.03 / 1.08 / 1.07, GRU B=32 0.98 / 1.10 / 1.20.  At T = 1
#: the general driver took a third to half the split's time.
SPLIT_MIN_STEPS = 32
#: Training (a forward that keeps a tape, and the backward) splits only a ``W_hh``
#: of at least this many rows ``G*H`` (a worker's share of the gate columns is
#: half).  The backward's workers exchange ``dG_h`` every step, ``B G H / 2``
#: elements each way where the forward exchanges ``B H / 2`` of ``h``, and the
#: general driver's per-step BLAS products hold up well from batch 16 on.  Measured
#: on the Zen 3 VM (float32, T = 100, I = min(H, 128), forward with a tape plus
#: backward, each call after a gc.collect(), four interleaved rounds; general /
#: split time at B = 1 / 4 / 16 / 64, above 1: split faster): G*H = 64-256 (RNN H
#: = 64 / 128 / 256, GRU H = 64, LSTM H = 64) 0.65 / 0.74 / 0.76 / 0.78, 0.74 /
#: 0.89 / 1.00 / 0.82, 0.92 / 1.15 / 0.95 / 1.00, 0.83 / 0.94 / 0.98 / 0.88, 0.90 /
#: 1.01 / 0.94 / 1.00; G*H = 384-1024 (GRU H = 128 / 256, LSTM H = 128 / 256)
#: 0.99 / 1.30 / 0.93 / 1.04, 1.23 / 1.69 / 0.99 / 1.22, 1.17 / 1.53 / 0.99 /
#: 1.05, 1.29 / 2.04 / 1.04 / 1.03.  Inference splits below it (no tape, no
#: backward): the same shapes' inference gained from the split at B >= 16 for
#: the LSTM and GRU at H = 64 (1.13-1.36).
SPLIT_MIN_TRAINING_ROWS = 384
#: The general driver multiplies by a C-contiguous copy of ``W_hh^T`` (NN) only
#: for sequences of at least this many steps, at batch 2 and up.  On the AVX-512
#: VM's OpenBLAS the NN products ran 1.3-4x faster than NT at B = 2-64 (W of
#: 1024x256 and 2048x512); on the Zen 3 VM (OpenBLAS 0.3.31) NT/NN was 0.8-1.2
#: and the strided copy of a 1024x256 float32 W_hh took ~0.5 ms, as much as LSTM
#: B=1 inference at T = 1.  Measured there (general driver, inference, after a
#: gc.collect(), view / copy ms): LSTM B=32 T=1 1.38 / 1.86, T=16 6.9 / 7.5, T=32
#: 14.8 / 11.8; GRU B=32 T=16 5.4 / 6.0, T=32 8.0 / 10.2.
TRANSPOSE_MIN_STEPS = 32
#: The most workers a split takes: one helper thread beside the caller (the
#: only count measured: the development machine has two cores).
MAX_WORKERS = 2
#: On one usable core, the split driver (one worker) runs only up to this
#: batch: measured at H = 256, float32, one worker beat the general driver at
#: B = 1 (LSTM 18.8 vs 22.1 us a step, GRU 13.7 vs 15.3, RNN 5.3 vs 6.1) and
#: lost at B = 2 and above.
ONE_WORKER_MAX_BATCH = 1
_ENVIRONMENT = "RNNKERN_CPU_PATH"


@dataclasses.dataclass(frozen=True)
class Plan:
    """The driver of one layer-direction; ``reason`` says why in words.

    ``workers`` matters on the split path only; on the general path
    ``one_blas_thread`` asks for the BLAS on one thread during the call, and
    ``transposed_weights`` for the step products on a C-contiguous copy of
    ``W_hh^T`` (and ``W_hr^T``) rather than on the transposed views.
    """

    path: str
    reason: str
    workers: int = 0
    one_blas_thread: bool = False
    transposed_weights: bool = False

    def describe(self) -> str:
        if self.path == "split":
            return f"split, {self.workers} worker(s) ({self.reason})"
        weights = "a copy of W_hh^T" if self.transposed_weights else "W_hh^T as a view"
        return f"general, on {weights} ({self.reason})"


_SETTING = PathSetting(PATHS, _ENVIRONMENT)


@contextlib.contextmanager
def use_path(path: str, *, workers: int | None = None):
    """Force the CPU driver inside a ``with`` block: ``"split"``, ``"general"`` or ``"auto"``.

    ``workers`` (1 to ``MAX_WORKERS``) forces the split driver's worker count too
    (two workers run even on one core: correct, but they then share it).
    Forcing ``"split"`` where it cannot run (a projection) raises
    ValueError at the layer call instead of falling back.
    """
    if workers is not None and workers not in range(1, MAX_WORKERS + 1):
        raise ValueError(f"workers: expected 1 to {MAX_WORKERS} or None, got {workers!r}")
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


#: Native thread ids that ``other_threads_running`` does not count (the split
#: path's own helper thread, which may still be returning from the last call).
QUIET_THREADS = set()


def other_threads_running() -> int:
    """How many other threads of this process are running now (state R in
    ``/proc/self/task/*/stat``; 0 where there is no procfs), less ``QUIET_THREADS``.

    A BLAS pool keeps its threads spinning for a while after each
    multi-threaded call (OpenBLAS: ~0.1-0.3 s measured here after a NumPy
    matmul); sharing a core with one, two lockstep split workers ran a
    training step at 48 ms against 30.8 on the general driver and 22.3 alone
    (LSTM B=32 T=64 H=256 float32, a Dense matmul between steps).  The stat
    files stay open between calls (``_THREAD_STATS``): ~5 us a thread, where
    opening them each time cost ~20 (62 us with four threads on the VM).
    """
    me = threading.get_native_id()
    return sum(state == b"R" for tid, state in _THREAD_STATS.states().items()
               if tid not in QUIET_THREADS and tid != me)


class _ThreadStats:
    """The ``/proc/self/task/<tid>/stat`` files of this process's threads, kept open.

    procfs regenerates a stat file at each read from offset 0, so one
    ``pread`` a thread gives its state now.  The set of files is listed again
    when the thread count in ``/proc/self/stat`` changes, when a thread's
    file fails (it ended), and after a fork (the files would be the parent's).
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._pid, self._process, self._count, self._files = None, None, None, {}

    def states(self) -> dict:
        """``{native thread id: state letter}`` (b"R" running, b"S" sleeping, ...); empty
        where there is no procfs."""
        with self._lock:
            for _ in range(3):                  # threads may come and go meanwhile
                try:
                    if self._pid != os.getpid() or self._count != self._thread_count():
                        self._list_again()
                    return {tid: _state_letter(os.pread(file, 512, 0))
                            for tid, file in self._files.items()}
                except (OSError, ValueError):
                    self._count = None          # list again (a thread ended)
            return {}

    def _thread_count(self):
        fields = os.pread(self._process, 1024, 0)
        return int(fields[fields.rindex(b")") + 2:].split()[17])     # num_threads

    def _list_again(self):
        for file in self._files.values():        # after a fork: this process's copies
            os.close(file)
        if self._process is not None:
            os.close(self._process)
        self._process, self._files = None, {}
        self._process = os.open("/proc/self/stat", os.O_RDONLY)
        self._pid, self._count = os.getpid(), self._thread_count()
        for task in os.listdir("/proc/self/task"):
            try:
                self._files[int(task)] = os.open(f"/proc/self/task/{task}/stat", os.O_RDONLY)
            except OSError:                     # the thread ended meanwhile
                continue


def _state_letter(stat):
    """The state field of a ``/proc/<pid>/task/<tid>/stat`` line (after ``(comm)``)."""
    end = stat.rindex(b")")
    return stat[end + 2:end + 3]


_THREAD_STATS = _ThreadStats()


def policy() -> str:
    """What ``auto`` does on this machine, in words (for ``rnnkern.show_config``)."""
    return (f"split driver ({MAX_WORKERS} workers, W split by hidden units) where the sequence "
            f"has at least {SPLIT_MIN_STEPS} steps and a step's "
            f"product is at least {SPLIT_MIN_STEP_FLOPS} FLOPs or W_hh at least "
            f"{SPLIT_MIN_WEIGHT_BYTES // 1024} KiB (in training also W_hh of at least "
            f"{SPLIT_MIN_TRAINING_ROWS} rows), on {usable_cores()} usable "
            "core(s), and no other thread of this process is running (a spinning BLAS pool), "
            "else the general driver; force with rnnkern.backends.numba.planner.use_path or "
            f"${_ENVIRONMENT}")


# (cell, dtype, batch, hidden, projected, training) -> Plan
_RECENT = PlanLog(lambda key: (f"{key[0]} {key[1]} B={key[2]} H={key[3]}"
                               f"{' proj' if key[4] else ''} "
                               f"{'training' if key[5] else 'inference'}"))


def recent_paths() -> dict:
    """The plans taken in this process, newest last: ``{description of the direction: Plan}``."""
    return _RECENT.described()


def plan_direction(cell, dtype, batch: int, hidden: int, *, projected: bool,
                   training: bool = False, steps: int | None = None, choice: str | None = None,
                   cores: int | None = None, others_running: int | None = None) -> Plan:
    """The driver of one layer-direction of ``cell`` with a ``(batch, hidden)`` state.

    Parameters
    ----------
    cell : rnnkern.cells.Cell
    dtype : dtype of the arrays
    batch, hidden : int
    projected : bool
        Whether the direction has a projection (LSTM ``proj_size``).
    training : bool
        A forward that keeps a tape, or a backward (recorded apart from
        inference in ``recent_paths``): the split takes a ``W_hh`` of at least
        ``SPLIT_MIN_TRAINING_ROWS`` rows.
    steps : int, optional
        The sequence length T; None plans for a long sequence.
    choice : {"auto", "split", "general"}, optional
        Default ``path_choice()``.
    cores : int, optional
        Default ``usable_cores()``.
    others_running : int, optional
        Default ``other_threads_running()``, read only where ``auto`` would
        otherwise take two split workers.

    Raises
    ------
    ValueError
        If ``"split"`` is forced where it cannot run.
    """
    choice = path_choice() if choice is None else _SETTING.checked(choice, "choice")
    workers = _SETTING.forced_options().get("workers")
    plan = _plan(cell, np.dtype(dtype), batch, hidden, projected, steps, choice, workers, cores,
                 others_running, training)
    _RECENT.record((cell.name, dtype_name(np.dtype(dtype)), batch, hidden, projected, training),
                   plan)
    return plan


def _step_size(num_gates, dtype, batch, hidden):
    """(FLOPs of a step's product ``2 B G H^2``, bytes of ``W_hh``)."""
    return 2 * batch * num_gates * hidden * hidden, num_gates * hidden * hidden * dtype.itemsize


def _described(step_flops, weight_bytes):
    return f"a step's product of {step_flops} FLOPs, W_hh of {weight_bytes // 1024} KiB"


def _copies_w_hh_t(batch, steps, transpose_min_steps):
    """Whether the general driver multiplies by a copy of W_hh^T (``Plan.transposed_weights``):
    batch 2 and up (at batch 1 a GEMV either way), a long sequence (None: long)."""
    return batch > 1 and (steps is None or steps >= transpose_min_steps)


def _thresholds():
    """The module's thresholds, read at each plan (tests and users may change them)."""
    return (SPLIT_MIN_STEP_FLOPS, SPLIT_MIN_WEIGHT_BYTES, SPLIT_MIN_STEPS,
            SPLIT_MIN_TRAINING_ROWS, TRANSPOSE_MIN_STEPS)


def setting() -> tuple:
    """What a plan follows from besides the shapes and the machine's state: the path asked
    for, the workers forced with it and the thresholds (hashable; a key for plans kept)."""
    return path_choice(), _SETTING.forced_options().get("workers"), _thresholds()


@functools.lru_cache(maxsize=1024)
def _plan_from_shapes(num_gates, dtype, batch, hidden, projected, steps, choice, thresholds,
                      training):
    """The plans that follow from the shapes alone, or None (memoized: every layer call plans,
    and a short sequence's whole call may take ~100 us)."""
    min_flops, min_weight_bytes, min_steps, min_training_rows, transpose_min_steps = thresholds
    transposed = _copies_w_hh_t(batch, steps, transpose_min_steps)
    if choice == "general":
        return Plan("general", "forced", transposed_weights=transposed)
    step_flops, weight_bytes = _step_size(num_gates, dtype, batch, hidden)
    if (choice == "auto" and not projected and step_flops < min_flops
            and weight_bytes < min_weight_bytes):
        # Products this small gain nothing from BLAS threads, and a woken BLAS pool
        # would spin on the core the next split layer's second worker needs.
        return Plan("general", f"{_described(step_flops, weight_bytes)}: under "
                               f"{min_flops} FLOPs and {min_weight_bytes // 1024} KiB, too "
                               "small for a split to pay; one BLAS thread", one_blas_thread=True,
                    transposed_weights=transposed)
    if (choice == "auto" and not projected and training
            and num_gates * hidden < min_training_rows):
        return Plan("general", f"training, W_hh of {num_gates * hidden} rows: under "
                               f"{min_training_rows}, the split's per-step exchange of dG_h "
                               "costs more than it saves", transposed_weights=transposed)
    if choice == "auto" and not projected and steps is not None and steps < min_steps:
        # The general driver's BLAS threads may wake here; a split layer that follows
        # sees them running and takes the general driver too (other_threads_running).
        return Plan("general", f"{steps} step(s): under {min_steps}, too few to pay for "
                               "packing the weights", transposed_weights=transposed)
    return None


def _plan(cell, dtype, batch, hidden, projected, steps, choice, workers, cores, others_running,
          training):
    thresholds = _thresholds()
    plan = _plan_from_shapes(cell.num_gates, dtype, batch, hidden, projected, steps, choice,
                             thresholds, training)
    if plan is not None:
        return plan
    transposed = _copies_w_hh_t(batch, steps, thresholds[-1])     # TRANSPOSE_MIN_STEPS, as read
    cores = usable_cores() if cores is None else cores
    if workers is None:
        workers = min(MAX_WORKERS, cores)
    workers = min(workers, hidden)
    size = _described(*_step_size(cell.num_gates, dtype, batch, hidden))
    if projected:
        why_not = "proj_size: the projection needs all of m_t between steps"
    elif choice == "split":
        return Plan("split", "forced", workers)
    elif cores < 2 and batch > ONE_WORKER_MAX_BATCH:
        why_not = (f"{cores} usable core(s), and one worker beats the general driver only up "
                   f"to batch {ONE_WORKER_MAX_BATCH}")
    elif workers < 2:
        return Plan("split", f"batch {batch}; one worker: " + (
            f"{cores} usable core(s)" if cores < 2 else f"{hidden} hidden unit(s)"), workers)
    elif choice == "auto" and workers > 1 and (
            others_running if others_running is not None else other_threads_running()):
        why_not = ("another thread of this process is running (e.g. a BLAS pool still "
                   "spinning after a NumPy call): two lockstep workers would share its core")
    else:
        return Plan("split", f"{size}, split over {workers} cores", workers)
    if choice == "split":
        raise ValueError(f"CPU path 'split' was forced, but {cell.name} with batch "
                         f"{batch}, hidden {hidden}, {dtype} cannot take it: {why_not}")
    return Plan("general", why_not, transposed_weights=transposed)
