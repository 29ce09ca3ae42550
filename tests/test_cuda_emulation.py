"""The CUDA path without a GPU: the .cu kernels built by g++ and run on NumPy.

``rnnkern.backends.cuda.emulation`` compiles kernels/cuda (the step kernels
and every cell header) against the host shim and runs them through the CUDA
backend's own orchestration (time loop, GEMMs, buffers), so these tests check
the kernels AND the code that drives them, against the oracles, the NumPy
path and the array-API cell steps.
"""

import os
import re
import shlex
import shutil
import subprocess
import sys

import numpy as np
import pytest

import rnnkern.recurrent
from conftest import make_layer
from cuda_parity import (LAYER_CASES, STEP_LAUNCHES, STEP_SEEDS, STEP_SHAPES,
                         assert_results_close, check_layer_parity, check_step_kernels, run_layer,
                         to_numpy)
from rnnkern.backends.cuda import modules, planner
from rnnkern.backends.cuda.driver import backend_with, forward_step_arguments
from rnnkern.backends.cuda.emulation import (EmulatedLauncher, build_library, emulated_backend,
                                             fma_flags)
from rnnkern.backends.cuda.modules import CudaKernelError, elementwise_launch, kernel_name
from rnnkern.cells import cell_for

_CXX = shlex.split(os.environ.get("CXX", "g++"))[0]
pytestmark = [
    pytest.mark.skipif(shutil.which(_CXX) is None,
                       reason=f"the host emulation needs a C++ compiler ({_CXX}, or set $CXX)"),
    pytest.mark.timeout(300),
]


@pytest.fixture(scope="module")
def launcher():
    return EmulatedLauncher()


@pytest.fixture
def emulated(monkeypatch):
    """The layers run on the emulated CUDA backend while this fixture is active."""
    monkeypatch.setattr(rnnkern.recurrent, "backend_for", lambda xp: emulated_backend())


@pytest.mark.parametrize("launch", STEP_LAUNCHES, ids=["backend-launch", "grid2x32"])
@pytest.mark.parametrize("B,H", STEP_SHAPES, ids=[f"B{b}H{h}" for b, h in STEP_SHAPES])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_step_kernels_match_cell_equations(launcher, cell, dtype, B, H, launch):
    check_step_kernels(launcher, cell, dtype, B, H, launch)


@pytest.mark.parametrize("seed", STEP_SEEDS)
@pytest.mark.parametrize("B,H", [(16, 64), (32, 128)], ids=["B16H64", "B32H128"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_step_kernel_tolerance_holds_for_other_seeds(launcher, cell, dtype, B, H, seed):
    """The ulp-based tolerance is no accident of one seed (FMA and the
    2-ulp expf/tanhf of the emulation included)."""
    check_step_kernels(launcher, cell, dtype, B, H, None, seed=seed)


@pytest.mark.parametrize("launch", STEP_LAUNCHES, ids=["backend-launch", "grid2x32"])
@pytest.mark.parametrize("B,H", [(3, 5), (16, 64)], ids=["B3H5", "B16H64"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_64_bit_index_kernels_match_cell_equations(launcher, cell, dtype, B, H, launch):
    """The ``long long`` instantiations, which only shapes beyond 2^31
    elements select, run here on small shapes."""
    check_step_kernels(launcher, cell, dtype, B, H, launch, index="long long")


def test_index_type_switches_at_two_to_the_31(cell):
    widest = max([cell.num_gates, *(s.width for s in cell.saved)])
    threads = 2 ** 24
    batch = (modules.INT32_LIMIT - threads) // (widest * 1024)
    assert modules.index_type(cell, batch, 1024, threads) == "int"
    assert modules.index_type(cell, batch + 1, 1024, threads) == "long long"
    assert modules.index_type(cell, 2 ** 20, 2 ** 20, 256) == "long long"
    assert modules.index_type(cell, 32, 128, 4096) == "int"


def test_layer_runs_the_64_bit_kernels_where_indices_exceed_the_limit(cell, monkeypatch):
    """With the 32-bit limit lowered below B*G*H the driver launches the
    ``long long`` kernels (as it does beyond 2^31 elements), and they agree
    with the NumPy path; at the real limit it launches the ``int`` ones."""
    launched = []
    launcher = EmulatedLauncher()
    run_kernel = launcher._launch           # what runs, launched or replayed in a graph
    monkeypatch.setattr(launcher, "_launch", lambda name, *rest: (launched.append(name),
                                                                  run_kernel(name, *rest))[1])
    backend = backend_with(launcher)
    layer = make_layer(cell, 3, 6, 1, bidirectional=True, dtype="float64", seed=2)
    x = np.random.default_rng(2).standard_normal((4, 5, 3))
    dy = np.ones((4, 5, 12))
    expected = run_layer(layer, x, None, [4, 1, 3, 4, 2], dy, None)
    monkeypatch.setattr(rnnkern.recurrent, "backend_for", lambda xp: backend)
    with planner.use_path("step"):
        run_layer(layer, x, None, [4, 1, 3, 4, 2], dy, None)
        assert launched and all(name.endswith(", int>") for name in launched)
        launched.clear()
        monkeypatch.setattr(modules, "INT32_LIMIT", 5 * 6)   # B*H fits, B*G*H does not
        launcher.graphs.clear()             # captured with the int kernels
        ours = run_layer(layer, x, None, [4, 1, 3, 4, 2], dy, None)
    assert launched and all(name.endswith(", long long>") for name in launched)
    assert_results_close(ours, expected, "float64", "the NumPy path")


def test_emulation_contracts_into_fma_as_nvrtc_does(launcher):
    """c_t = f c_{t-1} + i g as a fused multiply-add, not two rounded products.

    Where rounding f c_{t-1} first gives another float32 than one FMA (of
    either product), the LSTM forward kernel must give an FMA's result."""
    if not fma_flags():
        pytest.skip("the host CPU has no FMA instruction (emulation rounds every product)")
    B, H = 64, 64
    rng = np.random.default_rng(0)
    f32 = np.float32
    gx, gh = rng.standard_normal((B, 4 * H)).astype(f32), np.zeros((B, 4 * H), f32)
    h, c = rng.standard_normal((B, H)).astype(f32), rng.standard_normal((B, H)).astype(f32)
    out = [np.empty((B, H), f32), np.empty((B, H), f32)]
    saved = np.empty((B, 4 * H), f32)
    args = forward_step_arguments(out, np.empty((B, H), f32), [saved], gx, gh,
                                  np.zeros(4 * H, f32), [h, c], np.full(B, 4, np.int32), 0, B, H)
    launcher.launch(kernel_name(LSTM, "forward", "float32"), *elementwise_launch(B * H), args)
    i, f, g = (saved[:, k * H:(k + 1) * H].astype(np.float64) for k in range(3))
    c64 = c.astype(np.float64)
    unfused = (f * c64).astype(f32) + (i * g).astype(f32)
    fused = [(f * c64 + (i * g).astype(f32)).astype(f32),      # fma(f, c, i g)
             ((f * c64).astype(f32) + i * g).astype(f32)]      # fma(i, g, f c)
    differ = (unfused != fused[0]) & (unfused != fused[1])
    assert differ.sum() > 10                      # the inputs do tell the two apart
    assert ((out[1] == fused[0]) | (out[1] == fused[1]))[differ].all()


@pytest.mark.parametrize("cfg", LAYER_CASES)
def test_layer_matches_oracle_and_numpy_path(cfg, monkeypatch):
    """The step path (its graphs replayed); tests/test_cuda_persistent.py runs the
    same cases on the persistent path."""
    def run_emulated(layer, x, state, lengths, dy, dstate):
        with monkeypatch.context() as patch, planner.use_path("step"):
            patch.setattr(rnnkern.recurrent, "backend_for", lambda xp: emulated_backend())
            return run_layer(layer, x, state, lengths, dy, dstate)
    check_layer_parity(cfg, run_emulated)


def test_unbatched_input_matches_numpy_path(cell, monkeypatch):
    layer = make_layer(cell, 3, 6, 2, bidirectional=True, dtype="float64", seed=5)
    x = np.random.default_rng(5).standard_normal((7, 3))
    expected = run_layer(layer, x, None, None, np.ones((7, 12)), None)
    monkeypatch.setattr(rnnkern.recurrent, "backend_for", lambda xp: emulated_backend())
    ours = run_layer(layer, x, None, None, np.ones((7, 12)), None)
    assert ours["dx"].shape == x.shape
    assert_results_close(ours, expected, "float64", "the NumPy path")


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_inference_matches_forward(cell, bidirectional, emulated):
    """``layer(x)`` keeps no tape (two state slots, one saved step): same y and state."""
    rng = np.random.default_rng(3)
    layer = make_layer(cell, 3, 5, 2, bidirectional=bidirectional, dtype="float64", seed=3)
    x = rng.standard_normal((6, 4, 3))
    lengths = [6, 2, 5, 1]
    y, state, _ = layer.forward(x, lengths=lengths)
    y_inference, state_inference = layer(x, lengths=lengths)
    np.testing.assert_array_equal(to_numpy(y_inference), to_numpy(y))
    pairs = zip(state_inference if cell.num_states > 1 else [state_inference],
                state if cell.num_states > 1 else [state], strict=True)
    for a, b in pairs:
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------
# The emulator's own checks: what a GPU would get wrong silently.
# ---------------------------------------------------------------------------

ELMAN = cell_for("rnn_tanh")
LSTM = cell_for("lstm")


def _rnn_forward_args(B=2, H=3, dtype=np.float64):
    """Valid arguments of the Elman forward step kernel in parameter order."""
    z = np.zeros((B, H), dtype)
    return forward_step_arguments([z.copy()], z.copy(), [z.copy()], z.copy(), z.copy(),
                                  np.zeros(H, dtype), [z.copy()], np.full(B, 4, np.int32), 0, B, H)


RNN_FORWARD = kernel_name(ELMAN, "forward", "float64")
LAUNCH = ((1,), (32,))


def test_valid_arguments_run(launcher):
    launcher.launch(RNN_FORWARD, *LAUNCH, _rnn_forward_args())


@pytest.mark.parametrize("position,bad,message", [
    (9, 2, "exactly typed NumPy scalar"),                   # a Python int for `int batch`
    (9, np.int64(2), "parameter is i4"),                    # wrong width
    (7, np.full(2, 4, np.int64), "parameter is const i4*"), # int64 lengths for const int*
    (1, np.zeros((2, 3), np.float32), "parameter is f8*"),  # float32 array for double* y_t
    (1, np.zeros((3, 2)).T, "not C-contiguous"),
    (0, (np.zeros((2, 3), np.float32),), r"parameter is f8\*\[1\]"),   # float32 in a group
    (0, (np.zeros((2, 3)), np.zeros((2, 3))), r"parameter is f8\*\[1\]"),  # 2 arrays for 1
    (0, np.zeros((2, 3)), r"parameter is f8\*\[1\]"),       # an array for a group
    (6, (np.zeros((3, 2)).T,), r"argument 6\[0\].*not C-contiguous"),
    (2, (), "empty group"),
], ids=["python-int", "int64-scalar", "int64-lengths", "float32-array", "non-contiguous",
        "float32-in-group", "group-too-long", "array-for-group", "non-contiguous-in-group",
        "empty-group"])
def test_badly_typed_arguments_are_refused(launcher, position, bad, message):
    args = _rnn_forward_args()
    args[position] = bad
    with pytest.raises(CudaKernelError, match=message):
        launcher.launch(RNN_FORWARD, *LAUNCH, args)


def test_overlapping_output_is_refused(launcher):
    args = _rnn_forward_args()
    args[1] = args[0][0]                  # y_t aliases the new h: distinct arrays broken
    with pytest.raises(CudaKernelError, match="overlaps"):
        launcher.launch(RNN_FORWARD, *LAUNCH, args)


def test_overlapping_group_members_are_refused(launcher):
    B, H = 2, 3
    h, c = np.zeros((B, H)), np.zeros((B, H))
    args = forward_step_arguments([h, h], np.zeros((B, H)), [np.zeros((B, 4 * H))],
                                  np.zeros((B, 4 * H)), np.zeros((B, 4 * H)), np.zeros(4 * H),
                                  [c.copy(), c.copy()], np.full(B, 4, np.int32), 0, B, H)
    with pytest.raises(CudaKernelError, match=r"output argument 0\[0\] overlaps argument 0\[1\]"):
        launcher.launch(kernel_name(LSTM, "forward", "float64"), *LAUNCH, args)


def test_out_of_bounds_write_is_caught(launcher):
    args = _rnn_forward_args()
    args[0] = (np.zeros((2, 2)),)         # the new h one row of H short
    with pytest.raises(CudaKernelError, match="outside argument 0"):
        launcher.launch(RNN_FORWARD, *LAUNCH, args)


@pytest.mark.parametrize("grid,block", [((0,), (32,)), ((1,), (2048,)), ((1,), (48,))])
def test_bad_launch_configuration_is_refused(launcher, grid, block):
    with pytest.raises(CudaKernelError, match=RNN_FORWARD.split("<")[0]):
        launcher.launch(RNN_FORWARD, grid, block, _rnn_forward_args())


def test_unknown_kernel_is_named(launcher):
    with pytest.raises(CudaKernelError, match="rnn_forward_step<half, LstmCell>"):
        launcher.launch("rnn_forward_step<half, LstmCell>", *LAUNCH, [])


def _copy_kernels(tmp_path):
    folder = tmp_path / "kernels"
    shutil.copytree(modules.kernels_dir(), folder, ignore=shutil.ignore_patterns("*.py",
                                                                                 "__pycache__"))
    return folder


def test_compile_error_names_kernel_and_options(tmp_path, monkeypatch):
    folder = _copy_kernels(tmp_path)
    header = folder / "cells" / "elman.cuh"
    header.write_text(header.read_text().replace("const T h = Activation::forward",
                                                 "const T h = Activation::forwardd"))
    monkeypatch.setattr(modules, "kernels_dir", lambda: folder)
    monkeypatch.setenv("RNNKERN_CACHE_DIR", str(tmp_path / "cache"))
    name = kernel_name(cell_for("rnn_relu"), "forward", "float32")
    with pytest.raises(CudaKernelError) as raised:
        build_library("step_kernels.cu", name)
    message = str(raised.value)
    assert name in message and "-std=c++17" in message
    assert "forwardd" in message                                 # the compiler's own words
    assert "cells/elman.cuh:" in message       # #line: the header's own name, though inlined


@pytest.mark.parametrize("header", ["activations.cuh", "cell.cuh", "cells/lstm.cuh"])
def test_edited_header_changes_the_module_code(tmp_path, monkeypatch, header):
    """CuPy's disk cache keys on the code string: a header edit must change it."""
    folder = _copy_kernels(tmp_path)
    monkeypatch.setattr(modules, "kernels_dir", lambda: folder)
    before = modules.module_code("step_kernels.cu")
    path = folder / header
    path.write_text(path.read_text() + "\n// edited\n")
    assert modules.module_code("step_kernels.cu") != before


def test_new_cell_header_is_compiled_in(tmp_path, monkeypatch):
    """Every header of cells/ is part of the module: a new cell needs no include line."""
    folder = _copy_kernels(tmp_path)
    monkeypatch.setattr(modules, "kernels_dir", lambda: folder)
    (folder / "cells" / "zz_new.cuh").write_text("#pragma once\nstruct ZzNewCell {};\n")
    code = modules.module_code("step_kernels.cu")
    assert '#line 1 "cells/zz_new.cuh"' in code and "struct ZzNewCell {};" in code


def test_module_code_is_self_contained():
    """No #include of ours is left for a compiler to resolve (against the
    working directory, say); each header is inlined once."""
    code = modules.module_code("step_kernels.cu")
    assert re.findall(r'^\s*#\s*include\s*"', code, re.M) == []
    assert re.findall(r"^\s*#\s*pragma\s+once", code, re.M) == []   # a warning in a main file
    assert code.count("struct SavedWidths {") == 1 and code.count("struct DeviceMath<float> {") == 1


def test_stray_header_in_the_working_directory_is_not_compiled(tmp_path, monkeypatch):
    """A user's own activations.cuh (here: one that cannot compile) beside
    them changes nothing: the emulation builds from module_code."""
    for name in ("activations.cuh", "cell.cuh", "step_kernels.cu", "host_shim.h"):
        (tmp_path / name).write_text('#error "a stray header was compiled"\n')
    (tmp_path / "cells").mkdir()
    (tmp_path / "cells" / "lstm.cuh").write_text('#error "a stray header was compiled"\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RNNKERN_CACHE_DIR", str(tmp_path / "cache"))
    library = build_library("step_kernels.cu")
    assert library.exists()


def test_every_name_expression_is_exported(launcher):
    for names in modules.KERNEL_SOURCES.values():
        for name in names:
            assert launcher.kernel(name).name == name


def test_kernel_groups_match_the_registry(launcher, cell):
    """The cell header's counts (states, saved arrays, step gradients) are the registry's."""
    def group_sizes(step):
        parameters = launcher.kernel(kernel_name(cell, step, "float64")).parameters
        return [p.count for p in parameters if p.count is not None]
    states, saved, gradients = len(cell.state_names), len(cell.saved), len(cell.step_gradients)
    assert group_sizes("forward") == [states, saved, states]
    assert group_sizes("backward") == [gradients, states, states, saved, states]


def test_importing_the_cuda_modules_does_not_import_cupy():
    code = ("import sys, rnnkern.backends.cuda.emulation, rnnkern.backends.cuda; "
            "assert 'cupy' not in sys.modules, 'cupy imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------
# What the CuPy path does around the kernels, shown with stand-ins for CuPy.
# ---------------------------------------------------------------------------

class _RecordingDevice:
    """A stand-in for ``cupy.cuda.Device``: a context manager that records use."""

    def __init__(self):
        self.entered = 0

    def __enter__(self):
        self.entered += 1
        return self

    def __exit__(self, *exc):
        return False


class _ArrayOnDevice:
    """An object with a CuPy-like ``device``; no array library accepts it."""

    def __init__(self):
        self.device = _RecordingDevice()


def test_device_context_picks_the_first_device_array():
    from rnnkern.devices import device_context

    on_device = _ArrayOnDevice()
    assert device_context(np.zeros(2), None, [1, 2], (np.ones(1), on_device)) is on_device.device
    context = device_context(np.zeros(2), None)       # NumPy's device is the string "cpu"
    assert not isinstance(context, _RecordingDevice)
    with context:
        pass


@pytest.mark.parametrize("call", ["forward", "backward", "cell-forward", "cell-backward"])
def test_layers_run_under_the_device_of_their_arrays(call):
    """Multi-GPU: ``forward``/``backward`` of layers and cells enter the
    arrays' device before making any array (CuPy allocates on the current
    device); the stand-in array is then refused by the namespace check."""
    import rnnkern as rk

    on_device = _ArrayOnDevice()
    layer, cell = rk.LSTM(3, 4), rk.LSTMCell(3, 4)
    tape = layer.forward(np.zeros((2, 1, 3), np.float32))[2]
    cell_tape = cell.forward(np.zeros((1, 3), np.float32))[1]
    run = {"forward": lambda: layer.forward(on_device),
           "backward": lambda: layer.backward(on_device, tape),
           "cell-forward": lambda: cell.forward(on_device),
           "cell-backward": lambda: cell.backward((on_device, on_device), cell_tape)}[call]
    with pytest.raises(TypeError):
        run()
    assert on_device.device.entered == 1


class _CupyLengths:
    """A stand-in for a CuPy int64 array: reading its values would be a host sync."""

    __module__ = "cupy"
    dtype, ndim, shape = np.dtype(np.int64), 1, (3,)

    def __array_namespace__(self, api_version=None):
        return np

    def get(self):
        raise AssertionError("the lengths were copied to the host (a stream synchronisation)")

    def __iter__(self):
        raise AssertionError("the lengths were read on the host")


def test_cupy_lengths_are_checked_without_reading_them_back():
    from rnnkern.validation import host_lengths

    lengths = _CupyLengths()
    assert host_lengths(lengths, 3, 5, np) is lengths
    with pytest.raises(ValueError, match="expected 4 lengths"):
        host_lengths(lengths, 4, 5, np)
