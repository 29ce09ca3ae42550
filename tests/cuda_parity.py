"""Parity checks of the CUDA path, shared by the host-emulated and the GPU tests.

One body per check, run on two launchers: the host emulation on NumPy arrays
(tests/test_cuda_emulation.py, every CI run) and CuPy on a real GPU
(tests/test_gpu.py).  References: the oracle of each cell
(tests/torch_oracle.py: torch where it computes the cell), the NumPy (Numba)
path of the same layer, and for single kernels the array-API cell steps of
``rnnkern.cells``.  Every cell of the registry is checked; the kernels'
argument lists come from ``rnnkern.backends.cuda.driver`` and the registry.
"""

import itertools

import array_api_compat.numpy as np_api
import numpy as np
import pytest

from conftest import ALL_CELLS, CELL_IDS, TOLERANCE, make_layer
from rnnkern.backends.cuda.driver import backward_step_arguments, forward_step_arguments
from rnnkern.backends.cuda.modules import elementwise_launch, kernel_name
from torch_oracle import oracle_run

# (T, B, I, H): ordinary, the degenerate B = H = 1, and H above a warp that
# no block size divides.
_SHAPES = [(5, 3, 4, 5), (4, 1, 1, 1), (6, 4, 3, 37)]


def _layer_cases():
    """Every cell x dtype x num_layers x bidirectional x lengths x batch_first."""
    cases = []
    grid = itertools.product(zip(ALL_CELLS, CELL_IDS), ["float64", "float32"], [1, 2],
                             [False, True], [False, True], [False, True])
    for k, ((cell, cell_id), dtype, layers, bidirectional, lengths, batch_first) in enumerate(grid):
        T, B, I, H = _SHAPES[k % len(_SHAPES)]
        cfg = dict(cell=cell, dtype=dtype, num_layers=layers, bidirectional=bidirectional,
                   with_lengths=lengths, batch_first=batch_first, T=T, B=B, I=I, H=H,
                   bias=k % 4 != 3, seed=k)
        name = "-".join([cell_id, dtype, f"L{layers}", "bi" if bidirectional else "uni",
                         "lengths" if lengths else "full", "bf" if batch_first else "tf",
                         f"T{T}B{B}I{I}H{H}"] + ([] if cfg["bias"] else ["nobias"]))
        cases.append(pytest.param(cfg, id=name))
    return cases


LAYER_CASES = _layer_cases()


def build_case(cfg):
    """A NumPy layer and random x, initial state, lengths, dy and dstate."""
    rng = np.random.default_rng(cfg["seed"])
    cell = cfg["cell"]
    layer = make_layer(cell, cfg["I"], cfg["H"], cfg["num_layers"], bias=cfg["bias"],
                       batch_first=cfg["batch_first"], bidirectional=cfg["bidirectional"],
                       dtype=cfg["dtype"], seed=cfg["seed"])
    T, B, D, dt = cfg["T"], cfg["B"], 2 if cfg["bidirectional"] else 1, cfg["dtype"]
    x = rng.standard_normal((B, T, cfg["I"]) if cfg["batch_first"] else (T, B, cfg["I"])).astype(dt)
    state_shape = (cfg["num_layers"] * D, B, cfg["H"])

    def state():
        states = tuple(rng.standard_normal(state_shape).astype(dt) for _ in cell.state_names)
        return states if len(states) > 1 else states[0]
    lengths = rng.integers(1, T + 1, size=B).tolist() if cfg["with_lengths"] else None
    dy = rng.standard_normal(x.shape[:2] + (D * cfg["H"],)).astype(dt)
    return layer, x, state(), lengths, dy, state()


def to_numpy(a):
    """A NumPy array from a NumPy or CuPy array."""
    return a.get() if hasattr(a, "get") else np.asarray(a)


def _state_list(state):
    """A layer's state in the user's form (h, or a tuple) as a list."""
    return list(state) if isinstance(state, tuple) else [state]


def run_layer(layer, x, state, lengths, dy, dstate):
    """rnnkern forward and backward; every result as NumPy arrays."""
    y, state_n, tape = layer.forward(x, state, lengths=lengths)
    dx, dstate0, grads = layer.backward(dy, tape, dstate)
    return {"y": to_numpy(y), "state_n": [to_numpy(s) for s in _state_list(state_n)],
            "dx": to_numpy(dx), "dstate0": [to_numpy(s) for s in _state_list(dstate0)],
            "grads": {k: to_numpy(g) for k, g in grads.items()}}


# float32 layers on the CUDA path: the GPU contracts into FMA and its
# expf/tanhf err by up to 2 ulp, so its rounding differs from the oracle's
# (torch on the CPU) at every step; those differences (a few ulps of each
# step's largest magnitude, see STEP_ULPS) travel through T steps of BPTT and
# the sums over T*B rows of the weight gradients.  Beyond TOLERANCE's rtol
# that leaves an absolute error of a few ulps of the largest magnitude of the
# result: measured at most 6.2 ulp in the emulation (FMA, 2-ulp expf/tanhf)
# over the layer cases with 14 seeds each.  float64: TOLERANCE as it is.
LAYER_ULPS = 16


def layer_tolerance(dtype, expected):
    """``assert_allclose`` keywords for one result of the CUDA path (see LAYER_ULPS)."""
    tolerance = dict(TOLERANCE[dtype])
    if dtype == "float32":
        largest = max(1.0, float(np.max(np.abs(expected))))
        tolerance["atol"] = max(tolerance["atol"],
                                LAYER_ULPS * float(np.finfo(np.float32).eps) * largest)
    return tolerance


def assert_results_close(ours, ref, dtype, against):
    def close(a, b, what):
        np.testing.assert_allclose(a, b, **layer_tolerance(dtype, b),
                                   err_msg=f"{what} vs {against}")
    for key in ("y", "dx"):
        close(ours[key], ref[key], key)
    for key in ("state_n", "dstate0"):
        for k, (a, b) in enumerate(zip(ours[key], ref[key], strict=True)):
            close(a, b, f"{key}[{k}]")
    assert list(ours["grads"]) == list(ref["grads"])
    for name, g in ours["grads"].items():
        close(g, ref["grads"][name], name)


def check_layer_parity(cfg, run):
    """``run(layer, x, state, lengths, dy, dstate)`` (the CUDA path) against
    the cell's oracle and against the NumPy path, on the case ``cfg``.

    ``run`` gets NumPy inputs and may move the layer; it returns the
    dictionary of ``run_layer``.
    """
    layer, x, state, lengths, dy, dstate = build_case(cfg)
    inputs = [x, dy, *_state_list(state), *_state_list(dstate)]
    before = [a.copy() for a in inputs]
    oracle = oracle_run(layer, x, state, lengths, dy, dstate)
    numpy_path = run_layer(layer, x, state, lengths, dy, dstate)
    ours = run(layer, x, state, lengths, dy, dstate)
    assert_results_close(ours, oracle, cfg["dtype"], "the oracle")
    assert_results_close(ours, numpy_path, cfg["dtype"], "the NumPy path")
    for a, b in zip(inputs, before):
        np.testing.assert_array_equal(a, b, err_msg="an input array was modified")


# ---------------------------------------------------------------------------
# Single step kernels against the array-API steps of rnnkern.cells.
# ---------------------------------------------------------------------------

# (B, H): one element, a few, more elements than the small grid has threads,
# and realistic sizes (4096 and 16384 elements), where one-ulp differences
# of cancelling values are certain to occur somewhere.
STEP_SHAPES = [(1, 1), (3, 5), (5, 37), (16, 64), (32, 128)]
# None: the backend's own configuration; else (grid, block), 64 threads striding.
STEP_LAUNCHES = [None, ((2,), (32,))]
# Seeds of the step inputs, beyond the one each shape has.
STEP_SEEDS = [0, 1, 2, 3]

# Error analysis of one step kernel against the array-API steps (same
# formulas, same dtype): every output is a short chain (at most ~10) of
# rounded operations and transcendental calls (CUDA: expf and tanhf within
# 2 ulp), with or without FMA contraction.  Each operation errs by at most
# ~2 ulp of the largest magnitude M it involves, and the chains' derivatives
# are bounded (sigmoid' <= 1/4, tanh' <= 1), so |ours - ref| <= k ulp(M) with
# k of a few ulps; M is bounded by the largest input (and output)
# magnitude, which is what the tolerance scales with.  Cancellation
# (c = f c_prev + i g near 0) makes the relative error unbounded, which is
# why the bound is absolute.  Measured in the emulation (FMA, expf/tanhf off
# by up to 2 ulp): at most 3 ulp(M) over these shapes and 9 seeds each, so 8
# leaves room for a GPU's other (equally bounded) rounding choices.
STEP_ULPS = 8


def step_tolerance(dtype, *magnitudes):
    """``assert_allclose`` keywords: ``STEP_ULPS`` ulps of the largest magnitude involved."""
    eps = float(np.finfo(dtype).eps)
    largest = max([1.0] + [float(np.max(np.abs(m))) for m in magnitudes
                           if np.asarray(m).dtype.kind == "f"])
    return dict(rtol=0.0, atol=STEP_ULPS * eps * largest)


def _step_inputs(cell, dtype, B, H, seed):
    """Random inputs of one step, the states and their gradients one per state name."""
    rng = np.random.default_rng(seed)
    GH = cell.num_gates * H

    def random(*shape):
        return rng.standard_normal(shape).astype(dtype)
    steps, t = 4, 2
    lengths = rng.integers(1, steps + 1, size=B).astype(np.int32)
    lengths[0] = steps              # row 0 always active, and with B > 1 ...
    lengths[-1] = 1 if B > 1 else steps   # ... the last row always inactive at t
    return dict(gx_t=random(B, GH), gh=random(B, GH), b_hh=random(GH),
                state_prev=[random(B, H) for _ in cell.state_names], dy_t=random(B, H),
                dstate=[random(B, H) for _ in cell.state_names], dh_recurrent=random(B, H),
                lengths=lengths, t=t)


def _reference_forward(cell, a):
    active = (a["t"] < a["lengths"])[:, None]
    state, saved = cell.forward_step(np_api, a["gx_t"], a["gh"], a["b_hh"], tuple(a["state_prev"]))
    return {"state_next": [np.where(active, s, p) for s, p in zip(state, a["state_prev"])],
            "y_t": np.where(active, state[0], 0),
            "saved_t": [np.where(active, s, 0) for s in saved]}


def _reference_backward(cell, a, saved):
    active = (a["t"] < a["lengths"])[:, None]
    # the gradients carried to the step: dh_t = dh_direct + dh_recurrent
    carried = [a["dstate"][0] + a["dh_recurrent"], *a["dstate"][1:]]
    into = (carried[0] + a["dy_t"], *carried[1:])
    dgx, dgh, direct = cell.backward_step(np_api, into, tuple(saved), tuple(a["state_prev"]))
    dgates = {"dgx": dgx, "dgh": dgh}
    return {"dgates_t": [np.where(active, dgates[name], 0) for name in cell.step_gradients],
            "dstate_prev": [np.where(active, d, c) for d, c in zip(direct, carried)]}


def _launch_step(launcher, cell, step, arguments, inputs, outputs, launch, B, H, t, index):
    """Launch one step kernel; return its outputs as NumPy arrays.

    ``inputs`` and ``outputs`` map the keyword arguments of ``arguments``
    (``forward_step_arguments`` / ``backward_step_arguments``) to NumPy
    arrays (or lists of them); outputs are allocated by the launcher.
    """
    xp = launcher.xp

    def device(a):
        if isinstance(a, list):
            return [device(b) for b in a]
        return xp.ascontiguousarray(xp.asarray(a))

    def empty(shape):      # NaN: an element the kernel never writes cannot pass
        if isinstance(shape, list):
            return [empty(s) for s in shape]
        return xp.full(shape, np.nan, dtype=dtype)
    dtype = inputs["gx_t" if "gx_t" in inputs else "dy_t"].dtype
    results = {name: empty(shape) for name, shape in outputs.items()}
    grid, block = launch or elementwise_launch(B * H)
    args = arguments(**results, **{name: device(a) for name, a in inputs.items()}, t=t, batch=B,
                     hidden=H)
    launcher.launch(kernel_name(cell, step, dtype, index), grid, block, args)
    return {name: [to_numpy(r) for r in a] if isinstance(a, list) else to_numpy(a)
            for name, a in results.items()}


def _flat(values):
    return [v for value in values for v in (value if isinstance(value, list) else [value])]


def _assert_step_close(ours, ref, dtype, step, inputs):
    assert set(ours) == set(ref)
    tolerance = step_tolerance(dtype, *_flat(inputs.values()), *_flat(ref.values()))
    for key, expected in ref.items():
        got = ours[key]
        pairs = zip(got, expected, strict=True) if isinstance(expected, list) else [(got, expected)]
        for k, (a, b) in enumerate(pairs):
            np.testing.assert_allclose(a, b, **tolerance, err_msg=f"{step} {key}[{k}]")


def check_step_kernels(launcher, cell, dtype, B, H, launch, seed=None, index="int"):
    """Forward then backward step kernel of a cell against ``rnnkern.cells``.

    ``seed`` (default: one per shape) draws the inputs; ``index`` picks the
    kernels' index type (``"int"`` or ``"long long"``).
    """
    a = _step_inputs(cell, dtype, B, H, seed=B * 1000 + H if seed is None else seed)
    forward_inputs = {name: a[name] for name in ("gx_t", "gh", "b_hh", "state_prev", "lengths")}
    GH = cell.num_gates * H
    states = [(B, H) for _ in cell.state_names]
    ours = _launch_step(
        launcher, cell, "forward", forward_step_arguments, forward_inputs,
        {"state_next": states, "y_t": (B, H),
         "saved_t": [(B, s.width * H) for s in cell.saved]},
        launch, B, H, a["t"], index)
    ref = _reference_forward(cell, a)
    _assert_step_close(ours, ref, dtype, "forward", forward_inputs)

    backward_inputs = {"saved_t": ref["saved_t"],
                       **{name: a[name] for name in ("dy_t", "dh_recurrent", "dstate",
                                                     "state_prev", "lengths")}}
    ours = _launch_step(
        launcher, cell, "backward", backward_step_arguments, backward_inputs,
        {"dgates_t": [(B, GH) for _ in cell.step_gradients], "dstate_prev": states},
        launch, B, H, a["t"], index)
    _assert_step_close(ours, _reference_backward(cell, a, ref["saved_t"]), dtype, "backward",
                       backward_inputs)
