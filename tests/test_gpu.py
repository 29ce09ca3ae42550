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
from cuda_parity import (LAYER_CASES, STEP_LAUNCHES, STEP_SHAPES, check_layer_parity,
                         check_step_kernels, run_layer)
from rnnkern.backends.cuda import modules
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


@pytest.mark.parametrize("cfg", LAYER_CASES)
def test_layer_matches_oracle_and_numpy_path(cp, cfg):
    def run_on_gpu(layer, x, state, lengths, dy, dstate):
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
    assert name in message and "-std=c++17" in message and f"-I{folder}" in message


_FIRST_CALL = textwrap.dedent("""
    import json, os, time
    import cupy, numpy as np, rnnkern as rk
    x = cupy.asarray(np.ones((4, 2, 3), np.float32))
    start = time.perf_counter()
    lstm = rk.LSTM(3, 5, seed=0).to("cuda")
    y, _, tape = lstm.forward(x)
    lstm.backward(cupy.ones_like(y), tape)
    cupy.cuda.Device().synchronize()
    seconds = time.perf_counter() - start
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(os.environ["CUPY_CACHE_DIR"])
                   for f in fs)
    print(json.dumps({"seconds": seconds, "files": files}))
""")


def test_second_process_does_not_recompile(tmp_path, capsys):
    """CuPy's disk cache: a second process loads the kernels instead of compiling them."""
    env = dict(os.environ, CUPY_CACHE_DIR=str(tmp_path / "cupy-cache"))

    def first_call():
        done = subprocess.run([sys.executable, "-c", _FIRST_CALL], env=env, check=True,
                              capture_output=True, text=True)
        return json.loads(done.stdout.strip().splitlines()[-1])
    cold, warm = first_call(), first_call()
    assert cold["files"], "nothing was cached"
    assert warm["files"] == cold["files"], "the second process compiled again"
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
