"""Parity checks of the CUDA path, shared by the host-emulated and the GPU tests.

One body per check, run on two launchers: the host emulation on NumPy arrays
(tests/test_cuda_emulation.py, every CI run) and CuPy on a real GPU
(tests/test_gpu.py).  References: torch (tests/torch_oracle.py), the NumPy
(Numba) path of the same layer, and for single kernels the array-API cell
steps of ``rnnkern.cells``.
"""

import itertools

import array_api_compat.numpy as np_api
import numpy as np
import pytest

import rnnkern as rk
from conftest import TOLERANCE
from rnnkern.backends.cupy_backend import _BACKWARD_PARAMETERS, _FORWARD_PARAMETERS
from rnnkern.cells import CELLS
from rnnkern.cuda_modules import elementwise_launch, kernel_name
from torch_oracle import torch_run

LAYERS = {"lstm": ("LSTM", {}), "gru": ("GRU", {}),
          "rnn_tanh": ("RNN", {"nonlinearity": "tanh"}),
          "rnn_relu": ("RNN", {"nonlinearity": "relu"})}

# (T, B, I, H): ordinary, the degenerate B = H = 1, and H above a warp that
# no block size divides.
_SHAPES = [(5, 3, 4, 5), (4, 1, 1, 1), (6, 4, 3, 37)]


def _layer_cases():
    """Every cell x dtype x num_layers x bidirectional x lengths x batch_first."""
    cases = []
    grid = itertools.product(LAYERS, ["float64", "float32"], [1, 2], [False, True],
                             [False, True], [False, True])
    for k, (cell, dtype, layers, bidirectional, lengths, batch_first) in enumerate(grid):
        T, B, I, H = _SHAPES[k % len(_SHAPES)]
        cfg = dict(cell=cell, dtype=dtype, num_layers=layers, bidirectional=bidirectional,
                   with_lengths=lengths, batch_first=batch_first, T=T, B=B, I=I, H=H,
                   bias=k % 4 != 3, seed=k)
        name = "-".join([cell, dtype, f"L{layers}", "bi" if bidirectional else "uni",
                         "lengths" if lengths else "full", "bf" if batch_first else "tf",
                         f"T{T}B{B}I{I}H{H}"] + ([] if cfg["bias"] else ["nobias"]))
        cases.append(pytest.param(cfg, id=name))
    return cases


LAYER_CASES = _layer_cases()


def build_case(cfg):
    """A NumPy layer and random x, initial state, lengths, dy and dstate."""
    rng = np.random.default_rng(cfg["seed"])
    name, extra = LAYERS[cfg["cell"]]
    layer = getattr(rk, name)(cfg["I"], cfg["H"], cfg["num_layers"], bias=cfg["bias"],
                              batch_first=cfg["batch_first"], bidirectional=cfg["bidirectional"],
                              dtype=cfg["dtype"], seed=cfg["seed"], **extra)
    T, B, D, dt = cfg["T"], cfg["B"], 2 if cfg["bidirectional"] else 1, cfg["dtype"]
    x = rng.standard_normal((B, T, cfg["I"]) if cfg["batch_first"] else (T, B, cfg["I"])).astype(dt)
    state_shape = (cfg["num_layers"] * D, B, cfg["H"])

    def state():
        if name == "LSTM":
            return tuple(rng.standard_normal(state_shape).astype(dt) for _ in range(2))
        return rng.standard_normal(state_shape).astype(dt)
    lengths = rng.integers(1, T + 1, size=B).tolist() if cfg["with_lengths"] else None
    dy = rng.standard_normal(x.shape[:2] + (D * cfg["H"],)).astype(dt)
    return layer, x, state(), lengths, dy, state()


def to_numpy(a):
    """A NumPy array from a NumPy or CuPy array."""
    return a.get() if hasattr(a, "get") else np.asarray(a)


def run_layer(layer, x, state, lengths, dy, dstate):
    """rnnkern forward and backward; every result as NumPy arrays."""
    y, state_n, tape = layer.forward(x, state, lengths=lengths)
    dx, dstate0, grads = layer.backward(dy, tape, dstate)
    pairs = isinstance(state_n, tuple)
    return {"y": to_numpy(y), "h_n": to_numpy(state_n[0] if pairs else state_n),
            "c_n": to_numpy(state_n[1]) if pairs else None, "dx": to_numpy(dx),
            "dstate0": [to_numpy(s) for s in (dstate0 if pairs else [dstate0])],
            "grads": {k: to_numpy(g) for k, g in grads.items()}}


def assert_results_close(ours, ref, dtype, against):
    tol = TOLERANCE[dtype]
    for key in ("y", "h_n", "c_n", "dx"):
        if ref[key] is not None:
            np.testing.assert_allclose(ours[key], ref[key], **tol, err_msg=f"{key} vs {against}")
    for k, (a, b) in enumerate(zip(ours["dstate0"], ref["dstate0"], strict=True)):
        np.testing.assert_allclose(a, b, **tol, err_msg=f"dstate0[{k}] vs {against}")
    assert list(ours["grads"]) == list(ref["grads"])
    for name, g in ours["grads"].items():
        np.testing.assert_allclose(g, ref["grads"][name], **tol, err_msg=f"{name} vs {against}")


def check_layer_parity(cfg, run):
    """``run(layer, x, state, lengths, dy, dstate)`` (the CUDA path) against
    torch and against the NumPy path, on the case ``cfg``.

    ``run`` gets NumPy inputs and may move the layer; it returns the
    dictionary of ``run_layer``.
    """
    layer, x, state, lengths, dy, dstate = build_case(cfg)
    inputs = [x, dy, *(state if isinstance(state, tuple) else [state]),
              *(dstate if isinstance(dstate, tuple) else [dstate])]
    before = [a.copy() for a in inputs]
    torch_ref = torch_run(layer, x, state, lengths, dy, dstate)
    numpy_path = run_layer(layer, x, state, lengths, dy, dstate)
    ours = run(layer, x, state, lengths, dy, dstate)
    assert_results_close(ours, torch_ref, cfg["dtype"], "torch")
    assert_results_close(ours, numpy_path, cfg["dtype"], "the NumPy path")
    for a, b in zip(inputs, before):
        np.testing.assert_array_equal(a, b, err_msg="an input array was modified")


# ---------------------------------------------------------------------------
# Single step kernels against the array-API steps of rnnkern.cells.
# ---------------------------------------------------------------------------

# (B, H): one element, a few, and more elements than the small grid has threads.
STEP_SHAPES = [(1, 1), (3, 5), (5, 37)]
# None: the backend's own configuration; else (grid, block), 64 threads striding.
STEP_LAUNCHES = [None, ((2,), (32,))]
STEP_TOLERANCE = {"float64": dict(rtol=1e-12, atol=1e-14), "float32": dict(rtol=2e-6, atol=1e-7)}


def _step_inputs(cell, dtype, B, H, seed):
    rng = np.random.default_rng(seed)
    GH = cell.num_gates * H

    def random(*shape):
        return rng.standard_normal(shape).astype(dtype)
    steps, t = 4, 2
    lengths = rng.integers(1, steps + 1, size=B).astype(np.int32)
    lengths[0] = steps              # row 0 always active, and with B > 1 ...
    lengths[-1] = 1 if B > 1 else steps   # ... the last row always inactive at t
    return dict(gx_t=random(B, GH), gh=random(B, GH), b_hh=random(GH), h_prev=random(B, H),
                c_prev=random(B, H), dy_t=random(B, H), dh_direct=random(B, H),
                dh_recurrent=random(B, H), dc=random(B, H), lengths=lengths, t=t)


def _reference_forward(cell, a):
    active = (a["t"] < a["lengths"])[:, None]
    c_prev = a["c_prev"] if cell.has_cell_state else None
    h, c, gates, gh_n = cell.forward_step(np_api, a["gx_t"], a["gh"], a["b_hh"], a["h_prev"],
                                          c_prev)
    ref = {"h_next": np.where(active, h, a["h_prev"]), "y_t": np.where(active, h, 0),
           "gates_t": gates}
    if cell.has_cell_state:
        ref["c_next"] = np.where(active, c, c_prev)
    if cell.keeps_gh_n:
        ref["gh_n_t"] = gh_n
    return ref


def _reference_backward(cell, a, forward):
    active = (a["t"] < a["lengths"])[:, None]
    carried = a["dh_direct"] + a["dh_recurrent"]
    dgx, dgh, dh_direct, dc_prev = cell.backward_step(
        np_api, carried + a["dy_t"], a["dc"] if cell.has_cell_state else None,
        forward["gates_t"], forward.get("gh_n_t"), a["h_prev"],
        a["c_prev"] if cell.has_cell_state else None)
    ref = {"dgx_t": np.where(active, dgx, 0), "dh_prev_direct": np.where(active, dh_direct, carried)}
    if cell.keeps_gh_n:
        ref["dgh_t"] = np.where(active, dgh, 0)
    if cell.has_cell_state:
        ref["dc_prev"] = np.where(active, dc_prev, a["dc"])
    return ref


def _launch_step(launcher, cell, step, parameters, arrays, launch, B, H, t):
    """Launch one step kernel; return its outputs (the keys not given) as NumPy."""
    xp = launcher.xp
    dtype = arrays["gates_t" if "gates_t" in arrays else "gx_t"].dtype
    GH = cell.num_gates * H
    shapes = {"h_next": (B, H), "c_next": (B, H), "y_t": (B, H), "gates_t": (B, GH),
              "gh_n_t": (B, H), "dgx_t": (B, GH), "dgh_t": (B, GH), "dh_prev_direct": (B, H),
              "dc_prev": (B, H)}
    outputs = {p: xp.empty(shapes[p], dtype=dtype) for p in parameters if p not in arrays}
    device = {p: xp.ascontiguousarray(xp.asarray(a)) for p, a in arrays.items()}
    grid, block = launch or elementwise_launch(B * H)
    args = [outputs[p] if p in outputs else device[p] for p in parameters]
    launcher.launch(kernel_name(cell.name, step, dtype), grid, block,
                    args + [np.int32(t), np.int32(B), np.int32(H)])
    return {p: to_numpy(a) for p, a in outputs.items()}


def check_step_kernels(launcher, cell_name, dtype, B, H, launch):
    """Forward then backward step kernel of a cell against ``rnnkern.cells``."""
    cell = CELLS[cell_name]
    a = _step_inputs(cell, dtype, B, H, seed=B * 1000 + H)
    forward_inputs = {p: a[p] for p in _FORWARD_PARAMETERS[cell_name] if p in a}
    ours = _launch_step(launcher, cell, "forward", _FORWARD_PARAMETERS[cell_name],
                        forward_inputs, launch, B, H, a["t"])
    ref = _reference_forward(cell, a)
    assert set(ours) == set(ref)
    for key in ref:
        np.testing.assert_allclose(ours[key], ref[key], **STEP_TOLERANCE[dtype],
                                   err_msg=f"forward {key}")

    saved = {"gates_t": ref["gates_t"], "gh_n_t": ref.get("gh_n_t")}
    backward_inputs = {p: saved[p] if p in saved else a[p]
                       for p in _BACKWARD_PARAMETERS[cell_name] if p in a or p in saved}
    ours = _launch_step(launcher, cell, "backward", _BACKWARD_PARAMETERS[cell_name],
                        backward_inputs, launch, B, H, a["t"])
    ref = _reference_backward(cell, a, ref)
    assert set(ours) == set(ref)
    for key in ref:
        np.testing.assert_allclose(ours[key], ref[key], **STEP_TOLERANCE[dtype],
                                   err_msg=f"backward {key}")
