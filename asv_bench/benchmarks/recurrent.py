"""Recurrent layers: time, host and GPU memory, first-call (compile) time.

Parameters come from :mod:`rnnkern.bench.shapes` (``RNNKERN_BENCH_SHAPES=tiny``
selects the tiny shapes for smoke runs):

- ``cell``: every cell of the registry (lstm, gru, rnn_tanh, rnn_relu, ...),
  one layer, one direction;
- ``backend``: ``numpy`` (NumPy arrays, Numba kernels) always; ``cupy``
  (CuPy arrays, CUDA kernels) only where CuPy imports and finds a GPU;
- ``dtype``: float32, float64;
- ``shape``: ``"T,B,I,H"``; a shape runs on the backends whose device lists
  it (``CPU_SHAPES`` for numpy, ``GPU_SHAPES`` for cupy).

Combinations that cannot or should not run raise ``NotImplementedError`` in
``setup``, which asv reports as skipped.  The timed workload is
:class:`rnnkern.bench.workloads.RnnkernWorkload`, the one ``python -m rnnkern
bench`` times: seeded inputs, and calls that return only once the GPU is
idle (a device synchronize ends every call).  ``setup`` makes one warm-up call so that JIT (Numba) and NVRTC
compilation stay out of the timings; :class:`FirstCall` measures them.
"""

import importlib

import numpy as np

from rnnkern.bench.shapes import (CELLS, DTYPES, all_shapes, parse_shape, shapes_for,
                                  single_step_shapes)
from rnnkern.bench.workers import first_call_seconds
from rnnkern.bench.workloads import RnnkernWorkload, make_layer
from rnnkern.devices import cuda_unavailable_reason

#: asv parameter values of record, named by array library (append-only history;
#: ``rnnkern.backend_name`` calls these backends "numba" and "cuda").
BACKENDS = ("numpy", "cupy")
DEVICE_OF_BACKEND = {"numpy": "cpu", "cupy": "cuda"}
SHAPES = [str(shape) for shape in all_shapes()]


def skip_unless_runnable(backend, shape=None):
    """Raise NotImplementedError (asv: skip) if ``backend`` cannot or should not run ``shape``."""
    device = DEVICE_OF_BACKEND[backend]
    if shape is not None and parse_shape(shape) not in shapes_for(device):
        raise NotImplementedError(f"shape {shape} is not benchmarked on {backend}")
    reason = cuda_unavailable_reason() if device == "cuda" else None
    if reason is not None:
        raise NotImplementedError(reason)


def warm_workload(cell, backend, dtype, shape):
    """The workload, after one forward+backward that compiles its kernels."""
    skip_unless_runnable(backend, shape)
    workload = RnnkernWorkload(cell, parse_shape(shape), dtype, DEVICE_OF_BACKEND[backend])
    workload.forward_backward()
    return workload


class LayerTime:
    """Wall time of inference ``layer(x)``, of ``layer.forward(x)`` and of forward + ``backward``."""

    params = [CELLS, BACKENDS, DTYPES, SHAPES]
    param_names = ["cell", "backend", "dtype", "shape"]
    timeout = 300

    def setup(self, cell, backend, dtype, shape):
        self.workload = warm_workload(cell, backend, dtype, shape)

    def time_inference(self, cell, backend, dtype, shape):
        self.workload.forward_no_grad()

    def time_forward(self, cell, backend, dtype, shape):
        self.workload.forward()

    def time_forward_backward(self, cell, backend, dtype, shape):
        self.workload.forward_backward()


class SingleStepTime:
    """Wall time of the single-step cells (``rnnkern.LSTMCell``, ...) on NumPy arrays: one
    step ``cell(x, state)``, ``cell.forward`` and forward + ``backward``, at
    ``SINGLE_STEP_SHAPES`` (T = 1: the per-call cost a generation loop pays every step);
    and 16 steps backpropagated by hand (time and peak memory)."""

    params = [CELLS, DTYPES, [str(shape) for shape in single_step_shapes()]]
    param_names = ["cell", "dtype", "shape"]
    timeout = 120
    STEPS_BY_HAND = 16

    def setup(self, cell, dtype, shape):
        self.workload = RnnkernWorkload(cell, parse_shape(shape), dtype, "cpu",
                                        single_step=True)
        self.workload.forward_backward()

    def time_inference(self, cell, dtype, shape):
        self.workload.forward_no_grad()

    def time_forward(self, cell, dtype, shape):
        self.workload.forward()

    def time_forward_backward(self, cell, dtype, shape):
        self.workload.forward_backward()

    def time_backpropagation_through_time_by_hand(self, cell, dtype, shape):
        self._backpropagate_by_hand()

    def peakmem_backpropagation_through_time_by_hand(self, cell, dtype, shape):
        self._backpropagate_by_hand()

    def _backpropagate_by_hand(self):
        """16 steps of the cell, the state carried and every tape kept, then backward
        through them in reverse: what a user's own time loop does.  The tapes share the
        cell's parameters (``rnnkern.parameters.TapeParameters``), not 16 copies."""
        step, x = self.workload.layer.step, self.workload.x
        state, tapes = None, []
        for _ in range(self.STEPS_BY_HAND):
            state, tape = step.forward(x, state)
            tapes.append(tape)
        dstate = (tuple(np.ones_like(s) for s in state) if isinstance(state, tuple)
                  else np.ones_like(state))
        for tape in reversed(tapes):
            _, dstate, _ = step.backward(dstate, tape)


class GenerationTime:
    """Wall time of a generation loop on NumPy arrays: ``Sequential(Embedding(V, I), <cell>
    layer (I, H), Dense(H, V))`` fed one token a step for ``TOKENS`` steps, the states
    carried, through the inference call (``model(ids, states)``: no tapes) as
    ``rnnkern.training.generate`` runs it, greedy; B sequences at once, at
    ``SINGLE_STEP_SHAPES`` (T = 1)."""

    params = [CELLS, DTYPES, [str(shape) for shape in single_step_shapes()]]
    param_names = ["cell", "dtype", "shape"]
    timeout = 120
    TOKENS = 16
    VOCABULARY = 96

    def setup(self, cell, dtype, shape):
        from rnnkern.training import Dense, Embedding, Sequential

        shape = parse_shape(shape)
        self.model = Sequential(Embedding(self.VOCABULARY, shape.I, dtype=dtype, seed=0),
                                make_layer(cell, shape, dtype, "cpu", seed=1),
                                Dense(shape.H, self.VOCABULARY, dtype=dtype, seed=2))
        self.first_ids = np.random.default_rng(0).integers(0, self.VOCABULARY, (1, shape.B))
        self._generate()                    # compiles

    def time_generation_loop(self, cell, dtype, shape):
        self._generate()

    def _generate(self):
        ids, states = self.first_ids, None
        for _ in range(self.TOKENS):
            logits, states = self.model(ids, states)
            ids = np.argmax(logits, axis=-1)


class StackedBidirectionalTime:
    """Wall time of a stacked bidirectional layer on NumPy arrays (``num_layers=2,
    bidirectional=True`` at the CPU shapes): inference ``layer(x)`` and forward +
    ``backward``.  Beside ``LayerTime`` (one layer-direction) it times what the layer does
    around its four layer-directions: joining the directions' outputs, the second layer's
    input of 2H features, the directions' slices of dy and the sum of their dx."""

    params = [CELLS, DTYPES, SHAPES]
    param_names = ["cell", "dtype", "shape"]
    timeout = 300

    def setup(self, cell, dtype, shape):
        skip_unless_runnable("numpy", shape)
        shape = parse_shape(shape)
        self.layer = make_layer(cell, shape, dtype, "cpu", seed=0, num_layers=2,
                                bidirectional=True)
        rng = np.random.default_rng(0)
        self.x = rng.standard_normal((shape.T, shape.B, shape.I)).astype(dtype)
        self.dy = rng.standard_normal((shape.T, shape.B, 2 * shape.H)).astype(dtype)
        self.time_forward_backward(cell, dtype, shape)          # compiles

    def time_inference(self, cell, dtype, shape):
        self.layer(self.x)

    def time_forward_backward(self, cell, dtype, shape):
        _, _, tape = self.layer.forward(self.x)
        self.layer.backward(self.dy, tape)


class SubnormalTime:
    """``LayerTime`` on NumPy arrays whose values are subnormal: x and dy scaled to 1/16
    of the smallest normal number, zero biases, so the gate pre-activations, h, c and
    every gradient are subnormal too.

    rnnkern does not flush subnormals to zero (torch does not by default either,
    and the results would differ from its); against ``LayerTime`` of the same
    case this shows what they cost on the machine (a 2-core Zen 3: nothing
    measurable; other libraries have reported RNN training 18-27x slower on
    some CPUs).
    """

    params = [CELLS, DTYPES, SHAPES]
    param_names = ["cell", "dtype", "shape"]
    timeout = 300

    def setup(self, cell, dtype, shape):
        self.workload = warm_workload(cell, "numpy", dtype, shape)
        layer = self.workload.layer
        layer.load_state_dict({name: value * 0 if name.startswith("bias") else value
                               for name, value in layer.state_dict().items()})
        scale = np.finfo(dtype).smallest_normal / 16
        self.workload.x = (self.workload.x * scale).astype(dtype)
        self.workload.dy = (self.workload.dy * scale).astype(dtype)

    def time_inference(self, cell, dtype, shape):
        self.workload.forward_no_grad()

    def time_forward_backward(self, cell, dtype, shape):
        self.workload.forward_backward()


class HostMemory:
    """Peak resident memory of a process that runs forward+backward on NumPy arrays."""

    params = [CELLS, DTYPES, SHAPES]
    param_names = ["cell", "dtype", "shape"]
    timeout = 300

    def setup(self, cell, dtype, shape):
        self.workload = warm_workload(cell, "numpy", dtype, shape)

    def peakmem_inference(self, cell, dtype, shape):
        self.workload.forward_no_grad()

    def peakmem_forward_backward(self, cell, dtype, shape):
        self.workload.forward_backward()


class GpuPoolMemory:
    """Bytes of CuPy's default memory pool around the calls on CuPy arrays."""

    params = [CELLS, DTYPES, SHAPES]
    param_names = ["cell", "dtype", "shape"]
    unit = "bytes"
    timeout = 300

    def setup(self, cell, dtype, shape):
        self.workload = warm_workload(cell, "cupy", dtype, shape)
        import cupy

        self.pool = cupy.get_default_memory_pool()
        self.pool.free_all_blocks()

    def track_pool_used_bytes_kept_by_forward(self, cell, dtype, shape):
        """Bytes that y, the state and the tape hold after ``forward``."""
        before = self.pool.used_bytes()
        y_state_tape = self.workload.forward()
        kept = self.pool.used_bytes() - before
        del y_state_tape
        return kept

    def track_pool_total_bytes_forward_backward(self, cell, dtype, shape):
        """Pool size after one forward+backward from an emptied pool (its high-water
        mark), inputs and parameters included."""
        self.workload.forward_backward()
        return self.pool.total_bytes()


class FirstCall:
    """Seconds of the first forward+backward in a fresh process: mostly compilation.

    Cold: Numba's and CuPy's kernel caches start empty.  Cached: they were
    filled by an earlier process.  See ``rnnkern.bench.workers.first_call_seconds``.
    """

    params = [CELLS, BACKENDS, DTYPES]
    param_names = ["cell", "backend", "dtype"]
    unit = "seconds"
    timeout = 600

    def setup(self, cell, backend, dtype):
        skip_unless_runnable(backend)

    def track_first_call_cold(self, cell, backend, dtype):
        return first_call_seconds(cell, dtype, DEVICE_OF_BACKEND[backend], cached=False)

    def track_first_call_cached(self, cell, backend, dtype):
        return first_call_seconds(cell, dtype, DEVICE_OF_BACKEND[backend], cached=True)


class _ForcedPathTime:
    """Inference and forward+backward with a backend's path forced by its planner's
    ``use_path``; subclasses name the backend and the planner's batch limit."""

    backend = planner_module = max_batch_name = None     # set by subclasses
    param_names = ["cell", "dtype", "shape", "path"]
    timeout = 300

    def setup(self, cell, dtype, shape, path):
        planner = importlib.import_module(self.planner_module)
        skip_unless_runnable(self.backend, shape)
        if self.max_batch_name and parse_shape(shape).B > getattr(planner, self.max_batch_name):
            raise NotImplementedError(f"batch of {shape} is above the {path} path's range")
        self.forced = planner.use_path(path)
        self.forced.__enter__()                 # left in teardown
        self.workload = warm_workload(cell, self.backend, dtype, shape)

    def teardown(self, cell, dtype, shape, path):
        self.forced.__exit__(None, None, None)

    def time_inference(self, cell, dtype, shape, path):
        self.workload.forward_no_grad()

    def time_forward_backward(self, cell, dtype, shape, path):
        self.workload.forward_backward()


class CpuPathTime(_ForcedPathTime):
    """NumPy arrays: the split driver (W split by hidden units over the cores, every stage
    on both) beside the general one (a BLAS call per step, the rows on one thread)."""

    params = [CELLS, DTYPES, SHAPES, ["split", "general"]]
    backend, planner_module = "numpy", "rnnkern.backends.numba.planner"
    max_batch_name = None                       # the split driver takes every batch


class GpuPathTime(_ForcedPathTime):
    """CuPy arrays: the persistent kernels (one cooperative launch a direction) beside the
    step path (a graph of per-step GEMMs and kernels), at the batches the persistent
    kernels take.  Skipped without a GPU."""

    params = [CELLS, DTYPES, SHAPES, ["persistent", "step"]]
    backend, planner_module = "cupy", "rnnkern.backends.cuda.planner"
    max_batch_name = "PERSISTENT_MAX_BATCH"
