"""The regression gate: it passes on the tree and fails on an injected regression.

CI runs the gate through this file: ``test_gate_passes_on_the_tree`` fails
when a change raises a deterministic metric (memory, BLAS calls, FLOPs,
kernel launches) beyond the tolerance without regenerating
``asv_bench/baseline_metrics.json`` (``python -m rnnkern.bench.gate
--update-baseline``).  The other tests inject regressions into the running
code and check that the gate names them; and check the counting itself.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import rnnkern.backends.cuda.driver as cuda_driver
import rnnkern.backends.numba as numba_backend
from rnnkern.bench import compare, gate, metrics
from rnnkern.backends.numba.planner import use_path
from rnnkern.bench.workloads import make_layer
from rnnkern.cells import CELLS

REPO = Path(__file__).resolve().parents[1]
CELL = "rnn_tanh"          # one cell keeps the injected runs short


def test_gate_passes_on_the_tree():
    """In a fresh process, as CI and developers run it: traced bytes include Python's own
    small objects, whose free lists and dict sizes the tests run before would shift
    (the split driver's figures moved by ~2 KiB in-process after tests/test_split.py)."""
    completed = subprocess.run([sys.executable, "-m", "rnnkern.bench.gate"], cwd=REPO,
                               capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "gate passed" in completed.stdout


def test_baseline_covers_every_cell_and_metric():
    baseline = json.loads((REPO / "asv_bench" / "baseline_metrics.json").read_text())
    assert sorted(baseline["metrics"]) == sorted(metrics.metric_names())
    assert baseline["settings"]["shape"] == vars(metrics.METRIC_SHAPE)


def test_gate_fails_on_an_extra_allocation(monkeypatch, capsys):
    original = numba_backend.forward_direction

    def with_scratch(cell, x, params, state, lengths, reverse, *, keep=True):
        scratch = np.empty((x.shape[0], x.shape[1], params["weight_hh"].shape[0]), x.dtype)
        result = original(cell, x, params, state, lengths, reverse, keep=keep)
        del scratch
        return result

    monkeypatch.setattr(numba_backend, "forward_direction", with_scratch)
    status = gate.main(["--cell", CELL])
    err = capsys.readouterr().err
    assert status == 1, err
    baseline = gate.read_baseline(gate.BASELINE)["metrics"]
    name = f"{CELL}/numba/peak_bytes_forward"
    line = next(line for line in err.splitlines() if name in line)
    assert f"baseline {baseline[name]}, now " in line
    assert "--update-baseline" in err
    assert "kernel_launches" not in err and "blas_" not in err    # only memory moved


def test_gate_fails_on_an_extra_launch_per_step(monkeypatch, capsys):
    original = cuda_driver.forward_direction_with

    class LaunchingTwice:
        def __init__(self, launcher):
            self.launcher = launcher

        def __getattr__(self, name):
            return getattr(self.launcher, name)

        def launch(self, *args, **kwargs):
            self.launcher.launch(*args, **kwargs)
            self.launcher.launch(*args, **kwargs)

    monkeypatch.setattr(cuda_driver, "forward_direction_with",
                        lambda launcher, *args, **kwargs: original(LaunchingTwice(launcher),
                                                                   *args, **kwargs))
    status = gate.main(["--cell", CELL])
    err = capsys.readouterr().err
    assert status == 1, err
    T = metrics.METRIC_SHAPE.T
    baseline = gate.read_baseline(gate.BASELINE)["metrics"]
    for name in (f"{CELL}/cuda-step-emulated/kernel_launches_forward",
                 f"{CELL}/cuda-step-emulated/kernel_launches_forward_backward"):
        assert f"{name}: rose" in err
        assert f"(baseline {baseline[name]}, now {baseline[name] + T})" in err
    assert "/numba/blas_" not in err    # (traced bytes may move in-process: see above)


def test_compare_applies_the_tolerance():
    old = {"a/numba/peak_bytes_forward": 100_000, "a/numba/blas_calls_forward": 17,
           "a/cuda-emulated/kernel_launches_forward": 16}
    regressions, improvements = gate.compare(old, dict(old, **{
        "a/numba/peak_bytes_forward": 100_900}))           # < 1% and < 1 KiB: noise
    assert regressions == [] and improvements == []
    regressions, _ = gate.compare(old, dict(old, **{
        "a/numba/peak_bytes_forward": 102_000, "a/numba/blas_calls_forward": 18}))
    assert [r.name for r in regressions] == ["a/numba/blas_calls_forward",
                                             "a/numba/peak_bytes_forward"]
    assert "rose +5.9% (+1 calls)" in str(regressions[0])
    regressions, improvements = gate.compare(old, dict(old, **{
        "a/cuda-emulated/kernel_launches_forward": 8, "a/new/blas_calls_forward": 1}))
    assert [r.name for r in regressions] == ["a/new/blas_calls_forward"]
    assert improvements == [("a/cuda-emulated/kernel_launches_forward", 16, 8)]


@pytest.mark.parametrize("cell", list(CELLS))
def test_the_counting_run_computes_what_the_compiled_run_does(cell):
    """The general drivers' bytecode run as Python (to count their GEMMs) gives the compiled
    results."""
    shape, dtype = metrics.METRIC_SHAPE, metrics.METRIC_DTYPE
    layer = make_layer(cell, shape, dtype, "cpu", seed=1)
    x, dy = metrics._seeded_input(shape, dtype, seed=1)
    counter = metrics.GemmCounter()
    with use_path("general"):
        compiled = metrics._run_pass(layer, x, dy, "forward_backward")
        with metrics.counting_numba_gemms(counter):
            counted = metrics._run_pass(layer, x, dy, "forward_backward")
    np.testing.assert_allclose(counted[0], compiled[0], rtol=1e-5, atol=1e-6)
    for name, grad in compiled[2].items():
        np.testing.assert_allclose(counted[2][name], grad, rtol=1e-5, atol=1e-6)
    # one GEMM per step in each driver, the input projection, dx, dW_ih, dW_hh
    assert counter.calls == 2 * shape.T + 4


def test_numba_and_emulated_cuda_do_the_same_gemm_work():
    for cell in CELLS:
        numba = metrics.measure(cell, "numba")
        cuda = metrics.measure(cell, "cuda-step-emulated")
        for name in ("blas_calls_forward", "blas_flops_forward", "blas_calls_forward_backward",
                     "blas_flops_forward_backward"):
            assert numba[name] == cuda[name], (cell, name)
        assert cuda["kernel_launches_forward"] == metrics.METRIC_SHAPE.T


def test_the_persistent_path_launches_once_per_direction():
    for cell in CELLS:
        persistent = metrics.measure(cell, "cuda-persistent-emulated")
        assert persistent["kernel_launches_inference"] == 1
        assert persistent["kernel_launches_forward"] == 1
        assert persistent["kernel_launches_forward_backward"] == 2
        assert persistent["blas_calls_forward"] == 1          # the input projection
        assert persistent["blas_calls_forward_backward"] == 4   # + dW_ih, dW_hh, dx


def test_ratio_interval_flags_a_shift_and_not_noise():
    rng = np.random.default_rng(3)
    slower = 1.10 * np.exp(rng.normal(0, 0.03, 12))
    ratio, low, high = compare.ratio_interval(slower)
    assert 1.0 < low < ratio < high and ratio == pytest.approx(1.10, rel=0.03)
    same = np.exp(rng.normal(0, 0.03, 12))
    _, low, high = compare.ratio_interval(same)
    assert low < 1.0 < high
    with pytest.raises(ValueError, match="ratios: expected at least 2"):
        compare.ratio_interval([1.1])
    with pytest.raises(ValueError, match="positive"):
        compare.ratio_interval([1.1, 0.0])


def test_build_tree_lays_out_the_package_as_the_wheel(tmp_path):
    site = compare.build_tree(REPO, tmp_path / "site")
    assert (site / "rnnkern" / "__init__.py").exists()
    assert (site / "rnnkern" / "kernels" / "numba" / "drivers.py").exists()
    assert not list(site.rglob("__pycache__"))
