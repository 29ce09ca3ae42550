"""Parity of the NumPy (Numba) path with torch.nn.RNN/LSTM/GRU.

Outputs, final states and every gradient (input, initial states, each
parameter) over random configurations drawn by hypothesis.
"""

import numpy as np
import pytest
from hypothesis import given, strategies as st

import rnnkern as rk
from conftest import TOLERANCE
from torch_oracle import torch_run

CELLS = [("LSTM", {}), ("GRU", {}), ("RNN", {"nonlinearity": "tanh"}),
         ("RNN", {"nonlinearity": "relu"})]


@st.composite
def configurations(draw):
    name, extra = draw(st.sampled_from(CELLS))
    cfg = dict(
        name=name, extra=extra,
        T=draw(st.integers(1, 7)), B=draw(st.integers(1, 5)),
        I=draw(st.integers(1, 9)), H=draw(st.integers(1, 11)),
        num_layers=draw(st.integers(1, 3)), bidirectional=draw(st.booleans()),
        batch_first=draw(st.booleans()), bias=draw(st.booleans()),
        dtype=draw(st.sampled_from(["float64", "float32"])),
        with_state=draw(st.booleans()), with_lengths=draw(st.booleans()),
        with_dstate=draw(st.booleans()), seed=draw(st.integers(0, 2**16)))
    if cfg["with_lengths"]:
        cfg["lengths"] = draw(st.lists(st.integers(1, cfg["T"]), min_size=cfg["B"], max_size=cfg["B"]))
    return cfg


def make_case(cfg):
    """The layer and random inputs, state and output gradients of a configuration."""
    rng = np.random.default_rng(cfg["seed"])
    layer = getattr(rk, cfg["name"])(
        cfg["I"], cfg["H"], cfg["num_layers"], bias=cfg["bias"], batch_first=cfg["batch_first"],
        bidirectional=cfg["bidirectional"], dtype=cfg["dtype"], seed=cfg["seed"], **cfg["extra"])
    T, B, dt = cfg["T"], cfg["B"], cfg["dtype"]
    D = 2 if cfg["bidirectional"] else 1
    x = rng.standard_normal((B, T, cfg["I"]) if cfg["batch_first"] else (T, B, cfg["I"])).astype(dt)
    state_shape = (cfg["num_layers"] * D, B, cfg["H"])
    lstm = cfg["name"] == "LSTM"

    def state():
        return (rng.standard_normal(state_shape).astype(dt) if not lstm else
                (rng.standard_normal(state_shape).astype(dt), rng.standard_normal(state_shape).astype(dt)))
    h0 = state() if cfg["with_state"] else None
    dstate = state() if cfg["with_dstate"] else None
    dy = rng.standard_normal(x.shape[:2] + (D * cfg["H"],)).astype(dt)
    return layer, x, h0, dy, dstate


def check_against_torch(cfg):
    layer, x, state, dy, dstate = make_case(cfg)
    x_before = x.copy()
    lengths = cfg.get("lengths")
    y, st_out, tape = layer.forward(x, state, lengths=lengths)
    dx, dstate0, grads = layer.backward(dy, tape, dstate)
    ref = torch_run(layer, x, state, lengths, dy, dstate)
    tol = TOLERANCE[cfg["dtype"]]
    lstm = cfg["name"] == "LSTM"
    np.testing.assert_allclose(y, ref["y"], **tol, err_msg="y")
    np.testing.assert_allclose(st_out[0] if lstm else st_out, ref["h_n"], **tol, err_msg="h_n")
    if lstm:
        np.testing.assert_allclose(st_out[1], ref["c_n"], **tol, err_msg="c_n")
    np.testing.assert_allclose(dx, ref["dx"], **tol, err_msg="dx")
    assert list(grads) == list(ref["grads"])         # names and order of state_dict
    for name, g in grads.items():
        np.testing.assert_allclose(g, ref["grads"][name], **tol, err_msg=name)
    if state is not None:
        ours = list(dstate0) if lstm else [dstate0]
        for k, (a, b) in enumerate(zip(ours, ref["dstate0"])):
            np.testing.assert_allclose(a, b, **tol, err_msg=f"dstate0[{k}]")
    np.testing.assert_array_equal(x, x_before)        # the user's array is untouched


@given(configurations())
def test_matches_torch(cfg):
    check_against_torch(cfg)


@pytest.mark.parametrize("name,extra", CELLS, ids=["lstm", "gru", "rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_matches_torch_everything_on(name, extra, dtype):
    """One full case per cell and dtype: 3 layers, bidirectional, lengths, states."""
    cfg = dict(name=name, extra=extra, T=9, B=4, I=7, H=13, num_layers=3, bidirectional=True,
               batch_first=True, bias=True, dtype=dtype, with_state=True, with_dstate=True,
               seed=7, lengths=[9, 1, 4, 9])
    check_against_torch(cfg)


@pytest.mark.parametrize("name,extra", CELLS, ids=["lstm", "gru", "rnn_tanh", "rnn_relu"])
def test_unbatched_input_matches_torch(name, extra, rng):
    layer = getattr(rk, name)(3, 5, 2, bidirectional=True, dtype="float64", seed=3, **extra)
    x = rng.standard_normal((6, 3))
    y, st_out, tape = layer.forward(x)
    ref = torch_run(layer, x, dy=np.ones((6, 10)))
    np.testing.assert_allclose(y, ref["y"], **TOLERANCE["float64"])
    assert (st_out[0] if name == "LSTM" else st_out).shape == (4, 5)
    dx, _, grads = layer.backward(np.ones_like(y), tape)
    assert dx.shape == x.shape
    np.testing.assert_allclose(dx, ref["dx"], **TOLERANCE["float64"])
    for k in grads:
        np.testing.assert_allclose(grads[k], ref["grads"][k], **TOLERANCE["float64"])


def test_call_returns_output_and_state_like_torch(rng):
    lstm = rk.LSTM(4, 6, seed=0, dtype="float64")
    x = rng.standard_normal((5, 2, 4))
    y, (h, c) = lstm(x)
    ref = torch_run(lstm, x)
    np.testing.assert_allclose(h, ref["h_n"], **TOLERANCE["float64"])
    np.testing.assert_allclose(c, ref["c_n"], **TOLERANCE["float64"])


@pytest.fixture(params=["numpy", "mkl", "scipy"])
def blas(request):
    """Run a test on each CPU BLAS the Numba kernels can call."""
    from rnnkern.backends import cpu_blas
    before = cpu_blas.blas_name()
    try:
        cpu_blas.use_blas(request.param)
    except RuntimeError:
        pytest.skip("MKL (libmkl_rt) is not installed")
    yield request.param
    cpu_blas.use_blas(before)


@pytest.mark.parametrize("name,extra", CELLS, ids=["lstm", "gru", "rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_matches_torch_on_each_blas(blas, name, extra, dtype):
    cfg = dict(name=name, extra=extra, T=6, B=5, I=7, H=11, num_layers=2, bidirectional=True,
               batch_first=False, bias=True, dtype=dtype, with_state=True, with_dstate=True,
               seed=11, lengths=[6, 2, 5, 1, 6])
    check_against_torch(cfg)


@pytest.mark.parametrize("dtype", ["float32", "float64", np.float32, np.dtype("float64")])
def test_gemm_on_each_blas_matches_numpy(blas, dtype, rng):
    """The CBLAS call by address: every layout the backend uses, any dtype spelling."""
    from rnnkern.backends.cpu_blas import gemm_function
    from rnnkern.kernels.numba_rnn import gemm
    a = rng.standard_normal((37, 5)).astype(dtype)
    b = rng.standard_normal((5, 300)).astype(dtype)
    for left, right in [(a, b), (np.ascontiguousarray(a.T).T, b), (a, np.ascontiguousarray(b.T).T)]:
        out = np.empty((37, 300), dtype)
        gemm(gemm_function(dtype), left, right, out)
        np.testing.assert_allclose(out, left @ right, rtol=1e-5 if np.dtype(dtype) == np.float32 else 1e-12)
