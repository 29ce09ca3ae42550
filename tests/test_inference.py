"""Inference (``layer(x)``, ``cell(x)``): the training forward's results, without its memory.

On the Numba path inference keeps no state history, gives the cell's saved
arrays one step instead of T, and takes its scratch arrays from a per-thread
cache (``rnnkern.backends.numba``).  It runs the same GEMMs and rows as the
training forward, so ``y`` and the final states must agree BIT FOR BIT, for
every registry cell and option.  The cache must never leak: results of one
call survive the next call, other shapes and other threads.
"""

import threading
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, strategies as st

import rnnkern as rk
from conftest import ALL_CELLS, make_layer


def _states(state):
    return state if isinstance(state, tuple) else (state,)


def _assert_identical(inference, training):
    (y, state), (y_ref, state_ref) = inference, training[:2]
    assert y.dtype == y_ref.dtype and np.array_equal(y, y_ref)
    for s, s_ref in zip(_states(state), _states(state_ref), strict=True):
        assert s.dtype == s_ref.dtype and np.array_equal(s, s_ref)


def _has_projection(cell):
    return any(p.is_projection for p in cell.parameters)


@st.composite
def configurations(draw):
    cell = draw(st.sampled_from(ALL_CELLS))
    H = draw(st.integers(1, 9))
    T, B = draw(st.integers(1, 7)), draw(st.integers(1, 5))
    proj_size = draw(st.integers(0, H - 1)) if _has_projection(cell) and H > 1 else 0
    cfg = dict(cell=cell, T=T, B=B, I=draw(st.integers(1, 7)), H=H, proj_size=proj_size,
               num_layers=draw(st.integers(1, 3)), bidirectional=draw(st.booleans()),
               batch_first=draw(st.booleans()), bias=draw(st.booleans()),
               dtype=draw(st.sampled_from(["float64", "float32"])),
               with_state=draw(st.booleans()), unbatched=draw(st.booleans()),
               seed=draw(st.integers(0, 2**16)))
    cfg["lengths"] = None
    if not cfg["unbatched"] and draw(st.booleans()):
        cfg["lengths"] = draw(st.lists(st.integers(1, T), min_size=B, max_size=B))
    return cfg


def _case(cfg):
    extra = {"proj_size": cfg["proj_size"]} if cfg["proj_size"] else {}
    layer = make_layer(cfg["cell"], cfg["I"], cfg["H"], cfg["num_layers"], bias=cfg["bias"],
                       batch_first=cfg["batch_first"], bidirectional=cfg["bidirectional"],
                       dtype=cfg["dtype"], seed=cfg["seed"], **extra)
    rng = np.random.default_rng(cfg["seed"])
    T, B = cfg["T"], cfg["B"]
    if cfg["unbatched"]:
        shape = (T, cfg["I"])
    else:
        shape = (B, T, cfg["I"]) if cfg["batch_first"] else (T, B, cfg["I"])
    x = rng.standard_normal(shape).astype(cfg["dtype"])
    state = None
    if cfg["with_state"]:
        L = cfg["num_layers"] * (2 if cfg["bidirectional"] else 1)
        batch = () if cfg["unbatched"] else (B,)
        widths = {"h": cfg["proj_size"] or cfg["H"], "c": cfg["H"]}
        state = tuple(rng.standard_normal((L, *batch, widths[name])).astype(cfg["dtype"])
                      for name in cfg["cell"].state_names)
        state = state if len(state) > 1 else state[0]
    return layer, x, state


@given(configurations())
def test_inference_equals_the_training_forward_bit_for_bit(cfg):
    layer, x, state = _case(cfg)
    x_before = x.copy()
    inference = layer(x, state, lengths=cfg["lengths"])
    assert np.array_equal(x, x_before)                  # the input is not modified
    _assert_identical(inference, layer.forward(x, state, lengths=cfg["lengths"]))


@given(cell=st.sampled_from(ALL_CELLS), B=st.integers(1, 4), I=st.integers(1, 6),
       H=st.integers(1, 8), dtype=st.sampled_from(["float64", "float32"]),
       with_state=st.booleans(), unbatched=st.booleans(), seed=st.integers(0, 2**16))
def test_single_step_inference_equals_its_forward_bit_for_bit(cell, B, I, H, dtype, with_state,
                                                               unbatched, seed):
    step = getattr(rk, cell.layer + "Cell")(I, H, dtype=dtype, seed=seed, **cell.layer_options)
    rng = np.random.default_rng(seed)
    batch = () if unbatched else (B,)
    x = rng.standard_normal((*batch, I)).astype(dtype)
    state = None
    if with_state:
        state = tuple(rng.standard_normal((*batch, H)).astype(dtype) for _ in cell.state_names)
        state = state if len(state) > 1 else state[0]
    inferred, (trained, _) = step(x, state), step.forward(x, state)
    for s, s_ref in zip(_states(inferred), _states(trained), strict=True):
        assert np.array_equal(s, s_ref)


@pytest.mark.parametrize("cell", ALL_CELLS, ids=lambda c: c.name)
def test_results_survive_later_calls_of_other_shapes(cell):
    """The scratch cache is reused across calls: nothing returned may alias it."""
    extra = {"proj_size": 3} if _has_projection(cell) else {}
    layer = make_layer(cell, 4, 6, 2, bidirectional=True, seed=3, **extra)
    rng = np.random.default_rng(0)
    shapes = [(7, 3, 4), (2, 5, 4), (9, 1, 4), (7, 3, 4)]
    xs = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    results = [layer(x) for x in xs]
    for x, result in zip(xs, results):
        _assert_identical(result, layer.forward(x))


@pytest.mark.parametrize("cell", ALL_CELLS, ids=lambda c: c.name)
def test_concurrent_inference_in_threads(cell):
    """Each thread has its own scratch: the kernels release the GIL, so they overlap."""
    layer = make_layer(cell, 5, 16, seed=1)
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal((40, b, 5)).astype(np.float32) for b in (1, 3, 8, 3)]
    expected = [layer.forward(x)[:2] for x in xs]
    failures = []

    def work(x, want):
        for _ in range(20):
            got = layer(x)
            if not (np.array_equal(got[0], want[0]) and all(
                    np.array_equal(a, b) for a, b in zip(_states(got[1]), _states(want[1])))):
                failures.append(x.shape)

    threads = [threading.Thread(target=work, args=pair) for pair in zip(xs, expected)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def _peak_bytes(run):
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        run()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("cell", ALL_CELLS, ids=lambda c: c.name)
def test_inference_allocates_far_less_than_the_training_forward(cell):
    """At T=50, B=8, H=64 the training forward keeps T steps of states and gates;
    inference allocates ``y`` and the states (its scratch is cached after the
    first call)."""
    T, B, I, H = 50, 8, 32, 64
    layer = make_layer(cell, I, H, seed=0)
    x = np.random.default_rng(0).standard_normal((T, B, I)).astype(np.float32)
    layer(x), layer.forward(x)                           # compile, fill the cache
    inference = _peak_bytes(lambda: layer(x))
    training = _peak_bytes(lambda: layer.forward(x))
    y_bytes = T * B * H * 4
    assert inference < 0.4 * training
    assert inference < 2 * y_bytes                       # y, the states, small change
