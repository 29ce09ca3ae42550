"""The CPU split path (``kernels/numba/split.py``) equals the general path and torch.

The split driver splits the weights by hidden units over one or two worker
threads that meet at a spin barrier every step, forward and backward; the
general driver runs a BLAS product per step.  Both must give the same ``y``,
final states, tape (state history and saved arrays, in the general driver's
layout) and gradients, for every registry cell, option and length, to float
rounding (the products sum in another order); one worker and two workers
must agree bit for bit forward (each product element is summed by the
same tile code whichever worker owns it) and to rounding backward (the
weight gradients' BLAS calls get other shapes: one row of dx is a GEMV).
The planner's choice is forced here with ``planner.use_path``;
``$RNNKERN_CPU_PATH`` and the recorded plans are checked too.
"""

import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from hypothesis import example, given, strategies as st

import rnnkern as rk
import rnnkern.backends.numba as numba_backend
from conftest import ALL_CELLS, CELL_IDS, TOLERANCE, assert_close, make_layer
from rnnkern.backends.numba import planner
from rnnkern.cells import CELLS
from torch_oracle import oracle_run

#: (path, workers) of each forced run; "general" is the reference.
RUNS = {"general": ("general", None), "one_worker": ("split", 1), "two_workers": ("split", 2)}


def _states(state):
    return list(state) if isinstance(state, tuple) else [state]


def _run(layer, x, state, lengths, dy, dstate, run):
    """Inference, forward (with its tape's arrays) and backward on the forced path."""
    path, workers = RUNS[run]
    with planner.use_path(path, workers=workers):
        y_inference, state_inference = layer(x, state, lengths)
        y, state_n, tape = layer.forward(x, state, lengths=lengths)
        dx, dstate0, grads = layer.backward(dy, tape, dstate)
    kept = [(direction["history"], direction["saved"]) for direction in tape.saved.values()]
    return dict(y_inference=y_inference, state_inference=_states(state_inference), y=y,
                state_n=_states(state_n), dx=dx, dstate0=_states(dstate0), grads=grads,
                kept=kept)


def _assert_close(ours, reference, dtype, what, large=False, summed=False):
    """Within the oracle tolerance (``summed``: gradients, conftest.assert_close); ``large``:
    sums over hundreds of terms (H = 256), ten times the relative tolerance, and as absolute
    floor that times the largest magnitude."""
    if not large:
        assert_close(ours, reference, dtype, what, summed=summed)
        return
    rtol = 10 * TOLERANCE[dtype]["rtol"]
    np.testing.assert_allclose(ours, reference, rtol=rtol,
                               atol=rtol * float(np.max(np.abs(reference), initial=1.0)),
                               err_msg=what)


def _assert_same_results(ours, reference, dtype, exact_forward=False, large=False):
    close = lambda a, b, what: _assert_close(a, b, dtype, what, large)      # noqa: E731
    gradient_close = lambda a, b, what: _assert_close(a, b, dtype, what, large,  # noqa: E731
                                                      summed=True)
    check = (lambda a, b, what: np.testing.assert_array_equal(a, b, err_msg=what)) \
        if exact_forward else close
    for name in ("y_inference", "y"):
        check(ours[name], reference[name], name)
    gradient_close(ours["dx"], reference["dx"], "dx")
    for name in ("state_inference", "state_n", "dstate0"):
        compare = gradient_close if name == "dstate0" else check
        for k, (a, b) in enumerate(zip(ours[name], reference[name], strict=True)):
            compare(a, b, f"{name}[{k}]")
    assert list(ours["grads"]) == list(reference["grads"])
    for name, g in ours["grads"].items():
        gradient_close(g, reference["grads"][name], name)
    for d, ((history, saved), (history_ref, saved_ref)) in enumerate(
            zip(ours["kept"], reference["kept"], strict=True)):
        for k, (a, b) in enumerate(zip(history + saved, history_ref + saved_ref, strict=True)):
            assert a.shape == b.shape and a.dtype == b.dtype
            check(a, b, f"tape of direction {d}, array {k}")


@st.composite
def configurations(draw):
    """B 1..20 (tiles of 6 rows and their tails), H from 1 up (odd sizes, 37, 70: panels of
    64 and 16 columns and their padding), lengths, directions, layers."""
    cfg = dict(cell=draw(st.sampled_from(ALL_CELLS)), T=draw(st.integers(1, 9)),
               B=draw(st.integers(1, 20)), I=draw(st.integers(1, 9)),
               H=draw(st.one_of(st.integers(1, 13), st.sampled_from([37, 64, 70]))),
               num_layers=draw(st.integers(1, 2)), bidirectional=draw(st.booleans()),
               batch_first=draw(st.booleans()), bias=draw(st.booleans()),
               dtype=draw(st.sampled_from(["float64", "float32"])),
               with_state=draw(st.booleans()), with_dstate=draw(st.booleans()),
               seed=draw(st.integers(0, 2**16)))
    cfg["lengths"] = (draw(st.lists(st.integers(1, cfg["T"]), min_size=cfg["B"],
                                    max_size=cfg["B"])) if draw(st.booleans()) else None)
    return cfg


def _case(cfg):
    rng = np.random.default_rng(cfg["seed"])
    layer = make_layer(cfg["cell"], cfg["I"], cfg["H"], cfg["num_layers"], bias=cfg["bias"],
                       batch_first=cfg["batch_first"], bidirectional=cfg["bidirectional"],
                       dtype=cfg["dtype"], seed=cfg["seed"])
    T, B, dt = cfg["T"], cfg["B"], cfg["dtype"]
    D = 2 if cfg["bidirectional"] else 1
    x = rng.standard_normal((B, T, cfg["I"]) if cfg["batch_first"] else (T, B, cfg["I"])).astype(dt)

    def state():
        states = tuple(rng.standard_normal((cfg["num_layers"] * D, B, cfg["H"])).astype(dt)
                       for _ in cfg["cell"].state_names)
        return states if len(states) > 1 else states[0]
    h0 = state() if cfg["with_state"] else None
    dstate = state() if cfg["with_dstate"] else None
    dy = rng.standard_normal(x.shape[:2] + (layer.output_size,)).astype(dt)
    return layer, x, h0, cfg["lengths"], dy, dstate


#: Found by the thorough profile: a float32 weight_ih gradient element of -0.0551 whose
#: terms cancel, 2.7e-6 apart between the drivers in an array reaching 13.5 (within the
#: relative tolerance of the array's scale: conftest.assert_close's ``summed``).
_CANCELLING_GRADIENT = dict(cell=CELLS["rnn_tanh"], T=4, B=9, I=4, H=64, num_layers=2,
                            bidirectional=True, batch_first=False, bias=False, dtype="float32",
                            with_state=False, with_dstate=False, seed=0, lengths=None)


@given(configurations())
@example(_CANCELLING_GRADIENT)
def test_split_equals_the_general_path(cfg):
    case = _case(cfg)
    reference = _run(*case, "general")
    one = _run(*case, "one_worker")
    _assert_same_results(one, reference, cfg["dtype"])
    _assert_same_results(_run(*case, "two_workers"), one, cfg["dtype"], exact_forward=True)


@given(configurations())
def test_split_matches_torch(cfg):
    layer, x, state, lengths, dy, dstate = _case(cfg)
    ours = _run(layer, x, state, lengths, dy, dstate, "two_workers")
    ref = oracle_run(layer, x, state, lengths, dy, dstate)
    dtype = cfg["dtype"]
    _assert_close(ours["y"], ref["y"], dtype, "y")
    for k, (a, b) in enumerate(zip(ours["state_n"], ref["state_n"], strict=True)):
        _assert_close(a, b, dtype, f"state_n[{k}]")
    _assert_close(ours["dx"], ref["dx"], dtype, "dx", summed=True)
    for name, g in ours["grads"].items():
        _assert_close(g, ref["grads"][name], dtype, name, summed=True)
    if state is not None:
        for k, (a, b) in enumerate(zip(ours["dstate0"], ref["dstate0"], strict=True)):
            _assert_close(a, b, dtype, f"dstate0[{k}]", summed=True)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("cell", ALL_CELLS, ids=CELL_IDS)
def test_a_bench_sized_layer_on_two_workers(cell, dtype):
    """H = 256, B = 1, 8 and 32, T = 20, lengths, reverse, torch."""
    rng = np.random.default_rng(0)
    layer = make_layer(cell, 24, 256, 1, bidirectional=True, dtype=dtype, seed=1)
    for B in (1, 8, 32):
        x = rng.standard_normal((20, B, 24)).astype(dtype)
        lengths = list(rng.integers(1, 21, B))
        dy = rng.standard_normal((20, B, 512)).astype(dtype)
        case = (layer, x, None, lengths, dy, None)
        reference = _run(*case, "general")
        ours = _run(*case, "two_workers")
        _assert_same_results(ours, reference, dtype, large=True)
        ref = oracle_run(layer, x, None, lengths, dy, None)
        _assert_close(ours["y"], ref["y"], dtype, "y against torch", large=True)
        _assert_close(ours["dx"], ref["dx"], dtype, "dx against torch", large=True)


def test_inference_and_training_forward_agree_bit_for_bit(cell):
    layer = make_layer(cell, 5, 37, 2, bidirectional=True, dtype="float32", seed=2)
    x = np.random.default_rng(3).standard_normal((6, 3, 5)).astype("float32")
    with planner.use_path("split", workers=2):
        y, state = layer(x)
        y_training, state_training, _ = layer.forward(x)
    np.testing.assert_array_equal(y, y_training)
    for a, b in zip(_states(state), _states(state_training), strict=True):
        np.testing.assert_array_equal(a, b)


def test_unbatched_input_and_the_single_step_cells(cell):
    rng = np.random.default_rng(4)
    layer = make_layer(cell, 3, 9, 1, dtype="float64", seed=5)
    x = rng.standard_normal((7, 3))
    with planner.use_path("general"):
        y_ref, state_ref = layer(x)
    with planner.use_path("split", workers=2):
        y, state = layer(x)
    _assert_close(y, y_ref, "float64", "y")
    for a, b in zip(_states(state), _states(state_ref), strict=True):
        _assert_close(a, b, "float64", "state")


#: (VECTOR_BYTES, VECTORS) of the CPUs whose tiles are compiled in a fresh process.
OTHER_CPU_TILES = {"avx2": (32, 2), "sse": (16, 2)}

#: The layers of the tiles test: every cell, B over and under a tile, H over and under a panel.
TILE_CASES = [(layer, B, H) for layer in ("LSTM", "GRU", "RNN")
              for B, H in ((1, 5), (7, 37), (13, 20))]


def _tile_case(layer_name, B, H):
    layer = getattr(rk, layer_name)(3, H, dtype="float64", bidirectional=True, seed=B)
    x = np.random.default_rng(B * 100 + H).standard_normal((4, B, 3))
    return layer, x


def _forward_backward(layer, x):
    y, _, tape = layer.forward(x)
    dx, _, grads = layer.backward(np.ones_like(y), tape)
    return {"y": y, "dx": dx, **grads}


_SPLIT_WITH_OTHER_TILES = """
import sys
import numpy as np
from rnnkern.kernels.numba import tiles
tiles.VECTOR_BYTES, tiles.VECTORS, tiles.REGISTERS = int(sys.argv[1]), int(sys.argv[2]), 16
sys.path.insert(0, sys.argv[4])
from test_split import TILE_CASES, _forward_backward, _tile_case
from rnnkern.backends.numba import planner
results = {}
with planner.use_path("split", workers=2):
    for number, case in enumerate(TILE_CASES):
        for name, value in _forward_backward(*_tile_case(*case)).items():
            results[f"{number}/{name}"] = value
np.savez(sys.argv[3], **results)
print("ok", tiles.panel_width(8))
"""


def test_the_tiles_of_other_cpus(tmp_path):
    """The tile sizes of AVX2 and of 16-byte-vector CPUs: the split path compiled with them
    in fresh processes (each its own Numba cache: the sizes are not part of a cached
    kernel's key), both at once, equals the general driver run here, for every cell, B over
    and under a tile, H over and under a panel.  (The general driver uses no tiles.)"""
    children = {}
    for cpu, (vector_bytes, vectors) in OTHER_CPU_TILES.items():
        cache = tmp_path / cpu
        children[cpu] = subprocess.Popen(
            [sys.executable, "-c", _SPLIT_WITH_OTHER_TILES, str(vector_bytes), str(vectors),
             str(tmp_path / f"{cpu}.npz"), os.path.dirname(__file__)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=dict(os.environ, NUMBA_CACHE_DIR=str(cache)))
    with planner.use_path("general"):
        expected = [_forward_backward(*_tile_case(*case)) for case in TILE_CASES]
    for cpu, child in children.items():
        stdout, stderr = child.communicate(timeout=600)
        assert child.returncode == 0, stderr[-3000:]
        vector_bytes, vectors = OTHER_CPU_TILES[cpu]
        assert stdout.split() == ["ok", str(vectors * vector_bytes // 8)]
        with np.load(tmp_path / f"{cpu}.npz") as split_results:
            for number, (case, reference) in enumerate(zip(TILE_CASES, expected)):
                for name, value in reference.items():
                    np.testing.assert_allclose(split_results[f"{number}/{name}"], value,
                                               rtol=1e-10, atol=1e-12,
                                               err_msg=f"{cpu} tiles, {case}: {name}")


# ------------------------------------------------------------------ the planner

def _lstm():
    return CELLS["lstm"]


def test_auto_splits_every_batch_where_a_step_is_big_enough():
    for batch in (1, 8, 64):
        for training in (False, True):
            plan = planner.plan_direction(_lstm(), "float32", batch, 256, projected=False,
                                          training=training, choice="auto", cores=2,
                                          others_running=0)
            assert (plan.path, plan.workers) == ("split", 2)


def test_a_small_step_stays_on_the_general_path():
    """Split where a step has enough FLOPs, or W_hh enough bytes (batch 1: W_hh's reads
    are the step); the sine demo's RNN(1, 50) at batch 32 has neither."""
    plan = planner.plan_direction(CELLS["rnn_tanh"], "float32", 32, 50, projected=False,
                                  choice="auto", cores=2)
    assert 2 * 32 * 50 * 50 < planner.SPLIT_MIN_STEP_FLOPS
    assert 50 * 50 * 4 < planner.SPLIT_MIN_WEIGHT_BYTES
    assert plan.path == "general" and "too small" in plan.reason
    below = planner.plan_direction(CELLS["rnn_tanh"], "float32", 1, 128, projected=False,
                                   choice="auto", cores=2)
    assert below.path == "general"
    more_flops = planner.plan_direction(CELLS["rnn_tanh"], "float32", 8, 128, projected=False,
                                        choice="auto", cores=2, others_running=0)
    assert 2 * 8 * 128 * 128 >= planner.SPLIT_MIN_STEP_FLOPS and more_flops.path == "split"
    more_bytes = planner.plan_direction(CELLS["rnn_tanh"], "float32", 1, 256, projected=False,
                                        choice="auto", cores=2, others_running=0)
    assert 2 * 256 * 256 < planner.SPLIT_MIN_STEP_FLOPS
    assert 256 * 256 * 4 >= planner.SPLIT_MIN_WEIGHT_BYTES and more_bytes.path == "split"


def test_training_splits_only_a_w_hh_of_enough_rows():
    """In training (a forward with a tape, the backward) the split needs a W_hh of at least
    SPLIT_MIN_TRAINING_ROWS rows; inference of the same shapes still splits."""
    def plan(cell, batch, hidden, training, choice="auto"):
        return planner.plan_direction(CELLS[cell], "float32", batch, hidden, projected=False,
                                      training=training, choice=choice, cores=2,
                                      others_running=0)

    rows = planner.SPLIT_MIN_TRAINING_ROWS
    for cell, batch, hidden in (("rnn_tanh", 1, 256), ("rnn_tanh", 64, 128), ("lstm", 64, 64),
                                ("gru", 16, 64)):
        assert CELLS[cell].num_gates * hidden < rows
        assert plan(cell, batch, hidden, training=False).path == "split"
        trained = plan(cell, batch, hidden, training=True)
        assert trained.path == "general" and "dG_h" in trained.reason
        assert not trained.one_blas_thread          # products this size want the BLAS threads
        assert plan(cell, batch, hidden, training=True, choice="split").path == "split"
    for cell, hidden in (("gru", 128), ("lstm", 96), ("rnn_tanh", 384)):
        assert CELLS[cell].num_gates * hidden >= rows
        assert plan(cell, 4, hidden, training=True).path == "split"


def test_short_sequences_take_the_general_path_on_the_weights_as_they_are():
    """Under SPLIT_MIN_STEPS steps the split's packing does not pay for itself, and under
    TRANSPOSE_MIN_STEPS (or at batch 1, a GEMV either way) neither does a copy of W_hh^T."""
    def plan(batch, steps, choice="auto"):
        return planner.plan_direction(_lstm(), "float32", batch, 256, projected=False,
                                      steps=steps, choice=choice, cores=2, others_running=0)

    assert plan(1, planner.SPLIT_MIN_STEPS).path == "split"
    short = plan(1, planner.SPLIT_MIN_STEPS - 1)
    assert short.path == "general" and "too few" in short.reason
    assert not short.transposed_weights
    assert plan(1, 1, choice="split").path == "split"          # forcing is not second-guessed
    long_enough = planner.TRANSPOSE_MIN_STEPS
    assert plan(32, long_enough, choice="general").transposed_weights
    assert not plan(32, long_enough - 1, choice="general").transposed_weights
    assert not plan(1, long_enough, choice="general").transposed_weights
    assert plan(32, None, choice="general").transposed_weights        # None: a long sequence


@pytest.mark.parametrize("proj_size", [0, 3])
def test_the_general_driver_on_a_copy_of_w_hh_t_or_on_its_view(proj_size, monkeypatch):
    """Both ways of the step product (NN on a copy of W_hh^T, NT on the view) give torch's
    results, with and without a projection (whose W_hr^T is copied or viewed alike)."""
    layer = make_layer(_lstm(), 4, 7, 2, bidirectional=True, proj_size=proj_size,
                       dtype="float64", seed=8)
    rng = np.random.default_rng(9)
    x = rng.standard_normal((5, 3, 4))
    dy = rng.standard_normal((5, 3, 2 * (proj_size or 7)))
    ref = oracle_run(layer, x, None, [5, 2, 4], dy, None)
    for copy in (True, False):
        monkeypatch.setattr(planner, "TRANSPOSE_MIN_STEPS", 1 if copy else 10**9)
        with planner.use_path("general"):
            y, _, tape = layer.forward(x, lengths=[5, 2, 4])
            dx, _, _ = layer.backward(dy, tape)
        direction = f"lstm float64 B=3 H=7{' proj' if proj_size else ''} training"
        assert planner.recent_paths()[direction].transposed_weights == copy
        _assert_close(y, ref["y"], "float64", f"y, copy={copy}")
        _assert_close(dx, ref["dx"], "float64", f"dx, copy={copy}")


def test_one_core_means_one_worker_at_batch_one_else_the_general_path():
    one = planner.plan_direction(_lstm(), "float32", 1, 256, projected=False, choice="auto",
                                 cores=1)
    assert (one.path, one.workers) == ("split", 1) and "1 usable core" in one.reason
    more = planner.plan_direction(_lstm(), "float32", planner.ONE_WORKER_MAX_BATCH + 1, 256,
                                  projected=False, choice="auto", cores=1)
    assert more.path == "general" and "1 usable core" in more.reason
    forced = planner.plan_direction(_lstm(), "float32", 4, 256, projected=False,
                                    choice="split", cores=1)
    assert (forced.path, forced.workers) == ("split", 1)


def test_another_running_thread_sends_auto_to_the_general_path():
    args = (_lstm(), "float32", 32, 256)
    plan = planner.plan_direction(*args, projected=False, choice="auto", cores=2,
                                  others_running=1)
    assert plan.path == "general" and "another thread" in plan.reason
    forced = planner.plan_direction(*args, projected=False, choice="split", cores=2,
                                    others_running=1)
    assert (forced.path, forced.workers) == ("split", 2)      # forcing is not second-guessed


def test_the_blas_runs_on_one_thread_while_the_cores_are_held_and_after_as_before():
    """``_cores_held`` puts the BLAS pools (those loaded at the first call) on one thread
    for the call and gives each its own count back afterwards, also when the call raises;
    a nested call holds nothing."""
    from threadpoolctl import threadpool_limits

    def counts():
        return [pool.get_num_threads() for pool in numba_backend._blas_pools()]

    with threadpool_limits(2, user_api="blas"):
        before = counts()
        with numba_backend._cores_held() as held:
            assert held and counts() == [1] * len(before)
            with numba_backend._cores_held() as nested:
                assert not nested                   # another call holds them: one worker
        assert counts() == before
        with pytest.raises(RuntimeError, match="inside"):
            with numba_backend._cores_held():
                raise RuntimeError("inside")
        assert counts() == before
        with numba_backend._cores_held(limit_blas=False):
            assert counts() == before


def test_a_spinning_blas_pool_is_seen_and_the_helper_is_not():
    """After a multi-threaded NumPy matmul the BLAS pool's threads spin for a while (when
    the BLAS has more than one thread here); the split path's own helper never counts."""
    from threadpoolctl import threadpool_info

    with planner.use_path("split", workers=2):             # the helper exists and is idle
        make_layer(_lstm(), 4, 32, 1, dtype="float32", seed=0)(np.ones((3, 2, 4), np.float32))
    assert numba_backend._HELPER.executor() is not None and planner.QUIET_THREADS
    if max((pool["num_threads"] for pool in threadpool_info()
            if pool["user_api"] == "blas"), default=1) < 2 or planner.usable_cores() < 2:
        pytest.skip("one BLAS thread or one core: no pool to spin")
    a = np.random.default_rng(0).standard_normal((400, 400))
    seen = 0
    for _ in range(5):
        a @ a
        seen = max(seen, planner.other_threads_running())
    assert seen >= 1


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="needs Linux procfs")
def test_running_threads_are_seen_as_they_come_and_go_and_after_a_fork():
    """The stat files kept open between calls follow new threads, ended threads (same
    count or not) and a fork (the child must read its own threads, not the parent's)."""
    planner.other_threads_running()                 # the files of the threads now
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            pass

    def seen_running(samples=200):
        # Python threads share the GIL: sample a while, the thread is seen running at times
        # (each sample may wait a switch interval for the GIL: stop at the first sighting)
        return any(planner.other_threads_running() >= 1 for _ in range(samples))

    def seen_beside_a_new_spinning_thread():
        thread = threading.Thread(target=spin)
        thread.start()
        try:
            return seen_running()
        finally:
            stop.set()
            thread.join()
            stop.clear()

    assert seen_beside_a_new_spinning_thread()
    assert seen_beside_a_new_spinning_thread()      # another thread, the same count
    spinner = threading.Thread(target=spin)         # running in the parent during the fork
    spinner.start()
    try:
        assert seen_running()
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:                                # the child: only this thread exists
            try:
                os.write(write_end, str(max(planner.other_threads_running()
                                            for _ in range(200))).encode())
            finally:
                os._exit(0)
        os.close(write_end)
        os.waitpid(pid, 0)
        assert os.read(read_end, 16) == b"0"
        os.close(read_end)
    finally:
        stop.set()
        spinner.join()


def test_workers_never_outnumber_the_hidden_units():
    plan = planner.plan_direction(_lstm(), "float32", 1, 1, projected=False, choice="split",
                                  cores=2)
    assert plan.workers == 1


def test_a_projection_goes_to_the_general_path_and_cannot_be_forced():
    assert planner.plan_direction(_lstm(), "float32", 1, 16, projected=True,
                                  choice="auto").path == "general"
    layer = rk.LSTM(3, 8, proj_size=4, dtype="float64", seed=0)
    x = np.zeros((2, 1, 3))
    with planner.use_path("split"), pytest.raises(ValueError, match="proj_size"):
        layer(x)
    with planner.use_path("general"):
        y_ref = layer(x)[0]
    np.testing.assert_array_equal(layer(x)[0], y_ref)          # auto: general


def test_forcing_is_visible_and_scoped():
    layer = make_layer(CELLS["gru"], 3, 10, 1, dtype="float32", seed=0)
    x = np.ones((2, 3, 3), np.float32)
    with planner.use_path("general"):
        assert planner.path_choice() == "general"
        layer(x)
        plan = planner.recent_paths()["gru float32 B=3 H=10 inference"]
        assert plan.describe() == "general, on W_hh^T as a view (forced)"   # T = 2
        with planner.use_path("split", workers=1):
            layer(x)
            plan = planner.recent_paths()["gru float32 B=3 H=10 inference"]
            assert (plan.path, plan.workers, plan.reason) == ("split", 1, "forced")
        assert planner.path_choice() == "general"
    assert list(planner.recent_paths())[-1] == "gru float32 B=3 H=10 inference"     # newest last


@pytest.mark.parametrize("bad", [dict(path="fast"), dict(path="split", workers=3)])
def test_use_path_refuses_what_it_does_not_know(bad):
    with pytest.raises(ValueError):
        with planner.use_path(**bad):
            pass


def test_the_environment_variable_forces_the_path_in_a_fresh_process():
    code = ("import numpy as np, rnnkern as rk\n"
            "from rnnkern.backends.numba import planner\n"
            "rk.GRU(2, 4, seed=0)(np.ones((3, 1, 2), np.float32))\n"
            "plan = planner.recent_paths()['gru float32 B=1 H=4 inference']\n"
            "print(planner.path_choice(), plan.path)\n"
            "rk.show_config()\n")
    for value in ("general", "split"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env=dict(os.environ, RNNKERN_CPU_PATH=value), check=True).stdout
        assert out.splitlines()[0] == f"{value} {value}"
        assert "cpu_path" in out and "gru float32 B=1 H=4 inference" in out
    bad = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, RNNKERN_CPU_PATH="fastest"))
    assert bad.returncode != 0 and "RNNKERN_CPU_PATH" in bad.stderr


# ------------------------------------------------------------------ the workers

def test_a_failing_helper_worker_aborts_the_other_and_raises(monkeypatch):
    """The helper thread raises before it reaches the barrier: the calling thread's
    worker must return (not spin forever) and the error must reach the caller."""
    def broken(kernel, arguments, barrier, cpus=None):
        barrier[numba_backend.atomics.ABORT] = 1
        raise RuntimeError("helper broke")

    layer = make_layer(CELLS["lstm"], 3, 16, 1, dtype="float32", seed=0)
    x = np.ones((50, 2, 3), np.float32)
    with monkeypatch.context() as patched:
        patched.setattr(numba_backend, "_guarded_worker", broken)
        with planner.use_path("split", workers=2), \
                pytest.raises(RuntimeError, match="helper"):
            layer(x)
    with planner.use_path("split", workers=2):      # and the next call works again
        y = layer(x)[0]
    with planner.use_path("general"):
        _assert_close(y, layer(x)[0], "float32", "y after a failed call")


def test_calls_from_several_threads_at_once():
    """Only one call at a time gets the helper; the others run on one worker, all correct."""
    layer = make_layer(CELLS["gru"], 4, 48, 1, dtype="float64", seed=0)
    rng = np.random.default_rng(6)
    xs = [rng.standard_normal((30, 2, 4)) for _ in range(6)]
    with planner.use_path("general"):
        expected = [layer(x)[0] for x in xs]
    results, errors = [None] * len(xs), []

    def work(i):
        try:
            for _ in range(3):
                results[i] = layer(xs[i])[0]
        except Exception as error:          # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    with planner.use_path("split", workers=2):     # process-wide, set once
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    assert not errors and not any(thread.is_alive() for thread in threads)
    for y, y_ref in zip(results, expected, strict=True):
        _assert_close(y, y_ref, "float64", "y")


def test_a_failing_calling_worker_releases_the_helper(monkeypatch):
    """The calling thread's worker raises: the helper, already waiting at the barrier,
    must be released (aborted) and the error raised, not a hang."""
    from rnnkern.kernels.numba import split

    real = split.forward_worker

    def failing_first(*arguments):
        if arguments[1] == 0:
            raise RuntimeError("worker 0 broke")
        return real(*arguments)

    layer = make_layer(CELLS["rnn_tanh"], 3, 32, 1, dtype="float64", seed=0)
    x = np.ones((40, 1, 3))
    with monkeypatch.context() as patched:
        patched.setattr(split, "forward_worker", failing_first)
        with planner.use_path("split", workers=2), \
                pytest.raises(RuntimeError, match="worker 0"):
            layer(x)
    with planner.use_path("split", workers=2):
        y = layer(x)[0]
    with planner.use_path("general"):
        _assert_close(y, layer(x)[0], "float64", "y after a failed call")
