"""The persistent CUDA kernels without a GPU: one cooperative launch a direction.

The kernels of kernels/cuda/persistent_kernels.cu run in the host emulation
(every CUDA thread a fiber, ``__syncthreads`` and the grid barrier honoured,
in more than one schedule order) through the CUDA backend's own
orchestration, against the oracle and the NumPy path; the planner that picks
them; the host calls they save (``Launcher.counts``), and that the emulation
catches a missing barrier.
"""

import functools
import os
import shlex
import shutil

import numpy as np
import pytest

import rnnkern.recurrent
from conftest import make_layer
from cuda_parity import LAYER_CASES, check_layer_parity, run_layer
from rnnkern.backends.cuda import planner
from rnnkern.backends.cuda.driver import backend_with
from rnnkern.backends.cuda.emulation import SCHEDULES, EmulatedLauncher
from rnnkern.cells import CELLS, cell_for

_CXX = shlex.split(os.environ.get("CXX", "g++"))[0]
pytestmark = [
    pytest.mark.skipif(shutil.which(_CXX) is None,
                       reason=f"the host emulation needs a C++ compiler ({_CXX}, or set $CXX)"),
    pytest.mark.timeout(600),
]


@functools.cache
def backend_of(launcher):
    """The CUDA backend's orchestration on ``launcher``, one per launcher."""
    return backend_with(launcher)


@functools.cache
def launcher_for(schedule="forward", limits=planner.EMULATED_DEVICE):
    return EmulatedLauncher(schedule, limits=limits)


def run_on(launcher, path, monkeypatch):
    """A ``run`` for ``check_layer_parity``: the layer on ``launcher``, ``path`` forced."""
    def run(layer, x, state, lengths, dy, dstate):
        with monkeypatch.context() as patch, planner.use_path(path):
            patch.setattr(rnnkern.recurrent, "backend_for", lambda xp: backend_of(launcher))
            return run_layer(layer, x, state, lengths, dy, dstate)
    return run


# Every cell x dtype x layers x directions x lengths x layout; H = 1, 5 and
# 37 over the emulated device's 3 "SMs": blocks of 1, 2+2+1 and 13+13+11 units.
@pytest.mark.parametrize("cfg", LAYER_CASES)
def test_persistent_layer_matches_oracle_and_numpy_path(cfg, monkeypatch):
    check_layer_parity(cfg, run_on(launcher_for(), "persistent", monkeypatch))


# The other schedules on a slice of the cases: a kernel that relies on the
# order in which blocks or threads run (a missing barrier) fails one of them.
@pytest.mark.parametrize("schedule", [s for s in SCHEDULES if s != "forward"])
@pytest.mark.parametrize("cfg", LAYER_CASES[::11])
def test_persistent_layer_is_right_in_every_schedule(cfg, schedule, monkeypatch):
    check_layer_parity(cfg, run_on(launcher_for(schedule), "persistent", monkeypatch))


@pytest.mark.parametrize("multiprocessors,H", [(4, 7), (2, 9), (5, 5), (8, 3)])
def test_block_counts_that_do_not_divide_h(multiprocessors, H, monkeypatch):
    """Units per block ceil(H / SMs): a short last block, or one unit per block."""
    limits = planner.DeviceLimits("test device", multiprocessors=multiprocessors,
                                  shared_bytes_per_block=48 * 1024, threads_per_block=32)
    launcher = launcher_for("shuffled", limits)
    for cell in CELLS.values():
        cfg = dict(cell=cell, dtype="float64", num_layers=2, bidirectional=True,
                   with_lengths=True, batch_first=False, T=4, B=3, I=2, H=H, bias=True, seed=H)
        check_layer_parity(cfg, run_on(launcher, "persistent", monkeypatch))


def _host_calls(launcher, run):
    """``{kernels, gemms, graphs}`` the host called during ``run()``."""
    launcher.counts.clear()
    run()
    return {kind: launcher.counts[kind] for kind in ("kernels", "gemms", "graphs")}


@pytest.mark.parametrize("path", ["persistent", "step"])
def test_host_calls_per_direction_do_not_grow_with_t(cell, path, monkeypatch):
    """The deterministic speed metric: host calls per sequence.

    Persistent: per direction the input-projection GEMM and ONE kernel
    forward; one kernel and three GEMMs (dW_ih, dW_hh, dx) backward.  Step:
    the same GEMMs, and the T steps' kernels and GEMMs replayed as ONE
    captured graph each way.  Neither depends on T.
    """
    launcher = EmulatedLauncher()
    monkeypatch.setattr(rnnkern.recurrent, "backend_for", lambda xp: backend_of(launcher))
    layer = make_layer(cell, 3, 5, 1, bidirectional=True, dtype="float64", seed=1)
    one_launch = {"kernels": 1, "graphs": 0} if path == "persistent" else \
        {"kernels": 0, "graphs": 1}
    for T in (2, 7):
        x = np.random.default_rng(T).standard_normal((T, 2, 3))
        with planner.use_path(path):
            layer.forward(x)        # the step path captures its graphs on a first call
            layer.backward(np.ones((T, 2, 10)), layer.forward(x)[2])
            forward = _host_calls(launcher, lambda: layer.forward(x))
            tape = layer.forward(x)[2]
            backward = _host_calls(launcher, lambda: layer.backward(np.ones((T, 2, 10)), tape))
        directions = 2
        assert forward == {kind: directions * n for kind, n in
                           dict(one_launch, gemms=1).items()}, (T, forward)
        assert backward == {kind: directions * n for kind, n in
                            dict(one_launch, gemms=3).items()}, (T, backward)


def test_step_path_with_a_projection_calls_per_step(monkeypatch):
    """proj_size runs the projection between steps: O(T) host calls, no graph."""
    launcher = EmulatedLauncher()
    monkeypatch.setattr(rnnkern.recurrent, "backend_for", lambda xp: backend_of(launcher))
    layer = rnnkern.LSTM(3, 6, proj_size=2, dtype="float64", seed=1)
    x = np.random.default_rng(0).standard_normal((5, 2, 3))
    with planner.use_path("auto"):
        calls = _host_calls(launcher, lambda: layer.forward(x))
    assert calls == {"kernels": 5, "gemms": 1 + 2 * 5, "graphs": 0}


@pytest.mark.parametrize("bidirectional", [False, True])
def test_replayed_graphs_see_each_calls_inputs(cell, bidirectional, monkeypatch):
    """A graph binds its workspace: every call must copy its own inputs in and
    its results out (a stale input, or a tape pointing into the workspace,
    would match the first call and fail the next)."""
    launcher = EmulatedLauncher()
    layer = make_layer(cell, 3, 5, 2, bidirectional=bidirectional, dtype="float64", seed=4)
    rng = np.random.default_rng(4)
    D = 2 if bidirectional else 1
    calls = [(rng.standard_normal((6, 3, 3)), [6, 2, 4], rng.standard_normal((6, 3, 5 * D)))
             for _ in range(3)]
    expected = [run_layer(layer, x, None, lengths, dy, None) for x, lengths, dy in calls]
    with monkeypatch.context() as patch, planner.use_path("step"):
        patch.setattr(rnnkern.recurrent, "backend_for", lambda xp: backend_of(launcher))
        tapes = [layer.forward(x, lengths=lengths) for x, lengths, _ in calls]
        results = [layer.backward(dy, tape) for (_, _, dy), (_, _, tape) in zip(calls, tapes)]
    # one forward and one backward graph per direction; layer 1 has layer 0's
    # (T, B, G*H, H): it shares them, copying its own buffers in and out
    assert len(launcher.graphs) == 2 * D
    for (y, _, _), (dx, _, grads), reference in zip(tapes, results, expected):
        np.testing.assert_allclose(y, reference["y"], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(dx, reference["dx"], rtol=1e-10, atol=1e-12)
        for name, grad in grads.items():
            np.testing.assert_allclose(grad, reference["grads"][name], rtol=1e-10, atol=1e-12)


def _without(statement, kernel):
    """An ``edit_code`` that deletes every ``statement`` from the persistent source,
    and checks that there was one to delete."""
    def edit(source, code):
        if source != "persistent_kernels.cu":
            return code
        body_start = code.index(f"void __launch_bounds__(PERSISTENT_THREADS) {kernel}(")
        body_end = code.find("__global__", body_start)
        body_end = len(code) if body_end < 0 else body_end
        assert statement in code[body_start:body_end]
        # an empty statement in its place: `if (k < steps) grid.sync();` stays C++
        return code[:body_start] + code[body_start:body_end].replace(statement, ";") + \
            code[body_end:]
    return edit


@pytest.mark.parametrize("statement,kernel", [
    ("grid.sync();", "rnn_persistent_forward"),
    ("grid.sync();", "rnn_persistent_backward"),
    ("__syncthreads();", "rnn_persistent_forward"),
    ("__syncthreads();", "rnn_persistent_backward"),
], ids=["grid-forward", "grid-backward", "block-forward", "block-backward"])
def test_a_missing_barrier_fails_in_the_emulation(statement, kernel, monkeypatch):
    """The emulation runs blocks and threads in orders a GPU may take: with a
    barrier deleted from a kernel, some schedule gives a wrong answer."""
    cfg = dict(cell=cell_for("lstm"), dtype="float64", num_layers=1, bidirectional=False,
               with_lengths=False, batch_first=False, T=5, B=3, I=4, H=7, bias=True, seed=2)
    failures = []
    for schedule in SCHEDULES:
        launcher = EmulatedLauncher(schedule, edit_code=_without(statement, kernel))
        try:
            check_layer_parity(cfg, run_on(launcher, "persistent", monkeypatch))
        except AssertionError as err:
            failures.append(schedule)
            assert "vs the oracle" in str(err)
    assert failures, f"no schedule noticed the missing {statement} in {kernel}"
    print(f"without {statement} in {kernel}: wrong in the schedules {failures}")


# ---------------------------------------------------------------------------
# The planner.
# ---------------------------------------------------------------------------

LSTM = cell_for("lstm")
H100_LIKE = planner.DeviceLimits("H100-like", multiprocessors=132,
                                 shared_bytes_per_block=227 * 1024)


def test_auto_takes_the_persistent_path_at_small_batch():
    plan = planner.plan_direction(LSTM, "float32", 8, 1024, projected=False, limits=H100_LIKE,
                                  choice="auto")
    assert plan.path == "persistent"
    assert plan.units == 8 and plan.blocks == 128 and plan.threads == 256
    forward, backward = planner.shared_bytes(4, 4, 8, 1024, 8, 256)
    assert (plan.forward_shared_bytes, plan.backward_shared_bytes) == (forward, backward)
    assert forward <= H100_LIKE.shared_bytes_per_block


@pytest.mark.parametrize("batch,hidden,dtype,projected,why", [
    (64, 1024, "float32", False, "per-step GEMMs pay off"),
    (8, 256, "float32", True, "proj_size"),
    (8, 1024, "float64", False, "shared memory"),
])
def test_auto_falls_back_to_the_step_path(batch, hidden, dtype, projected, why):
    plan = planner.plan_direction(LSTM, dtype, batch, hidden, projected=projected,
                                  limits=H100_LIKE, choice="auto")
    assert plan.path == "step" and why in plan.reason
    assert why in plan.describe()


def test_forcing_persistent_where_it_cannot_run_is_an_error():
    with pytest.raises(ValueError, match="'persistent' was forced.*proj_size"):
        planner.plan_direction(LSTM, "float32", 2, 16, projected=True, limits=H100_LIKE,
                               choice="persistent")
    assert planner.plan_direction(LSTM, "float32", 64, 16, projected=False, limits=H100_LIKE,
                                  choice="persistent").path == "persistent"


def test_the_path_can_be_forced_and_is_recorded(monkeypatch):
    monkeypatch.setenv("RNNKERN_CUDA_PATH", "step")
    assert planner.path_choice() == "step"
    with planner.use_path("persistent"):
        assert planner.path_choice() == "persistent"
        planner.plan_direction(LSTM, "float32", 3, 10, projected=False, limits=H100_LIKE)
    assert planner.path_choice() == "step"
    described = planner.recent_plans()
    assert described["lstm float32 B=3 H=10 on H100-like"].path == "persistent"


def test_a_bad_path_choice_names_the_setting(monkeypatch):
    monkeypatch.setenv("RNNKERN_CUDA_PATH", "fast")
    with pytest.raises(ValueError, match=r"\$RNNKERN_CUDA_PATH.*'fast'"):
        planner.path_choice()
    with pytest.raises(ValueError, match="path: expected one of"):
        with planner.use_path("cudnn"):
            pass
