"""The CUDA path on a real GPU: CuPy arrays, RawModule kernels, cuBLAS.

Marked ``gpu`` and skipped, never failed, where CuPy or a CUDA device is
missing.  The same check bodies as tests/test_cuda_emulation.py
(tests/cuda_parity.py), here on CuPy: layers moved with ``.to("cuda")``
against each cell's oracle and the NumPy path, and every step kernel
against ``rnnkern.cells``.  Run them with ``python -m pytest -m gpu -s`` (``-s``
shows the measured compile times).
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import rnnkern as rk
from conftest import make_layer
from cuda_parity import (LAYER_CASES, STEP_LAUNCHES, STEP_SEEDS, STEP_SHAPES,
                         assert_results_close, check_layer_parity, check_step_kernels, run_layer)
from rnnkern.backends.cuda import modules, planner
from rnnkern.backends.cuda.modules import CudaKernelError, kernel_name
from rnnkern.cells import cell_for
from rnnkern.devices import cuda_device_count


DEVICES = cuda_device_count()
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(DEVICES == 0, reason="needs CuPy and a CUDA GPU"),
              pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def cp():
    import cupy

    return cupy


def _to_gpu(cp, value):
    if value is None:
        return None
    if isinstance(value, tuple):
        return tuple(cp.asarray(v) for v in value)
    return cp.asarray(value)


# Lengths reach the layer as torch accepts them: a host list, a NumPy array,
# or an array of the inputs' own library.
_LENGTHS_FORMS = ["list", "numpy", "cupy"]


@pytest.mark.parametrize("path", ["persistent", "step"])
@pytest.mark.parametrize("cfg", LAYER_CASES)
def test_layer_matches_oracle_and_numpy_path(cp, cfg, path):
    def run_on_gpu(layer, x, state, lengths, dy, dstate):
        with planner.use_path(path):
            return run_forced(layer, x, state, lengths, dy, dstate)

    def run_forced(layer, x, state, lengths, dy, dstate):
        layer.to("cuda")
        inputs = [_to_gpu(cp, a) for a in (x, state, dy, dstate)]
        before = [inputs[0].copy(), inputs[2].copy()]
        if lengths is not None:
            form = _LENGTHS_FORMS[cfg["seed"] % 3]
            lengths = {"list": lengths, "numpy": np.asarray(lengths),
                       "cupy": cp.asarray(lengths)}[form]
        results = run_layer(layer, inputs[0], inputs[1], lengths, inputs[2], inputs[3])
        for a, b in zip((inputs[0], inputs[2]), before):
            assert bool((a == b).all()), "an input array was modified"
        return results
    check_layer_parity(cfg, run_on_gpu)


@pytest.mark.parametrize("launch", STEP_LAUNCHES, ids=["backend-launch", "grid2x32"])
@pytest.mark.parametrize("B,H", STEP_SHAPES, ids=[f"B{b}H{h}" for b, h in STEP_SHAPES])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_step_kernels_match_cell_equations(cp, cell, dtype, B, H, launch):
    from rnnkern.backends.cuda import cupy_launcher

    check_step_kernels(cupy_launcher(), cell, dtype, B, H, launch)


@pytest.mark.parametrize("seed", STEP_SEEDS)
@pytest.mark.parametrize("index", ["int", "long long"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_step_kernels_at_realistic_sizes(cp, cell, dtype, index, seed):
    """B*H = 16384, every seed, both index types: the GPU's own rounding
    (FMA, 2-ulp expf/tanhf) within the ulp-based tolerance."""
    from rnnkern.backends.cuda import cupy_launcher

    check_step_kernels(cupy_launcher(), cell, dtype, 32, 128, None, seed=seed, index=index)


def test_step_kernels_on_a_non_default_stream(cp, cell):
    from rnnkern.backends.cuda import cupy_launcher

    with cp.cuda.Stream(non_blocking=True) as stream:
        check_step_kernels(cupy_launcher(), cell, "float32", 16, 64, None)
        stream.synchronize()


@pytest.mark.parametrize("cfg", LAYER_CASES[::7])
def test_layer_on_a_non_default_stream(cp, cfg):
    """Every kernel, GEMM and copy goes to the current stream: a non-blocking
    stream (no implicit ordering with the default one) gives the same results."""
    def run_on_stream(layer, x, state, lengths, dy, dstate):
        layer.to("cuda")
        with cp.cuda.Stream(non_blocking=True) as stream:
            results = run_layer(layer, *(_to_gpu(cp, a) for a in (x, state)), lengths,
                                *(_to_gpu(cp, a) for a in (dy, dstate)))
            stream.synchronize()
        return results
    check_layer_parity(cfg, run_on_stream)


def test_mixed_numpy_and_cupy_arguments_raise_type_error(cp):
    lstm = rk.LSTM(3, 4, seed=0).to("cuda")
    x = np.zeros((5, 2, 3), np.float32)
    h0 = np.zeros((1, 2, 4), np.float32)
    with pytest.raises(TypeError, match="device"):
        lstm.forward(x)                                   # NumPy x, parameters on the GPU
    with pytest.raises(TypeError, match="one array library"):
        lstm.forward(cp.asarray(x), (h0, cp.asarray(h0)))
    y, _, tape = lstm.forward(cp.asarray(x))
    with pytest.raises(TypeError):
        lstm.backward(cp.asnumpy(y), tape)


@pytest.mark.skipif(DEVICES < 2, reason="needs two GPUs")
def test_layers_run_on_a_device_that_is_not_the_current_one(cp):
    """Parameters and data on GPU 1 while GPU 0 is current: forward (not only
    ``layer(x)``), a stacked bidirectional layer (concat), backward, a cell."""
    rng = np.random.default_rng(0)
    lstm = rk.LSTM(3, 4, num_layers=2, bidirectional=True, seed=0, dtype="float64")
    cell = rk.GRUCell(3, 4, seed=0, dtype="float64")
    x, dy = rng.standard_normal((5, 2, 3)), rng.standard_normal((5, 2, 8))
    expected = run_layer(lstm, x, None, [5, 3], dy, None)
    expected_h, expected_tape = cell.forward(x[0])
    expected_dx = cell.backward(np.ones((2, 4)), expected_tape)[0]
    with cp.cuda.Device(1):
        lstm.to("cuda")
        cell.to("cuda")
        x1, dy1 = cp.asarray(x), cp.asarray(dy)
    assert cp.cuda.Device().id == 0
    ours = run_layer(lstm, x1, None, [5, 3], dy1, None)
    assert_results_close(ours, expected, "float64", "the NumPy path")
    y, _, _ = lstm.forward(x1)
    assert y.device.id == 1
    h, tape = cell.forward(x1[0])
    with cp.cuda.Device(1):
        dh = cp.ones((2, 4))
    dx = cell.backward(dh, tape)[0]
    assert h.device.id == 1 and dx.device.id == 1
    np.testing.assert_allclose(h.get(), expected_h, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx.get(), expected_dx, rtol=1e-10, atol=1e-12)


@pytest.mark.skipif(DEVICES < 2, reason="needs two GPUs")
def test_arrays_on_different_devices_raise(cp):
    gru = rk.GRU(3, 4, seed=0).to("cuda")                # parameters on device 0
    with cp.cuda.Device(1):
        x = cp.zeros((5, 2, 3), cp.float32)
    with pytest.raises(TypeError, match="different devices"):
        gru.forward(x)


def test_lengths_forms_agree(cp):
    rnn = rk.RNN(3, 4, nonlinearity="relu", bidirectional=True, seed=1, dtype="float64").to("cuda")
    x = cp.asarray(np.random.default_rng(0).standard_normal((6, 3, 3)))
    outputs = [rnn(x, lengths=lengths)[0] for lengths in
               ([6, 2, 4], np.array([6, 2, 4]), cp.asarray([6, 2, 4], dtype=cp.int64))]
    for y in outputs[1:]:
        cp.testing.assert_array_equal(y, outputs[0])
    assert float(abs(outputs[0][2:, 1]).max()) == 0.0     # padded steps are zero


@pytest.fixture
def fresh_module_cache():
    """No compiled module of another test: get_kernel compiles again."""
    modules.clear_kernel_cache()
    yield
    modules.clear_kernel_cache()


def test_compile_error_names_kernel_and_options(tmp_path, monkeypatch, fresh_module_cache):
    folder = tmp_path / "kernels"
    shutil.copytree(modules.kernels_dir(), folder, ignore=shutil.ignore_patterns("*.py",
                                                                                 "__pycache__"))
    header = folder / "cells" / "lstm.cuh"
    header.write_text(header.read_text().replace("const T c = f * state[1]",
                                                 "const T c = f * c_previous"))
    monkeypatch.setattr(modules, "kernels_dir", lambda: folder)
    name = kernel_name(cell_for("lstm"), "forward", "float32")
    with pytest.raises(CudaKernelError) as raised:
        modules.get_kernel(name)
    message = str(raised.value)
    assert name in message and "-std=c++17" in message and "cells/lstm.cuh" in message


_FIRST_CALL = textwrap.dedent("""
    import json, os, time
    import cupy, cupy.cuda.compiler as compiler, numpy as np, rnnkern as rk
    compiles = []
    nvrtc = compiler._compile_using_nvrtc_no_warning     # every NVRTC compile of CuPy 14.2
    def counted(source, *args, **kwargs):
        compiles.append(len(source))
        return nvrtc(source, *args, **kwargs)
    compiler._compile_using_nvrtc_no_warning = counted
    x = cupy.asarray(np.ones((4, 2, 3), np.float32))
    start = time.perf_counter()
    lstm = rk.LSTM(3, 5, seed=0).to("cuda")
    y, _, tape = lstm.forward(x)
    lstm.backward(cupy.ones_like(y), tape)
    cupy.cuda.Device().synchronize()
    seconds = time.perf_counter() - start
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(os.environ["CUPY_CACHE_DIR"])
                   for f in fs)
    print(json.dumps({"seconds": seconds, "compiles": len(compiles),
                      "files": {f: os.stat(f).st_mtime_ns for f in files}}))
""")


def test_second_process_does_not_recompile(tmp_path, capsys):
    """CuPy's disk cache: a second process loads the kernels instead of compiling them."""
    env = dict(os.environ, CUPY_CACHE_DIR=str(tmp_path / "cupy-cache"))

    def first_call():
        done = subprocess.run([sys.executable, "-c", _FIRST_CALL], env=env, check=True,
                              capture_output=True, text=True)
        return json.loads(done.stdout.strip().splitlines()[-1])
    cold, warm = first_call(), first_call()
    assert cold["compiles"] > 0 and cold["files"], "nothing was compiled and cached"
    assert warm["compiles"] == 0, "the second process compiled again (CuPy < 14.2?)"
    assert warm["files"] == cold["files"], "the second process rewrote the cache"
    with capsys.disabled():
        print(f"\nfirst LSTM forward+backward in a new process (float32, incl. CuPy's own "
              f"kernels): cold cache {cold['seconds']:.2f} s, warm cache {warm['seconds']:.2f} s")


@pytest.mark.slow
def test_offsets_beyond_two_to_the_31(cp):
    """T*B*4H > 2**31 elements per buffer; checked on the last step.

    With W_hh = 0 and the forget gate shut (sigmoid(-200) = 0) every step
    depends on its own x_t only, so the last step of the long sequence must
    equal a sequence of one step, forward and backward (dy on the last step
    only).  About 35 GB of GPU memory.
    """
    T, B, I, H = 2049, 256, 1, 1024          # T*B*4H = 2_148_532_224 > 2**31
    lstm = rk.LSTM(I, H, seed=0)
    params = lstm.state_dict()
    params["weight_hh_l0"][...] = 0
    params["bias_ih_l0"][H:2 * H] = -200.0
    lstm.load_state_dict(params)
    lstm.to("cuda")
    x = cp.asarray(np.random.default_rng(0).standard_normal((T, B, I)).astype(np.float32))
    dy = cp.zeros((T, B, H), cp.float32)
    dy[-1] = 1.0
    y, (h, c), tape = lstm.forward(x)
    dx, _, grads = lstm.backward(dy, tape)
    y1, (h1, c1), tape1 = lstm.forward(x[-1:])
    dx1, _, grads1 = lstm.backward(dy[-1:], tape1)
    cp.testing.assert_allclose(y[-1], y1[0], rtol=1e-6, atol=1e-7)
    cp.testing.assert_allclose(c, c1, rtol=1e-6, atol=1e-7)
    cp.testing.assert_allclose(dx[-1], dx1[0], rtol=1e-6, atol=1e-7)
    assert float(abs(dx[:-1]).max()) == 0.0
    cp.testing.assert_allclose(grads["weight_ih_l0"], grads1["weight_ih_l0"], rtol=1e-5, atol=1e-6)


_SPIN = r"""
extern "C" __global__ void spin(long long cycles) {
    const long long start = clock64();
    while (clock64() - start < cycles) {}
}
"""


@pytest.mark.parametrize("lengths_on", ["cupy", "none"])
def test_forward_does_not_wait_for_the_stream(cp, lengths_on):
    """``forward`` (with CuPy lengths too) only enqueues work: it returns
    while a long kernel queued before it still runs."""
    lstm = rk.LSTM(3, 4, num_layers=2, bidirectional=True, seed=0).to("cuda")
    x = cp.ones((6, 3, 3), cp.float32)
    lengths = cp.asarray([6, 2, 4]) if lengths_on == "cupy" else None
    lstm.forward(x, lengths=lengths)                   # compiled, cuBLAS handle made
    stream = cp.cuda.get_current_stream()
    stream.synchronize()
    cp.RawKernel(_SPIN, "spin")((1,), (1,), (np.int64(4_000_000_000),))   # ~2 s
    y, _, tape = lstm.forward(x, lengths=lengths)
    still_running = not stream.done
    stream.synchronize()
    assert still_running, "forward waited for the GPU (a host synchronisation)"
    assert y.shape == (6, 3, 8)


@pytest.mark.slow
def test_index_math_beyond_two_to_the_31_in_one_step(cp):
    """B*4H > 2**31 at T = 1: the kernels' own index math (64-bit here).

    Rows are independent, so the last rows (indices past 2**31) must equal
    the same rows run as a small batch, forward and dx.  About 60 GB."""
    B, I, H = 2 ** 19 + 3, 1, 1024                     # B * 4H = 2_147_495_936 > 2**31
    assert modules.index_type(cell_for("lstm"), B, H, 2 ** 24) == "long long"
    lstm = rk.LSTM(I, H, seed=0).to("cuda")
    x = cp.asarray(np.random.default_rng(0).standard_normal((1, B, I)).astype(np.float32))
    y, (h, c), tape = lstm.forward(x)
    dx, _, _ = lstm.backward(cp.ones_like(y), tape)
    tail = slice(B - 4, B)
    y1, (h1, c1), tape1 = lstm.forward(x[:, tail])
    dx1, _, _ = lstm.backward(cp.ones_like(y1), tape1)
    cp.testing.assert_allclose(y[:, tail], y1, rtol=1e-6, atol=1e-6)
    cp.testing.assert_allclose(c[:, tail], c1, rtol=1e-6, atol=1e-6)
    cp.testing.assert_allclose(dx[:, tail], dx1, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("H", [256, 1000, 1024])
@pytest.mark.parametrize("B", [1, 8])
def test_persistent_path_at_the_benchmark_sizes(cp, cell, B, H):
    """A full-size persistent plan (about one block per SM, >48 KiB of shared
    memory at H=1024): one launch per direction, the same results as the step path."""
    from rnnkern.backends.cuda import cupy_launcher

    launcher = cupy_launcher()
    plan = planner.plan_direction(cell, "float32", B, H, projected=False,
                                  limits=launcher.device_limits(), choice="auto")
    if plan.path != "persistent":
        pytest.skip(f"this GPU takes the step path here: {plan.describe()}")
    layer = make_layer(cell, 64, H, 1, dtype="float32", seed=3)
    layer.to("cuda")
    rng = np.random.default_rng(3)
    x = cp.asarray(rng.standard_normal((20, B, 64)).astype(np.float32))
    dy = cp.asarray(rng.standard_normal((20, B, H)).astype(np.float32))
    results = {}
    for path in ("persistent", "step"):
        with planner.use_path(path):
            launcher.counts.clear()
            results[path] = run_layer(layer, x, None, None, dy, None)
            counts = dict(launcher.counts)
        if path == "persistent":
            assert counts["kernels"] == 2, counts          # forward + backward
    assert_results_close(results["persistent"], results["step"], "float32", "the step path")
