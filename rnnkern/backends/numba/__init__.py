"""Numba backend (NumPy arrays): Numba kernels around BLAS GEMMs.

Per layer-direction (contract in ``rnnkern.backends``)::

    forward   gx = x @ W_ih^T + b_ih              one GEMM over all T*B rows
              drivers.forward_sequence            per step: h @ W_hh^T + the cell's fused rows
    backward  drivers.backward_sequence           per step: the cell's fused rows + dgh @ W_hh
              weight_gradients                     dW_ih, dW_hh, db, dx: GEMMs over all T*B rows

Scratch that no caller sees again comes from a per-thread cache
(:func:`_workspace`), in training as in inference: ``gx``, ``gh``, the
copies of W_hh^T and W_hr^T where the plan makes them (:func:`_transposed_copy`;
``planner.TRANSPOSE_MIN_STEPS``), the backward's gate
gradients ``dgx``/``dgh`` and its per-step buffers; fresh arrays of that
size cost their first-touch page faults on every call.  What the tape keeps
(states, saved gates, ``m``) is fresh in training.  Inference
(``keep=False``) keeps nothing: no state history, and the cell's saved
arrays get ONE step, a scratch slot the rows rewrite (see
``drivers.forward_sequence``), from the cache too, so a repeated
``layer(x)`` allocates little beyond ``y`` and the states.

Where the planner says so (``planner``: two usable cores, no projection, a
step's product big enough) a layer-direction runs on the split path
instead, forward and backward: ``split.forward_worker`` and
``split.backward_worker`` on two threads (this one and a helper), W split
by hidden units, each worker doing its share of the input projection, of
every step (product and rows, one spin barrier a step) and of the weight
gradients, with the BLAS on one thread per worker (:func:`_run_split`).  It
writes the same ``y``, states, tape and gradients as the general drivers.

The kernels live in ``rnnkern.kernels.numba``; ``blas`` picks the CBLAS their
GEMMs call.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import functools
import math
import os
import threading
import typing

import numpy as np

from rnnkern.kernels.numba import atomics, drivers, gemm, split, tiles

from .. import int32_lengths, weight_gradients
from . import planner
from .blas import gemm_function

__all__ = ["forward_direction", "backward_direction", "step"]


def _rows(a):
    """(T, B, F) -> (T*B, F), C-contiguous (copies only when it must)."""
    return np.ascontiguousarray(a).reshape(-1, a.shape[-1])


def _matmul(a, b):
    """a @ b on the BLAS the Numba kernels use (see kernels.numba.gemm)."""
    out = np.empty((a.shape[0], b.shape[1]), np.result_type(a, b))
    gemm.gemm(gemm_function(out.dtype), a, b, out)
    return out


def _transposed_copy(w, scratch, role):
    """``w.T`` copied C-contiguous into ``scratch(role, ...)``.

    For the general driver's step products on long sequences
    (``Plan.transposed_weights``): on one machine's OpenBLAS they ran 1.3-4x
    faster with ``W^T`` C-contiguous (NN) than with the view ``w.T``
    transposed by flag (NT); see ``planner.TRANSPOSE_MIN_STEPS``.
    """
    out = scratch(role, w.shape[::-1])
    np.copyto(out, w.T)
    return out


def _own_copy(a, dtype):
    return np.array(a, dtype=dtype, order="C", copy=True)


class _ThreadWorkspaces(threading.local):
    """One flat buffer per (role, dtype) for each thread, grown on demand; the shaped views
    of them handed out (``_workspace``); the arrays last carved from a role's buffer
    (``_cache_line_arrays``), with their layout; and the prepared steps (``step``)."""

    def __init__(self):
        self.buffers = {}
        self.views = {}
        self.carved = {}
        self.steps = {}             # the steps prepared on this thread (step)


_WORKSPACES = _ThreadWorkspaces()
WORKSPACE_LIMIT_BYTES = 64 * 2**20
"""Larger scratch arrays are allocated per call rather than kept."""


def _workspace(role, shape, dtype):
    """A C-contiguous scratch array of ``shape`` from this thread's cache.

    Its contents are garbage on return, and the next call with the same
    ``role`` on this thread overwrites them: only for arrays that live
    within one ``forward_direction`` call (never ``y``, a state or a tape
    entry).  Arrays over :data:`WORKSPACE_LIMIT_BYTES` are not cached.
    """
    view = _WORKSPACES.views.get((role, dtype, shape))
    if view is not None:                    # the same view as last time: ~0.3 us, not ~3
        return view
    dtype = np.dtype(dtype)
    size = math.prod(shape)
    if size * dtype.itemsize > WORKSPACE_LIMIT_BYTES:
        return np.empty(shape, dtype)
    buffer = _WORKSPACES.buffers.get((role, dtype))
    if buffer is None or buffer.size < size:
        buffer = _WORKSPACES.buffers[(role, dtype)] = np.empty(max(size, 1), dtype)
        _WORKSPACES.views = {key: view for key, view in _WORKSPACES.views.items()
                             if key[0] != role}         # views of the old buffer
    if len(_WORKSPACES.views) >= _MAX_VIEWS:            # many shapes (T varying): start over
        _WORKSPACES.views = {}
    view = _WORKSPACES.views[(role, dtype, shape)] = buffer[:size].reshape(shape)
    return view


_MAX_VIEWS = 256


def forward_direction(cell, x, params, state, lengths, reverse, *, keep=True):
    w_ih, w_hh = params["weight_ih"], params["weight_hh"]
    T, B, _ = x.shape
    GH, P = w_hh.shape
    H = w_ih.shape[0] // cell.num_gates
    dtype = x.dtype
    # What no caller sees again (gx, gh, W_hh^T, the projection's scratch) comes
    # from this thread's cache, in training too: fresh arrays of this size cost
    # their page faults on every call.  What the tape keeps (saved, m) is fresh
    # in training; inference keeps nothing and takes it from the cache as well.
    scratch = lambda role, shape: _workspace(role, shape, dtype)      # noqa: E731
    kept = (lambda role, shape: np.empty(shape, dtype)) if keep else scratch
    S = T if keep else 1                   # steps of the saved arrays (see the driver)
    w_hr = params.get("weight_hr")
    plan = planner.plan_direction(cell, dtype, B, H, projected=w_hr is not None, training=keep,
                                  steps=T)
    lengths = int32_lengths(np, lengths, B, T)
    state = tuple(_own_copy(s, dtype) for s in state)
    y = np.empty((T, B, P), dtype)
    history = tuple(np.empty(((T if keep else 0),) + s.shape, dtype) for s in state)
    saved = tuple(kept(f"saved{k}", (S, B, s.width * H)) for k, s in enumerate(cell.saved))
    m = None
    if plan.path == "split":
        _run_split(split.forward_worker, cell, plan, _forward_arguments, np.ascontiguousarray(x),
                   params, lengths, reverse, keep, state, y, history, saved, calls_blas=False)
    else:
        with _cores_held() if plan.one_blas_thread else contextlib.nullcontext():
            m = _general_forward(cell, x, params, lengths, reverse, keep, state, y, history,
                                 saved, scratch, kept, plan.transposed_weights)
    if not keep:
        return y, state, None
    return y, state, _tape(x, params, lengths, reverse, history, saved, m)


def _tape(x, params, lengths, reverse, history, saved, m):
    """What ``backward_direction`` reads of a forward.  ``params`` is the parameter dict
    itself, not its arrays: ``TapeParameters.detach`` swaps them for copies."""
    return {"x": x, "params": params, "lengths": lengths, "reverse": reverse,
            "history": history, "saved": saved, "m": m}


class _PreparedStep(typing.NamedTuple):
    """What the steps of one (cell, batch, W_hh shape, dtype, planner setting) share on a
    thread: the plan and the general driver's arguments other than the arrays of a call."""

    plan: planner.Plan
    rows: drivers.CellRows
    lengths: np.ndarray         # (B,) all 1; the tapes share it (nothing writes it)
    gx: np.ndarray              # (1, B, G*H) scratch
    gh: np.ndarray              # (B, G*H) scratch
    y: np.ndarray               # (1, B, H) scratch: the step's h is the state's
    history: tuple              # (0, B, H) stand-ins: inference keeps nothing
    saved: tuple                # one step of the cell's saved arrays: inference's scratch


def step(cell, x, params, state, *, keep=False):
    """One step (``x`` (B, I); see ``rnnkern.backends``): ``forward_direction``'s general
    driver at T = 1, with its set-up made once per (cell, batch, W_hh shape, dtype, planner
    setting) on each thread.

    A single-step cell's user calls this once a time step, and at B = 1, H = 256
    the set-up of a ``forward_direction`` call (its plan, scratch, stand-ins and
    their checks) took longer than the step's two GEMVs and row.  A plan that
    is not the plain general driver (a forced split), and a step whose scratch
    would be over ``WORKSPACE_LIMIT_BYTES``, run ``forward_direction``.  The
    plan is made once per kind and ``planner.setting()``: at T = 1 it follows
    from the shapes unless a path is forced or the thresholds are changed.
    """
    dtype = x.dtype
    key = (cell, x.shape[0], params["weight_hh"].shape, dtype, planner.setting())
    prepared = _WORKSPACES.steps.get(key)
    if prepared is None:
        prepared = _prepare_step(cell, key)
    x = np.ascontiguousarray(x).reshape((1,) + x.shape)
    if prepared is _NOT_PREPARED or "weight_hr" in params:
        _, state_n, saved = forward_direction(cell, x, params, state, None, False, keep=keep)
        return state_n, saved
    plan = prepared.plan
    state = tuple(_own_copy(s, dtype) for s in state)     # the driver carries them: the answer
    if keep:                    # what the tape keeps: fresh
        history = tuple(np.empty((1,) + s.shape, dtype) for s in state)
        saved = tuple(np.empty_like(s) for s in prepared.saved)
    else:
        history, saved = prepared.history, prepared.saved
    with _cores_held() if plan.one_blas_thread else contextlib.nullcontext():
        _forward_sequence(prepared.rows, x, params, prepared.gx, _NONE_2D[dtype],
                          prepared.lengths, False, keep, state, prepared.y, history, saved,
                          prepared.gh)
    if not keep:
        return state, None
    return state, _tape(x, params, prepared.lengths, False, history, saved, None)


def _prepare_step(cell, key):
    """The :class:`_PreparedStep` of ``key`` (see ``step``), kept for this thread; or
    ``_NOT_PREPARED`` where its plan is not the plain general driver, or its scratch is
    over :data:`WORKSPACE_LIMIT_BYTES` (such steps run ``forward_direction``)."""
    _, B, (GH, _), dtype, _ = key
    H = GH // cell.num_gates
    plan = planner.plan_direction(cell, dtype, B, H, projected=False, steps=1)
    scratch_bytes = B * (2 * GH + H + sum(s.width for s in cell.saved) * H) * dtype.itemsize
    if plan.path != "general" or plan.transposed_weights or scratch_bytes > WORKSPACE_LIMIT_BYTES:
        prepared = _NOT_PREPARED
    else:
        empty = lambda *shape: np.empty(shape, dtype)      # noqa: E731
        prepared = _PreparedStep(
            plan, drivers.CellRows(cell.kernels["numba"]), np.ones(B, np.int32),
            empty(1, B, GH), empty(B, GH), empty(1, B, H),
            tuple(empty(0, B, H) for _ in cell.state_names),
            tuple(empty(1, B, s.width * H) for s in cell.saved))
    if len(_WORKSPACES.steps) >= STEP_KINDS_KEPT:       # many kinds: start over
        _WORKSPACES.steps = {}
    _WORKSPACES.steps[key] = prepared
    return prepared


_NOT_PREPARED = object()
STEP_KINDS_KEPT = 32
"""Kinds of steps (``step``) a thread keeps prepared; their scratch is a few steps' worth."""


def _general_forward(cell, x, params, lengths, reverse, keep, state, y, history, saved, scratch,
                     kept, transposed_weights):
    """``drivers.forward_sequence``; returns the projection's m_t for the tape (None without
    a projection).

    ``transposed_weights``: the step products multiply by C-contiguous copies of
    ``W_hh^T`` and ``W_hr^T`` (see the planner), else by the transposed views (the
    driver's argument types are the same either way: one compiled driver).
    """
    w_hr = params.get("weight_hr")
    T, B, _ = x.shape
    GH, P = params["weight_hh"].shape
    H = state[-1].shape[1]
    dtype = x.dtype
    S = T if keep else 1

    def transposed(w, role):
        """The C-contiguous copy of ``w.T``, or the (0, 0) stand-in (the driver then
        multiplies by ``w.T``)."""
        return (_transposed_copy(np.ascontiguousarray(w), scratch, role) if transposed_weights
                else _NONE_2D[dtype])

    projection = None
    if w_hr is not None:         # the rows write m_t = o tanh(c_t); the driver projects it
        m = np.zeros((B, H), dtype)
        projection = (np.ascontiguousarray(w_hr), transposed(w_hr, "w_hr_t"),
                      (m,) + state[1:], kept("m", (S, B, H)), scratch("projected", (B, P)))
    _forward_sequence(drivers.CellRows(cell.kernels["numba"]), x, params,
                      scratch("gx", (T, B, GH)), transposed(params["weight_hh"], "w_hh_t"),
                      lengths, reverse, keep, state, y, history, saved, scratch("gh", (B, GH)),
                      projection)
    return None if projection is None else projection[3]         # m_t of every step


def _forward_sequence(rows, x, params, gx, w_hh_t, lengths, reverse, keep, state, y, history,
                      saved, gh, projection=None):
    """``drivers.forward_sequence`` on ``x`` and ``params`` (made C-contiguous where they are
    not).  ``w_hh_t``: the copy of W_hh^T or the (0, 0) stand-in; ``projection``: the
    driver's five projection arguments, None for a direction without one."""
    dtype = x.dtype
    if projection is None:
        projection = (_NONE_2D[dtype], _NONE_2D[dtype], state, y, _NONE_2D[dtype])
    drivers.forward_sequence(
        rows, gemm_function(dtype), np.ascontiguousarray(x),
        np.ascontiguousarray(params["weight_ih"]), np.ascontiguousarray(params["bias_ih"]), gx,
        np.ascontiguousarray(params["weight_hh"]), w_hh_t,
        np.ascontiguousarray(params["bias_hh"]), lengths, reverse, keep, state, y, history,
        saved, gh, *projection)


@functools.cache
def _blas_pools():
    """threadpoolctl's controllers of the BLAS pools of this process (found once)."""
    from threadpoolctl import ThreadpoolController

    return tuple(ThreadpoolController().select(user_api="blas").lib_controllers)


@contextlib.contextmanager
def _one_blas_thread():
    """The BLAS pools on one thread inside the block, their thread counts restored after.

    threadpoolctl's own ``limit()`` context does the same in ~22 us a call
    (it re-reads and re-selects the libraries); the controllers' get/set,
    called directly, take ~7 us: a small layer's whole call can be ~100 us.
    """
    pools = _blas_pools()
    previous = [pool.get_num_threads() for pool in pools]
    for pool in pools:
        pool.set_num_threads(1)
    try:
        yield
    finally:
        for pool, threads in zip(pools, previous):
            pool.set_num_threads(threads)


class _Helper:
    """The split path's second worker: one thread, started on first use (per process).

    ``pair`` is held while a two-worker call runs: a call that finds it
    taken (another user thread is running one) runs with one worker rather
    than queue behind it with its first worker spinning.
    """

    def __init__(self):
        self.pair = threading.Lock()
        self.pinned = None                      # the helper thread's CPU affinity, if set
        self._lock = threading.Lock()
        self._pid, self._executor = None, None

    def executor(self):
        with self._lock:
            if self._pid != os.getpid():            # none yet, or inherited through fork
                self._pid, self.pinned = os.getpid(), None
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    1, thread_name_prefix="rnnkern-split")
            return self._executor


_HELPER = _Helper()
_SCHED_YIELD = atomics.sched_yield_address()


def _sched_getcpu():
    """libc's ``sched_getcpu`` (the CPU the calling thread runs on), or None."""
    try:
        function = ctypes.CDLL(None).sched_getcpu
    except (AttributeError, OSError):
        return None
    function.restype, function.argtypes = ctypes.c_int, []
    return function


_GETCPU = _sched_getcpu()


def _other_cpus():
    """The CPUs this process may use, less the one this thread runs on now (or None).

    The helper pins itself there: woken by this thread, Linux may start it
    on this thread's own CPU (wake-affine), and until the load balancer
    moves it the two workers take turns on one core, a yield a step.  A
    guard, not a measured gain: in an A/B on the 2-core VM (LSTM, B = 1,
    H = 256) pinned and unpinned calls both took 1.6 ms (median of 40).
    """
    if _GETCPU is None or not hasattr(os, "sched_getaffinity"):
        return None
    others = os.sched_getaffinity(0) - {_GETCPU()}
    return frozenset(others) or None


def _run_split(kernel, cell, plan, arguments_of, x, *shared, calls_blas):
    """Run ``kernel`` (``split.forward_worker`` or ``backward_worker``) on ``plan.workers``
    threads: this one and the helper.  ``calls_blas``: whether the kernel calls the BLAS
    (the backward's weight gradients; then limited to one thread for the call).

    ``arguments_of(cell, workers, barrier, x, *shared)`` gives each
    worker's argument tuple, made after the worker count is settled (a call
    that finds the helper taken by another user thread runs with one worker
    rather than queue behind it with its first worker spinning; see
    :func:`_cores_held`).
    Everything the workers take is checked and allocated before either starts,
    and no Python runs between their barriers; a worker that fails aborts the
    barrier, so the other returns instead of spinning, and the failure is
    raised here.
    """
    with _cores_held(limit_blas=calls_blas) as held:
        workers = plan.workers if held else 1
        barrier = _workspace("split_barrier", (atomics.BARRIER_SIZE,), np.int64)
        barrier[:] = 0                          # this thread's last call is over: reusable
        arguments = arguments_of(cell, workers, barrier, x, *shared)
        if workers == 1:
            if not kernel(*arguments[0]):
                raise RuntimeError("split path: the worker was aborted")
            return
        second = _HELPER.executor().submit(_guarded_worker, kernel, arguments[1], barrier,
                                           _other_cpus())
        try:
            finished = kernel(*arguments[0])
        except BaseException:
            barrier[atomics.ABORT] = 1          # the helper stops waiting for this worker
            concurrent.futures.wait([second])
            raise
        if not (second.result() and finished):   # the helper's exception, if it raised
            raise RuntimeError("split path: a worker was aborted")


@contextlib.contextmanager
def _cores_held(limit_blas=True):
    """Hold the process's cores for one call: the helper thread, and (``limit_blas``) the
    BLAS on one thread.

    Yields False (holding nothing) when another call of this process holds
    them.  The BLAS limit (:func:`_one_blas_thread`, process-wide for the
    call's duration) is set by one call at a time, so limits never
    interleave: each split worker calls the BLAS from its own core, and a
    multi-threaded call would wake the BLAS pool, whose threads keep spinning
    after it returns (OpenBLAS: ~2^28 cycles) on the core the other worker
    needs (measured: lockstep steps 3-10x slower).  A call that makes no BLAS
    call (the split forward) skips the limit (~7 us).
    """
    held = _HELPER.pair.acquire(blocking=False)
    try:
        with _one_blas_thread() if held and limit_blas else contextlib.nullcontext():
            yield held
    finally:
        if held:
            _HELPER.pair.release()


def _guarded_worker(kernel, arguments, barrier, cpus=None):
    """The helper's side: pinned to ``cpus`` (if given), run the worker; on any failure abort
    the barrier so that the other worker returns."""
    planner.QUIET_THREADS.add(threading.get_native_id())   # idle between calls
    try:
        if cpus is not None and _HELPER.pinned != cpus:
            os.sched_setaffinity(0, cpus)       # this thread only
            _HELPER.pinned = cpus
        return kernel(*arguments)
    except BaseException:
        barrier[atomics.ABORT] = 1              # the other worker stops waiting for this one
        raise


GX_CHUNK_BYTES = 256 * 1024
"""A split worker's ``x W_ih^T`` for this many bytes of steps at a time: in L2 beside its
weight panels, and at batch 1 a product over ~100 rows that reads W_ih once, not once a step."""


def _forward_arguments(cell, workers, barrier, x, params, lengths, reverse, keep, state, y,
                       history, saved):
    """Each worker's arguments for ``split.forward_worker``: the shared arrays, then its own
    scratch (packed weights and per-step buffers, on cache lines of their own)."""
    T, B, I = x.shape
    H = state[0].shape[1]
    G, dtype = cell.num_gates, x.dtype
    h_steps = _workspace("split_h", (2, B, H), dtype)
    h_steps[0] = state[0]
    contiguous = {name: np.ascontiguousarray(params[name])
                  for name in ("weight_ih", "bias_ih", "weight_hh", "bias_hh")}
    shared = (x, contiguous["weight_ih"], contiguous["bias_ih"], contiguous["weight_hh"],
              contiguous["bias_hh"], lengths, reverse, keep, state, y, history, saved, h_steps,
              barrier, _SCHED_YIELD)
    arguments = []
    for worker in range(workers):
        U = _units(worker, workers, H)
        P = tiles.panel_count(G * U, dtype.itemsize)
        NR = tiles.panel_width(dtype.itemsize)
        chunk = max(1, min(T, GX_CHUNK_BYTES // (B * P * NR * dtype.itemsize)))
        # w_ih_panels, w_hh_panels, b_ih_packed, b_hh_packed, gx, gh, cell_state, y_step,
        # saved_step (split.forward_worker)
        layout = [(P, I, NR), (P, H, NR), (G * U,), (G * U,), (chunk, B, P * NR), (B, P * NR),
                  [(B, U)] * cell.num_states, (1, B, U),
                  [(1, B, s.width * U) for s in cell.saved]]
        own = tuple(_cache_line_arrays(f"split_forward_{worker}", layout, dtype))
        arguments.append((drivers.CellRows(cell.kernels["numba"]), worker, workers) + shared +
                         own)
    return arguments


def _backward_arguments(cell, workers, barrier, x, dy, tape, carry, dgx, dgh, dx, grads):
    """Each worker's arguments for ``split.backward_worker`` (see ``_forward_arguments``)."""
    T, B, I = x.shape
    H = carry[0].shape[1]
    G, dtype = cell.num_gates, x.dtype
    separate_dgh = dgh is not dgx
    params = tape["params"]
    shared = (x, dy, np.ascontiguousarray(params["weight_ih"]),
              np.ascontiguousarray(params["weight_hh"]),
              tape["lengths"], tape["reverse"], tape["history"], tape["saved"], carry, dgx, dgh,
              separate_dgh, dx, grads["weight_ih"], grads["weight_hh"], grads["bias_ih"],
              grads["bias_hh"], barrier, _SCHED_YIELD)
    arguments = []
    for worker in range(workers):
        U = _units(worker, workers, H)
        P = tiles.panel_count(U, dtype.itemsize)
        NR = tiles.panel_width(dtype.itemsize)
        # w_panels, cell_carry, dy_step, history_step, saved_step, dgx_step, dgh_step (dgx_step
        # itself unless separate), dh_recurrent (split.backward_worker)
        layout = [(P, G * H, NR), [(B, U)] * cell.num_states, (1, B, U),
                  [(1, B, U)] * cell.num_states, [(1, B, s.width * U) for s in cell.saved],
                  (1, B, G * U), (1, B, G * U) if separate_dgh else (0,), (B, P * NR)]
        own = _cache_line_arrays(f"split_backward_{worker}", layout, dtype)
        if not separate_dgh:
            own[6] = own[5]
        arguments.append((drivers.CellRows(cell.kernels["numba"]), worker, workers,
                          gemm_function(dtype)) + shared + tuple(own))
    return arguments


def _units(worker, workers, hidden):
    """How many hidden units ``worker`` owns (``split.unit_range``)."""
    return (worker + 1) * hidden // workers - worker * hidden // workers


_CACHE_LINE = 128        # bytes; two 64-byte lines (the adjacent-line prefetcher pairs them)


def _cache_line_arrays(role, layout, dtype):
    """C-contiguous arrays of the shapes in ``layout`` from one workspace buffer, each
    starting on its own cache line and none sharing a line with another buffer.

    ``layout`` is a list of shapes and of lists of shapes; the result has the
    same structure, a list of shapes becoming a tuple of arrays (the workers'
    tuples of states and saved arrays).  A call with the layout of the role's
    last call gets the same arrays again (views cost ~1 us each, and a batch-1
    call at T = 1 takes a few hundred).

    A worker's scratch must not share cache lines with the other worker's:
    small arrays from separate ``np.empty`` calls sit side by side in the
    heap, and two workers writing them every step (false sharing) made a
    two-worker step 15x slower than a one-worker step.
    """
    dtype = np.dtype(dtype)
    key = (dtype, tuple(tuple(item) if isinstance(item, list) else item for item in layout))
    last = _WORKSPACES.carved.get(role)
    if last is not None and last[0] == key:
        return list(last[1])
    line = _CACHE_LINE // dtype.itemsize
    shapes = [shape for item in layout for shape in (item if isinstance(item, list) else [item])]
    sizes = [-(-math.prod(shape) // line) * line for shape in shapes]
    buffer = _workspace(role, (sum(sizes) + 3 * line,), dtype)
    offset = line + (-(buffer.ctypes.data // dtype.itemsize)) % line
    arrays = []
    for shape, size in zip(shapes, sizes):
        arrays.append(buffer[offset:offset + math.prod(shape)].reshape(shape))
        offset += size
    arrays.reverse()
    carved = [tuple(arrays.pop() for _ in item) if isinstance(item, list) else arrays.pop()
              for item in layout]
    if buffer.nbytes <= WORKSPACE_LIMIT_BYTES:      # a buffer the thread keeps anyway
        _WORKSPACES.carved[role] = (key, carved)
    return list(carved)


def backward_direction(cell, dy, dstate_n, tape):
    x, history, params = tape["x"], tape["history"], tape["params"]
    w_ih, w_hh, w_hr = params["weight_ih"], params["weight_hh"], params.get("weight_hr")
    T, B, I = x.shape
    GH, P = w_hh.shape
    H = w_ih.shape[0] // cell.num_gates
    dtype = x.dtype
    carry = tuple(_own_copy(d, dtype) for d in dstate_n)
    # the gate gradients and the scratch end with this call: this thread's cache
    dgx = _workspace("dgx", (T, B, GH), dtype)
    dgh = _workspace("dgh", (T, B, GH), dtype) if "dgh" in cell.step_gradients else dgx
    dy = np.ascontiguousarray(dy)
    plan = planner.plan_direction(cell, dtype, B, H, projected=w_hr is not None, training=True,
                                  steps=T)
    if plan.path == "split":
        dx = np.empty((T, B, I), dtype)
        grads = {"weight_ih": np.empty_like(w_ih), "weight_hh": np.empty((GH, P), dtype),
                 "bias_ih": np.empty(GH, dtype), "bias_hh": np.empty(GH, dtype)}
        _run_split(split.backward_worker, cell, plan, _backward_arguments,
                   np.ascontiguousarray(x), dy, tape, carry, dgx, dgh, dx, grads, calls_blas=True)
        return dx, carry, grads
    if w_hr is None:
        projection = (_NONE_2D[dtype], carry, dy, _NONE_3D[dtype])
    else:                        # the rows see dm = dh W_hr; dy is already in it
        projection = (np.ascontiguousarray(w_hr), (np.empty((B, H), dtype),) + carry[1:],
                      np.broadcast_to(np.zeros((1, 1, H), dtype), (T, B, H)),
                      _workspace("dh_projected", (T, B, P), dtype))
    with _cores_held() if plan.one_blas_thread else contextlib.nullcontext():
        drivers.backward_sequence(
            drivers.CellRows(cell.kernels["numba"]), gemm_function(dtype), dy,
            np.ascontiguousarray(w_hh), tape["lengths"], tape["reverse"], history, tape["saved"],
            carry, dgx, dgh, _workspace("dh_recurrent", (B, P), dtype), *projection)
        dgx_rows = _rows(dgx)
        dx, grads = weight_gradients(np, _matmul, _rows(x), _rows(history[0]), dgx_rows,
                                     dgx_rows if dgh is dgx else _rows(dgh), w_ih)
        if w_hr is not None:     # dW_hr = sum_t dh_t^T m_t
            grads["weight_hr"] = _matmul(_rows(projection[3]).T, _rows(tape["m"]))
    return dx.reshape(T, B, I), carry, grads


# Stand-ins for the projection arguments of a layer without one.
_NONE_2D = {np.dtype(t): np.empty((0, 0), t) for t in (np.float32, np.float64)}
_NONE_3D = {np.dtype(t): np.empty((0, 0, 0), t) for t in (np.float32, np.float64)}
