"""Parity of the NumPy (Numba) path with the oracle of every registry cell.

Outputs, final states and every gradient (input, initial states, each
parameter) over random configurations drawn by hypothesis; the oracle is
torch.nn (``torch_oracle.oracle_run``).
"""

import numpy as np
import pytest
from hypothesis import given, strategies as st

import rnnkern as rk
from conftest import ALL_CELLS, TOLERANCE, assert_close, make_layer
from torch_oracle import oracle_run, torch_run


@st.composite
def configurations(draw, projected=False):
    """A random layer configuration; ``projected``: cells with a projection and a proj_size."""
    cells = [cell for cell in ALL_CELLS if cell.has_projection] if projected else ALL_CELLS
    cfg = dict(
        cell=draw(st.sampled_from(cells)),
        T=draw(st.integers(1, 7)), B=draw(st.integers(1, 5)),
        I=draw(st.integers(1, 9)), H=draw(st.integers(2 if projected else 1, 11)),
        num_layers=draw(st.integers(1, 3)), bidirectional=draw(st.booleans()),
        batch_first=draw(st.booleans()), bias=draw(st.booleans()),
        dtype=draw(st.sampled_from(["float64", "float32"])),
        with_state=draw(st.booleans()), with_lengths=draw(st.booleans()),
        with_dstate=draw(st.booleans()), seed=draw(st.integers(0, 2**16)))
    if cfg["with_lengths"]:
        cfg["lengths"] = draw(st.lists(st.integers(1, cfg["T"]), min_size=cfg["B"], max_size=cfg["B"]))
    if projected:
        cfg["proj_size"] = draw(st.integers(1, cfg["H"] - 1))
    return cfg


def make_case(cfg):
    """The layer and random inputs, state and output gradients of a configuration."""
    rng = np.random.default_rng(cfg["seed"])
    layer = make_layer(
        cfg["cell"], cfg["I"], cfg["H"], cfg["num_layers"], bias=cfg["bias"],
        batch_first=cfg["batch_first"], bidirectional=cfg["bidirectional"], dtype=cfg["dtype"],
        seed=cfg["seed"], **({"proj_size": cfg["proj_size"]} if cfg.get("proj_size") else {}))
    T, B, dt = cfg["T"], cfg["B"], cfg["dtype"]
    D = 2 if cfg["bidirectional"] else 1
    x = rng.standard_normal((B, T, cfg["I"]) if cfg["batch_first"] else (T, B, cfg["I"])).astype(dt)
    widths = cfg["cell"].state_shapes(cfg["H"], cfg.get("proj_size", 0))

    def state():
        states = tuple(rng.standard_normal((cfg["num_layers"] * D, B, w)).astype(dt)
                       for w in widths)
        return states if len(states) > 1 else states[0]
    h0 = state() if cfg["with_state"] else None
    dstate = state() if cfg["with_dstate"] else None
    dy = rng.standard_normal(x.shape[:2] + (layer.output_size,)).astype(dt)
    return layer, x, h0, dy, dstate


def check_against_torch(cfg):
    layer, x, state, dy, dstate = make_case(cfg)
    x_before = x.copy()
    lengths = cfg.get("lengths")
    y, st_out, tape = layer.forward(x, state, lengths=lengths)
    dx, dstate0, grads = layer.backward(dy, tape, dstate)
    ref = oracle_run(layer, x, state, lengths, dy, dstate)
    dtype = cfg["dtype"]
    multiple = cfg["cell"].num_states > 1
    assert_close(y, ref["y"], dtype, "y")
    for name, ours, theirs in zip(cfg["cell"].state_names, st_out if multiple else [st_out],
                                  ref["state_n"], strict=True):
        assert_close(ours, theirs, dtype, f"{name}_n")
    assert_close(dx, ref["dx"], dtype, "dx", summed=True)
    assert list(grads) == list(ref["grads"])         # names and order of state_dict
    for name, g in grads.items():
        assert_close(g, ref["grads"][name], dtype, name, summed=True)
    if state is not None:
        ours = list(dstate0) if multiple else [dstate0]
        for k, (a, b) in enumerate(zip(ours, ref["dstate0"], strict=True)):
            assert_close(a, b, dtype, f"dstate0[{k}]", summed=True)
    np.testing.assert_array_equal(x, x_before)        # the user's array is untouched


@given(configurations())
def test_matches_torch(cfg):
    check_against_torch(cfg)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_matches_torch_everything_on(cell, dtype):
    """One full case per cell and dtype: 3 layers, bidirectional, lengths, states."""
    cfg = dict(cell=cell, T=9, B=4, I=7, H=13, num_layers=3, bidirectional=True,
               batch_first=True, bias=True, dtype=dtype, with_state=True, with_dstate=True,
               seed=7, lengths=[9, 1, 4, 9])
    check_against_torch(cfg)


def test_unbatched_input_matches_torch(cell, rng):
    layer = make_layer(cell, 3, 5, 2, bidirectional=True, dtype="float64", seed=3)
    x = rng.standard_normal((6, 3))
    y, st_out, tape = layer.forward(x)
    ref = oracle_run(layer, x, dy=np.ones((6, 10)))
    np.testing.assert_allclose(y, ref["y"], **TOLERANCE["float64"])
    assert (st_out[0] if cell.num_states > 1 else st_out).shape == (4, 5)
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
    from rnnkern.backends.numba import blas
    before = blas.blas_name()
    try:
        blas.use_blas(request.param)
    except RuntimeError:
        pytest.skip("MKL (libmkl_rt) is not installed")
    yield request.param
    blas.use_blas(before)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_matches_torch_on_each_blas(blas, cell, dtype):
    cfg = dict(cell=cell, T=6, B=5, I=7, H=11, num_layers=2, bidirectional=True,
               batch_first=False, bias=True, dtype=dtype, with_state=True, with_dstate=True,
               seed=11, lengths=[6, 2, 5, 1, 6])
    check_against_torch(cfg)


@pytest.mark.parametrize("dtype", ["float32", "float64", np.float32, np.dtype("float64")])
def test_gemm_on_each_blas_matches_numpy(blas, dtype, rng):
    """The CBLAS call by address: every layout the backend uses, any dtype spelling."""
    from rnnkern.backends.numba.blas import gemm_function
    from rnnkern.kernels.numba.gemm import gemm
    a = rng.standard_normal((37, 5)).astype(dtype)
    b = rng.standard_normal((5, 300)).astype(dtype)
    for left, right in [(a, b), (np.ascontiguousarray(a.T).T, b), (a, np.ascontiguousarray(b.T).T)]:
        out = np.empty((37, 300), dtype)
        gemm(gemm_function(dtype), left, right, out)
        np.testing.assert_allclose(out, left @ right, rtol=1e-5 if np.dtype(dtype) == np.float32 else 1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("M, K, N", [(1, 256, 1024), (1, 7, 1), (1, 1, 9), (5, 300, 1),
                                     (1, 0, 4), (3, 0, 1), (1, 3, 0), (0, 3, 1),
                                     (37, 1, 300), (1024, 1, 128), (2, 1, 1), (0, 1, 5)])
def test_gemm_one_row_column_or_inner_size_on_each_blas_matches_numpy(blas, dtype, M, K, N,
                                                                      rng):
    """One row or one column (the GEMV route at batch 1) and an inner size of one (the outer
    product of a weight gradient over one row): every layout, over a dirty ``out``."""
    from rnnkern.backends.numba.blas import gemm_function
    from rnnkern.kernels.numba.gemm import gemm
    a = rng.standard_normal((M, K)).astype(dtype)
    b = rng.standard_normal((K, N)).astype(dtype)
    a_f, b_f = np.ascontiguousarray(a.T).T, np.ascontiguousarray(b.T).T
    for left, right in [(a, b), (a_f, b), (a, b_f), (a_f, b_f)]:
        out = np.full((M, N), np.nan, dtype)
        gemm(gemm_function(dtype), left, right, out)
        np.testing.assert_allclose(out, left @ right, rtol=1e-5 if dtype == "float32" else 1e-12,
                                   atol=1e-5 if dtype == "float32" else 1e-12)


def _symbol_at(address):
    """(shared object, symbol name) that ``address`` belongs to, by dladdr."""
    import ctypes

    class DlInfo(ctypes.Structure):
        _fields_ = [("dli_fname", ctypes.c_char_p), ("dli_fbase", ctypes.c_void_p),
                    ("dli_sname", ctypes.c_char_p), ("dli_saddr", ctypes.c_void_p)]

    dladdr = ctypes.CDLL(None).dladdr
    dladdr.argtypes = [ctypes.c_void_p, ctypes.POINTER(DlInfo)]
    info = DlInfo()
    assert dladdr(address, ctypes.byref(info))
    return info.dli_fname.decode(), info.dli_sname.decode()


@pytest.mark.parametrize("dtype, letter", [("float32", "s"), ("float64", "d")])
def test_gemm_function_names_gemm_and_gemv_of_one_library(blas, dtype, letter):
    """The GEMV address sits beside the GEMM's, in the same library (none for "scipy")."""
    from rnnkern.backends.numba.blas import gemm_function
    gemm_address, ilp64, gemv_address = gemm_function(dtype)
    if blas == "scipy":
        assert (gemm_address, ilp64, gemv_address) == (0, 0, 0)
        return
    gemm_library, gemm_symbol = _symbol_at(gemm_address)
    gemv_library, gemv_symbol = _symbol_at(gemv_address)
    assert gemm_library == gemv_library
    assert f"cblas_{letter}gemm" in gemm_symbol
    assert gemv_symbol == gemm_symbol.replace(f"{letter}gemm", f"{letter}gemv")
    assert ilp64 == int(gemm_symbol.endswith("64_"))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_both_oracles_agree(cell, dtype):
    """The reference oracle (used for cells torch lacks) against torch, where torch has the cell."""
    if not cell.torch_oracle:
        pytest.skip(f"torch.nn has no {cell.name}")
    from torch_oracle import reference_run
    layer, x, state, dy, dstate = make_case(dict(
        cell=cell, T=5, B=3, I=4, H=6, num_layers=2, bidirectional=True, batch_first=True,
        bias=True, dtype=dtype, with_state=True, with_dstate=True, seed=5, with_lengths=True))
    ours, theirs = (run(layer, x, state, [5, 1, 3], dy, dstate) for run in (reference_run, torch_run))
    tol = TOLERANCE[dtype]
    for key in ("y", "dx"):
        np.testing.assert_allclose(ours[key], theirs[key], **tol, err_msg=key)
    for key in ("state_n", "dstate0"):
        for a, b in zip(ours[key], theirs[key], strict=True):
            np.testing.assert_allclose(a, b, **tol, err_msg=key)
    for name, grad in theirs["grads"].items():
        np.testing.assert_allclose(ours["grads"][name], grad, **tol, err_msg=name)
