"""Single-step cells (``RNNCell``, ``LSTMCell``, ``GRUCell``) against torch.nn and the layers.

Every test runs once per registry cell: the public class of a cell is
``<Cell.layer>Cell`` with the entry's ``layer_options``, its torch twin
``torch.nn.<Cell.layer>Cell``.  The loss behind every gradient is
``sum over states of sum(s' * ds)``, what ``cell.backward(ds, tape)`` returns
the gradients of.
"""

import copy
import itertools
import os
import pickle
import shlex
import shutil

import array_api_strict as xps
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from conftest import ALL_CELLS, CELL_IDS, assert_close, make_layer
from rnnkern import single_step
from rnnkern.backends.cuda.emulation import emulated_backend
from rnnkern.devices import cuda_device_count
from rnnkern.tape import Tape

DTYPES = ["float32", "float64"]


# ---------------------------------------------------------------------- helpers

def make_cell(cell, *args, **kwargs):
    """The public single-step class computing registry entry ``cell``."""
    return getattr(single_step, cell.layer + "Cell")(*args, **cell.layer_options, **kwargs)


def as_list(cell_obj, state):
    return list(state) if cell_obj.cell.num_states > 1 else [state]


def as_state(cell_obj, states):
    return tuple(states) if cell_obj.cell.num_states > 1 else states[0]


def random_inputs(rng, cell_obj, batch, dtype, with_state=True):
    """x, the state (or None) and the state gradient for one step; ``batch=None``: unbatched."""
    lead = () if batch is None else (batch,)
    x = rng.standard_normal(lead + (cell_obj.input_size,)).astype(dtype)
    make = lambda: rng.standard_normal(lead + (cell_obj.hidden_size,)).astype(dtype)  # noqa: E731
    n = cell_obj.cell.num_states
    state = as_state(cell_obj, [make() for _ in range(n)]) if with_state else None
    return x, state, as_state(cell_obj, [make() for _ in range(n)])


def torch_step(cell_obj, x, state, dstate):
    """torch.nn.<Layer>Cell on the same weights: the new state and every gradient."""
    module = getattr(torch.nn, cell_obj.cell.layer + "Cell")(
        cell_obj.input_size, cell_obj.hidden_size, bias=cell_obj.bias,
        dtype=getattr(torch, cell_obj.dtype), **cell_obj.cell.layer_options)
    module.load_state_dict({k: torch.from_numpy(v) for k, v in cell_obj.state_dict().items()})
    xt = torch.tensor(x, requires_grad=True)
    states = None if state is None else [torch.tensor(s, requires_grad=True)
                                         for s in as_list(cell_obj, state)]
    out = module(xt, None if states is None else as_state(cell_obj, states))
    out = list(out) if isinstance(out, tuple) else [out]
    loss = sum((s * torch.from_numpy(d)).sum() for s, d in zip(out, as_list(cell_obj, dstate)))
    loss.backward()
    return {"state": [s.detach().numpy() for s in out], "dx": xt.grad.numpy(),
            "dstate": None if states is None else [s.grad.numpy() for s in states],
            "grads": {k: p.grad.numpy() for k, p in module.named_parameters()}}


def check_against_torch(cell_obj, x, state, dstate):
    dtype = cell_obj.dtype
    new_state, tape = cell_obj.forward(x, state)
    dx, dstate0, grads = cell_obj.backward(dstate, tape)
    want = torch_step(cell_obj, x, state, dstate)
    for k, (got, expected) in enumerate(zip(as_list(cell_obj, new_state), want["state"],
                                            strict=True)):
        assert got.shape == expected.shape
        assert_close(got, expected, dtype, f"state[{k}]")
    assert dx.shape == x.shape
    assert_close(dx, want["dx"], dtype, "dx", summed=True)
    if want["dstate"] is not None:
        for k, (got, expected) in enumerate(zip(as_list(cell_obj, dstate0), want["dstate"],
                                                strict=True)):
            assert got.shape == expected.shape
            assert_close(got, expected, dtype, f"dstate[{k}]", summed=True)
    assert list(grads) == list(want["grads"])
    for name, grad in grads.items():
        assert_close(grad, want["grads"][name], dtype, name, summed=True)


def skip_without_torch_oracle(cell):
    if not cell.torch_oracle:
        pytest.skip(f"torch.nn does not compute the {cell.name} cell")


# ---------------------------------------------------------------------- parity with torch

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [3, None], ids=["batched", "unbatched"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("with_state", [True, False], ids=["state", "zero_state"])
def test_matches_torch(cell, dtype, batch, bias, with_state, rng):
    skip_without_torch_oracle(cell)
    cell_obj = make_cell(cell, 5, 4, bias, dtype=dtype, seed=3)
    check_against_torch(cell_obj, *random_inputs(rng, cell_obj, batch, dtype, with_state))


@pytest.mark.parametrize("cell", ALL_CELLS, ids=CELL_IDS)
@given(input_size=st.integers(1, 9), hidden_size=st.integers(1, 9),
       batch=st.one_of(st.none(), st.integers(1, 6)), dtype=st.sampled_from(DTYPES),
       seed=st.integers(0, 2**16))
def test_matches_torch_any_size(cell, input_size, hidden_size, batch, dtype, seed):
    skip_without_torch_oracle(cell)
    cell_obj = make_cell(cell, input_size, hidden_size, dtype=dtype, seed=seed)
    check_against_torch(cell_obj, *random_inputs(np.random.default_rng(seed), cell_obj, batch,
                                                 dtype))


def test_call_is_forward_without_tape(cell, rng):
    cell_obj = make_cell(cell, 3, 4, seed=0)
    x, state, _ = random_inputs(rng, cell_obj, 2, "float32")
    called = cell_obj(x, state)
    stepped, tape = cell_obj.forward(x, state)
    assert isinstance(tape, Tape)
    for a, b in zip(as_list(cell_obj, called), as_list(cell_obj, stepped), strict=True):
        np.testing.assert_array_equal(a, b)


def test_parameters_as_torch(cell):
    skip_without_torch_oracle(cell)
    hidden = 6
    cell_obj = make_cell(cell, 3, hidden, seed=7)
    module = getattr(torch.nn, cell.layer + "Cell")(3, hidden, **cell.layer_options)
    expected = {k: tuple(p.shape) for k, p in module.state_dict().items()}
    assert {k: p.shape for k, p in cell_obj.state_dict().items()} == expected
    bound = 1 / np.sqrt(hidden)
    for name, p in cell_obj.state_dict().items():
        assert p.dtype == np.float32 and np.all(np.abs(p) <= bound), name
    again = make_cell(cell, 3, hidden, seed=7).state_dict()
    for name, p in cell_obj.state_dict().items():
        np.testing.assert_array_equal(p, again[name])
    assert set(make_cell(cell, 3, hidden, bias=False).state_dict()) == {"weight_ih", "weight_hh"}


# ------------------------------------------------------------ a loop of steps is the layer

def layer_and_cell(cell, input_size, hidden_size, dtype, seed):
    """A one-layer layer and the single-step cell carrying its weights."""
    layer = make_layer(cell, input_size, hidden_size, dtype=dtype, seed=seed)
    cell_obj = make_cell(cell, input_size, hidden_size, dtype=dtype, seed=seed + 1)
    cell_obj.load_state_dict({name.removesuffix("_l0"): p
                              for name, p in layer.state_dict().items()})
    return layer, cell_obj


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [4, None], ids=["batched", "unbatched"])
def test_loop_of_steps_is_the_layer(cell, dtype, batch, rng):
    T, I, H = 6, 3, 5
    layer, cell_obj = layer_and_cell(cell, I, H, dtype, seed=11)
    lead = () if batch is None else (batch,)
    x = rng.standard_normal((T,) + lead + (I,)).astype(dtype)
    states0 = [rng.standard_normal(lead + (H,)).astype(dtype) for _ in cell.state_names]
    dy = rng.standard_normal((T,) + lead + (H,)).astype(dtype)
    dstates_n = [rng.standard_normal(lead + (H,)).astype(dtype) for _ in cell.state_names]

    y, state_n, tape = layer.forward(x, as_state(cell_obj, [s[None] for s in states0]))
    dx, dstate0, grads = layer.backward(dy, tape, as_state(cell_obj, [d[None] for d in dstates_n]))

    state, tapes, ys = as_state(cell_obj, states0), [], []
    for t in range(T):
        state, step_tape = cell_obj.forward(x[t], state)
        tapes.append(step_tape)
        ys.append(as_list(cell_obj, state)[0])
    assert_close(np.stack(ys), y, dtype, "y")
    for k, s in enumerate(as_list(cell_obj, state)):
        assert_close(s, as_list(cell_obj, state_n)[k][0], dtype, f"state_n[{k}]")

    carry, dxs, total = list(dstates_n), [None] * T, {}
    for t in reversed(range(T)):
        carry[0] = carry[0] + dy[t]                  # h_t is both y_t and the next step's state
        dxs[t], dstate, step_grads = cell_obj.backward(as_state(cell_obj, carry), tapes[t])
        carry = as_list(cell_obj, dstate)
        for name, g in step_grads.items():
            total[name] = total[name] + g if name in total else g
    assert_close(np.stack(dxs), dx, dtype, "dx", summed=True)
    for k, d in enumerate(carry):
        assert_close(d, as_list(cell_obj, dstate0)[k][0], dtype, f"dstate0[{k}]",
                     summed=True)
    assert sorted(f"{name}_l0" for name in total) == sorted(grads)
    for name, g in total.items():
        assert_close(g, grads[f"{name}_l0"], dtype, name, summed=True)


# ---------------------------------------------------------------------- other array libraries

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [3, None], ids=["batched", "unbatched"])
def test_generic_backend_matches_numba(cell, dtype, batch, rng):
    cell_obj = make_cell(cell, 4, 3, dtype=dtype, seed=5)
    x, state, dstate = random_inputs(rng, cell_obj, batch, dtype)
    new_state, tape = cell_obj.forward(x, state)
    dx, dstate0, grads = cell_obj.backward(dstate, tape)

    def strict(s):
        return as_state(cell_obj, [xps.asarray(a) for a in as_list(cell_obj, s)])

    new_state_s, tape_s = cell_obj.forward(xps.asarray(x), strict(state))
    assert type(as_list(cell_obj, new_state_s)[0]).__module__.startswith("array_api_strict")
    dx_s, dstate0_s, grads_s = cell_obj.backward(strict(dstate), tape_s)
    for got, want in zip(as_list(cell_obj, new_state_s) + as_list(cell_obj, dstate0_s) + [dx_s],
                         as_list(cell_obj, new_state) + as_list(cell_obj, dstate0) + [dx],
                         strict=True):
        assert_close(got, want, dtype, "state, dstate0 or dx")
    for name in grads:
        assert_close(grads_s[name], grads[name], dtype, name, summed=True)
    # No state given: zeros of the input's library; no gradient given: zeros too.
    zero_state, tape_z = cell_obj.forward(xps.asarray(x))
    assert type(as_list(cell_obj, zero_state)[0]).__module__.startswith("array_api_strict")
    dx_z, _, _ = cell_obj.backward(None, tape_z)
    assert not np.any(np.asarray(dx_z))


def run_cell(cell_obj, x, state, dstate, move=lambda a: a):
    """forward and backward on arrays moved by ``move``; every result as NumPy arrays."""
    host = lambda a: a.get() if hasattr(a, "get") else np.asarray(a)    # noqa: E731
    moved = lambda s: as_state(cell_obj, [move(a) for a in as_list(cell_obj, s)])  # noqa: E731
    new_state, tape = cell_obj.forward(move(x), moved(state))
    dx, dstate0, grads = cell_obj.backward(moved(dstate), tape)
    return {"state": [host(a) for a in as_list(cell_obj, new_state)], "dx": host(dx),
            "dstate0": [host(a) for a in as_list(cell_obj, dstate0)],
            "grads": {k: host(g) for k, g in grads.items()}}


def assert_same_results(ours, expected, dtype):
    for key in ("state", "dstate0"):
        for k, (a, b) in enumerate(zip(ours[key], expected[key], strict=True)):
            assert_close(a, b, dtype, f"{key}[{k}]", summed=key == "dstate0")
    assert_close(ours["dx"], expected["dx"], dtype, "dx", summed=True)
    assert list(ours["grads"]) == list(expected["grads"])
    for name, g in ours["grads"].items():
        assert_close(g, expected["grads"][name], dtype, name, summed=True)


@pytest.mark.skipif(shutil.which(shlex.split(os.environ.get("CXX", "g++"))[0]) is None,
                    reason="the CUDA host emulation needs a C++ compiler (g++, or set $CXX)")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [3, None], ids=["batched", "unbatched"])
def test_emulated_cuda_backend_matches_numba(cell, dtype, batch, rng, monkeypatch):
    """The CUDA backend's kernels and orchestration (host emulation) at T = 1."""
    cell_obj = make_cell(cell, 4, 5, dtype=dtype, seed=8)
    inputs = random_inputs(rng, cell_obj, batch, dtype)
    expected = run_cell(cell_obj, *inputs)
    backend = emulated_backend()
    monkeypatch.setattr(single_step, "backend_for", lambda xp: backend)
    assert_same_results(run_cell(cell_obj, *inputs), expected, dtype)


@pytest.mark.gpu
@pytest.mark.skipif(cuda_device_count() == 0, reason="needs CuPy and a CUDA GPU")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [3, None], ids=["batched", "unbatched"])
def test_cupy_matches_numba(cell, dtype, batch, rng):
    import cupy

    cell_obj = make_cell(cell, 4, 5, dtype=dtype, seed=8)
    inputs = random_inputs(rng, cell_obj, batch, dtype)
    expected = run_cell(cell_obj, *inputs)
    cell_obj.to("cuda")
    ours = run_cell(cell_obj, *inputs, move=cupy.asarray)
    assert cell_obj.state_dict()["weight_ih"].__class__ is cupy.ndarray
    assert_same_results(ours, expected, dtype)


# ---------------------------------------------------------------------- nothing is modified

def test_repeated_steps_are_forward_direction(cell, rng):
    """Calls and forwards run the backends' ``step`` (the Numba backend prepares what steps
    of one kind share, per thread): interleaved kinds (batch, hidden size, dtype,
    unbatched, tape or not) and a forced path each give what ``forward_direction`` gives
    for one step (to rounding: BLAS kernels may sum in another order for buffers of
    another alignment), and leave the user's arrays as they were."""
    import rnnkern.backends.numba as numba_backend
    from rnnkern.backends.numba import planner

    cells = {(H, dtype): make_cell(cell, 3, H, dtype=dtype, seed=H)
             for H in (4, 7) for dtype in DTYPES}
    for round_ in range(3):
        for (H, dtype), cell_obj in cells.items():
            params = cell_obj.state_dict()
            for batch in (1, 5, None):
                x, state, _ = random_inputs(rng, cell_obj, batch, dtype)
                given = [a.copy() for a in [x, *as_list(cell_obj, state)]]
                rows = lambda a: a.reshape(-1, a.shape[-1])               # noqa: E731
                _, expected, _ = numba_backend.forward_direction(
                    cell, rows(x)[None], params, tuple(rows(s) for s in as_list(cell_obj, state)),
                    None, False, keep=False)
                path = planner.use_path("split") if round_ == 2 else planner.use_path("auto")
                with path:
                    called = cell_obj(x, state)
                    stepped, _ = cell_obj.forward(x, state)
                for ours in (called, stepped):
                    for a, b in zip(as_list(cell_obj, ours), expected, strict=True):
                        assert_close(rows(a), b, dtype, f"H={H} {dtype} B={batch}")
                for a, b in zip([x, *as_list(cell_obj, state)], given, strict=True):
                    np.testing.assert_array_equal(a, b)


def test_steps_with_big_scratch_are_not_kept(cell, rng, monkeypatch):
    """A kind of step whose scratch is over the workspace limit runs forward_direction
    and keeps nothing prepared (a thread of its own: prepared steps are per thread)."""
    import threading

    import rnnkern.backends.numba as numba_backend

    monkeypatch.setattr(numba_backend, "WORKSPACE_LIMIT_BYTES", 0)
    cell_obj = make_cell(cell, 3, 4, dtype="float64", seed=1)
    x, state, _ = random_inputs(rng, cell_obj, 2, "float64")
    expected = as_list(cell_obj, cell_obj.forward(x, state)[0])
    results = {}

    def run():
        results["called"] = as_list(cell_obj, cell_obj(x, state))
        results["kept"] = list(numba_backend._WORKSPACES.steps.values())

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert results["kept"] == [numba_backend._NOT_PREPARED]
    for a, b in zip(results["called"], expected, strict=True):
        assert_close(a, b, "float64", "state")


def test_cells_pickle_and_copy_after_calls(cell, rng):
    """A cell remembers the checks of its calls (with the array namespaces, which do not
    pickle): pickles and copies start with none and still check."""
    cell_obj = make_cell(cell, 3, 4, seed=0)
    x, state, _ = random_inputs(rng, cell_obj, 2, "float32")
    expected = cell_obj(x, state)
    for clone in (pickle.loads(pickle.dumps(cell_obj)), copy.deepcopy(cell_obj),
                  copy.copy(cell_obj)):
        for a, b in zip(as_list(clone, clone(x, state)), as_list(cell_obj, expected),
                        strict=True):
            np.testing.assert_array_equal(a, b)
        with pytest.raises(ValueError, match=r"x: expected shape \(\*, 3\)"):
            clone(np.zeros((2, 5), np.float32), state)


def test_inputs_and_parameters_are_not_modified(cell, rng):
    cell_obj = make_cell(cell, 3, 4, dtype="float64", seed=2)
    x, state, dstate = random_inputs(rng, cell_obj, 2, "float64")
    params = cell_obj.state_dict()
    copies = [a.copy() for a in [x, *as_list(cell_obj, state), *as_list(cell_obj, dstate)]]
    new_state, tape = cell_obj.forward(x, state)
    before = [s.copy() for s in as_list(cell_obj, new_state)]
    dx, _, _ = cell_obj.backward(dstate, tape)
    for a, b in zip([x, *as_list(cell_obj, state), *as_list(cell_obj, dstate)], copies,
                    strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(as_list(cell_obj, new_state), before, strict=True):
        np.testing.assert_array_equal(a, b)
    for name, p in cell_obj.state_dict().items():
        np.testing.assert_array_equal(p, params[name])
    # Every gradient is an array of its own (bias_ih and bias_hh are equal for some cells):
    # a caller clipping one in place leaves the others alone.
    _, _, grads = cell_obj.backward(dstate, tape)
    for a, b in itertools.combinations(grads.values(), 2):
        assert not np.shares_memory(a, b)
    # An optimizer updating the parameters in place between forward and backward
    # does not change the gradients of the step that ran.
    for p in cell_obj.parameters().values():
        p += 1.0
    dx_after, _, _ = cell_obj.backward(dstate, tape)
    np.testing.assert_array_equal(dx_after, dx)


# ---------------------------------------------------------------------- bad input

def test_bad_constructor_arguments(cell):
    for kwargs, error, match in [
        (dict(input_size=0), ValueError, "input_size"),
        (dict(hidden_size=2.5), TypeError, "hidden_size"),
        (dict(bias="yes"), TypeError, "bias"),
        (dict(dtype="int32"), TypeError, "dtype"),
        (dict(device="tpu"), ValueError, "device"),
        (dict(seed="abc"), TypeError, "seed"),
    ]:
        args = {"input_size": 3, "hidden_size": 4, **kwargs}
        with pytest.raises(error, match=match):
            make_cell(cell, **args)


def test_bad_nonlinearity():
    with pytest.raises(ValueError, match=r"nonlinearity: expected one of \['relu', 'tanh'\], "
                                         r"got 'sigmoid'"):
        single_step.RNNCell(3, 4, nonlinearity="sigmoid")
    with pytest.raises(TypeError, match="nonlinearity"):
        single_step.LSTMCell(3, 4, nonlinearity="tanh")


def test_bad_inputs(cell):
    cell_obj = make_cell(cell, 3, 4, seed=0)
    H, f32 = 4, np.float32
    x = np.zeros((2, 3), f32)
    states = lambda *shape, dtype=f32: as_state(                      # noqa: E731
        cell_obj, [np.zeros(shape, dtype) for _ in cell.state_names])
    state_name = "state" if cell.num_states == 1 else "state h"
    cell_obj(x)                             # good calls first: their checks are remembered
    cell_obj(x, states(2, H))
    cell_obj(np.zeros(3, f32), states(H))
    for args, error, match in [
        ((np.zeros((1, 2, 3), f32),), ValueError, r"x: expected a \(1, 2\)-D array"),
        ((np.zeros((2, 5), f32),), ValueError, r"x: expected shape \(\*, 3\)"),
        ((np.zeros((2, 3), np.float64),), TypeError, "x: expected dtype float32"),
        ((np.zeros((0, 3), f32),), ValueError, "x: expected no empty axis"),
        (([[0.0] * 3] * 2,), TypeError, "x: expected an array"),
        ((x, states(3, H)), ValueError, rf"{state_name}: expected shape \(2, 4\)"),
        ((x, states(2, 5)), ValueError, rf"{state_name}: expected shape \(2, 4\)"),
        ((x, states(1, 2, H)), ValueError, rf"{state_name}: expected a 2-D array"),
        ((x, states(2, H, dtype=np.float64)), TypeError, f"{state_name}: expected dtype"),
        ((np.zeros(3, f32), states(1, H)), ValueError, rf"{state_name}: expected a 1-D"),
        ((x, xps.asarray(np.zeros((2, H), f32))), TypeError, "one array library"),
    ]:
        if cell.num_states > 1 and args[1:] and not isinstance(args[1], tuple):
            error, match = TypeError, "state: expected a pair"
        with pytest.raises(error, match=match):
            cell_obj(*args)
    if cell.num_states > 1:
        with pytest.raises(ValueError, match="state: give both h and c, or neither"):
            cell_obj(x, (np.zeros((2, H), f32), None))
    else:
        with pytest.raises(TypeError, match="state: expected one array h"):
            cell_obj(x, (np.zeros((2, H), f32),))


def test_bad_gradients_and_tapes(cell, rng):
    cell_obj = make_cell(cell, 3, 4, seed=0)
    x, state, dstate = random_inputs(rng, cell_obj, 2, "float32")
    _, tape = cell_obj.forward(x, state)
    first = "dstate" if cell.num_states == 1 else "dstate h"
    wrong = lambda f: as_state(cell_obj, [f(d) for d in as_list(cell_obj, dstate)])  # noqa: E731
    good = cell_obj.backward(dstate, tape)      # good calls first: their checks are remembered
    zero = cell_obj.backward(None, tape)
    np.testing.assert_array_equal(zero[0], np.zeros_like(x))
    for bad, error, match in [
        (wrong(lambda d: d[:1]), ValueError, rf"{first}: expected shape \(2, 4\)"),
        (wrong(lambda d: d.astype(np.float64)), TypeError, f"{first}: expected dtype float32"),
        (wrong(lambda d: d[0]), ValueError, f"{first}: expected a 2-D array"),
        (wrong(xps.asarray), TypeError, f"{first}: expected an array of the library the tape"),
    ]:
        with pytest.raises(error, match=match):
            cell_obj.backward(bad, tape)
    with pytest.raises(TypeError, match="tape: expected the Tape"):
        cell_obj.backward(dstate, None)
    for a, b in zip(cell_obj.backward(dstate, tape)[2].values(), good[2].values(), strict=True):
        np.testing.assert_array_equal(a, b)     # the zero dy it keeps stayed zero
    other = make_cell(cell, 3, 4, seed=0)
    with pytest.raises(ValueError, match="tape: it was recorded by another layer"):
        other.backward(dstate, tape)
    layer = make_layer(cell, 3, 4, seed=0)
    with pytest.raises(ValueError, match="tape: it was recorded by another layer"):
        cell_obj.backward(dstate, layer.forward(x[None])[2])
    cell_obj.load_state_dict(cell_obj.state_dict())
    with pytest.raises(ValueError, match="tape: the parameters changed"):
        cell_obj.backward(dstate, tape)


def test_repr(cell):
    text = repr(make_cell(cell, 3, 4))
    assert text.startswith(f"{cell.layer}Cell(3, 4, bias=True")
    for key, value in cell.layer_options.items():
        assert f"{key}={value!r}" in text
