"""The CUDA path without a GPU: the .cu kernels built by g++ and run on NumPy.

``rnnkern.cuda_emulation`` compiles kernels/*.cu against the host shim and
runs them through the CuPy backend's own orchestration (time loop, GEMMs,
buffers), so these tests check the kernels AND the code that drives them,
against torch, the NumPy path and the array-API cell steps.
"""

import os
import shlex
import shutil
import subprocess
import sys

import numpy as np
import pytest

import rnnkern as rk
import rnnkern.layers
from cuda_parity import (LAYER_CASES, LAYERS, STEP_LAUNCHES, STEP_SHAPES, assert_results_close,
                         check_layer_parity, check_step_kernels, run_layer)
from rnnkern import cuda_modules
from rnnkern.cuda_emulation import EmulatedLauncher, build_library, emulated_backend
from rnnkern.cuda_modules import CudaKernelError, kernel_name

_CXX = shlex.split(os.environ.get("CXX", "g++"))[0]
pytestmark = [
    pytest.mark.skipif(shutil.which(_CXX) is None,
                       reason=f"the host emulation needs a C++ compiler ({_CXX}, or set $CXX)"),
    pytest.mark.timeout(300),
]


@pytest.fixture(scope="module")
def launcher():
    return EmulatedLauncher()


@pytest.mark.parametrize("launch", STEP_LAUNCHES, ids=["backend-launch", "grid2x32"])
@pytest.mark.parametrize("B,H", STEP_SHAPES, ids=[f"B{b}H{h}" for b, h in STEP_SHAPES])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
def test_step_kernels_match_cell_equations(launcher, cell, dtype, B, H, launch):
    check_step_kernels(launcher, cell, dtype, B, H, launch)


@pytest.mark.parametrize("cfg", LAYER_CASES)
def test_layer_matches_torch_and_numpy_path(cfg, monkeypatch):
    def run_emulated(layer, x, state, lengths, dy, dstate):
        with monkeypatch.context() as patch:
            patch.setattr(rnnkern.layers, "backend_for", lambda xp: emulated_backend())
            return run_layer(layer, x, state, lengths, dy, dstate)
    check_layer_parity(cfg, run_emulated)


@pytest.mark.parametrize("cell", sorted(LAYERS))
def test_unbatched_input_matches_numpy_path(cell, monkeypatch):
    name, extra = LAYERS[cell]
    layer = getattr(rk, name)(3, 6, 2, bidirectional=True, dtype="float64", seed=5, **extra)
    x = np.random.default_rng(5).standard_normal((7, 3))
    expected = run_layer(layer, x, None, None, np.ones((7, 12)), None)
    monkeypatch.setattr(rnnkern.layers, "backend_for", lambda xp: emulated_backend())
    ours = run_layer(layer, x, None, None, np.ones((7, 12)), None)
    assert ours["dx"].shape == x.shape
    assert_results_close(ours, expected, "float64", "the NumPy path")


# ---------------------------------------------------------------------------
# The emulator's own checks: what a GPU would get wrong silently.
# ---------------------------------------------------------------------------

def _rnn_forward_args(B=2, H=3, dtype=np.float64):
    """Valid arguments of rnn_forward_step in parameter order."""
    z = np.zeros((B, H), dtype)
    return [z.copy(), z.copy(), z.copy(), z.copy(), z.copy(), np.zeros(H, dtype), z.copy(),
            np.full(B, 4, np.int32), np.int32(0), np.int32(B), np.int32(H)]


RNN_FORWARD = kernel_name("rnn_tanh", "forward", "float64")
LAUNCH = ((1,), (32,))


def test_valid_arguments_run(launcher):
    launcher.launch(RNN_FORWARD, *LAUNCH, _rnn_forward_args())


@pytest.mark.parametrize("position,bad,message", [
    (9, 2, "exactly typed NumPy scalar"),                   # a Python int for `int batch`
    (9, np.int64(2), "parameter is i4"),                    # wrong width
    (7, np.full(2, 4, np.int64), "parameter is const i4*"), # int64 lengths for const int*
    (0, np.zeros((2, 3), np.float32), "parameter is f8*"),  # float32 array for double*
    (0, np.zeros((3, 2)).T, "not C-contiguous"),
], ids=["python-int", "int64-scalar", "int64-lengths", "float32-array", "non-contiguous"])
def test_badly_typed_arguments_are_refused(launcher, position, bad, message):
    args = _rnn_forward_args()
    args[position] = bad
    with pytest.raises(CudaKernelError, match=message):
        launcher.launch(RNN_FORWARD, *LAUNCH, args)


def test_overlapping_output_is_refused(launcher):
    args = _rnn_forward_args()
    args[1] = args[0]                     # y_t aliases h_next: __restrict__ broken
    with pytest.raises(CudaKernelError, match="overlaps"):
        launcher.launch(RNN_FORWARD, *LAUNCH, args)


def test_out_of_bounds_write_is_caught(launcher):
    args = _rnn_forward_args()
    args[0] = np.zeros((2, 2))            # h_next one row of H short
    with pytest.raises(CudaKernelError, match="outside argument 0"):
        launcher.launch(RNN_FORWARD, *LAUNCH, args)


@pytest.mark.parametrize("grid,block", [((0,), (32,)), ((1,), (2048,)), ((1,), (48,))])
def test_bad_launch_configuration_is_refused(launcher, grid, block):
    with pytest.raises(CudaKernelError, match=RNN_FORWARD.split("<")[0]):
        launcher.launch(RNN_FORWARD, grid, block, _rnn_forward_args())


def test_unknown_kernel_is_named(launcher):
    with pytest.raises(CudaKernelError, match="lstm_forward_step<half>"):
        launcher.launch("lstm_forward_step<half>", *LAUNCH, [])


def _copy_kernels(tmp_path):
    folder = tmp_path / "kernels"
    shutil.copytree(cuda_modules.kernels_dir(), folder, ignore=shutil.ignore_patterns("*.py",
                                                                                      "__pycache__"))
    return folder


def test_compile_error_names_kernel_and_options(tmp_path, monkeypatch):
    folder = _copy_kernels(tmp_path)
    source = folder / "rnn_cells.cu"
    source.write_text(source.read_text().replace("const T h = Activation::forward",
                                                 "const T h = Activation::forwardd"))
    monkeypatch.setattr(cuda_modules, "kernels_dir", lambda: folder)
    monkeypatch.setenv("RNNKERN_CACHE_DIR", str(tmp_path / "cache"))
    name = kernel_name("rnn_relu", "forward", "float32")
    with pytest.raises(CudaKernelError) as raised:
        build_library("rnn_cells.cu", name)
    message = str(raised.value)
    assert name in message and "-std=c++17" in message and f"-I{folder}" in message
    assert "forwardd" in message                                 # the compiler's own words


def test_edited_header_changes_the_module_code(tmp_path, monkeypatch):
    """CuPy's disk cache keys on the code string: a header edit must change it."""
    folder = _copy_kernels(tmp_path)
    monkeypatch.setattr(cuda_modules, "kernels_dir", lambda: folder)
    before = cuda_modules.module_code("rnn_cells.cu")
    header = folder / "activations.cuh"
    header.write_text(header.read_text() + "\n// edited\n")
    assert cuda_modules.module_code("rnn_cells.cu") != before


def test_every_name_expression_is_exported(launcher):
    for names in cuda_modules.KERNEL_SOURCES.values():
        for name in names:
            assert launcher._kernel(name).name == name


def test_importing_the_cuda_modules_does_not_import_cupy():
    code = ("import sys, rnnkern.cuda_emulation, rnnkern.backends.cupy_backend; "
            "assert 'cupy' not in sys.modules, 'cupy imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
