"""Compile check: every CUDA source with every instantiation, through NVRTC.

Needs no GPU: CuPy's low-level NVRTC binding only needs the NVRTC library
(the ``nvidia-cuda-nvrtc`` wheel of the ``test`` extra, or a CUDA toolkit).
The program is built exactly as ``RawModule`` builds it: the code string of
``module_code``, the name expressions of ``KERNEL_SOURCES``, the options of
``compile_options`` plus those CuPy adds itself (below), for a few GPU
architectures.
"""

import contextlib
import re
import sys
import types

import pytest

from rnnkern.backends.cuda.modules import KERNEL_SOURCES, compile_options, module_code


def _nvrtc():
    try:
        from cupy.cuda import nvrtc

        nvrtc.getVersion()
    except Exception as err:     # no CuPy, or CuPy without an NVRTC library
        pytest.skip(f"NVRTC is not available ({type(err).__name__}: {err}); "
                    f"install rnnkern[test] for the nvidia-cuda-nvrtc wheel")
    return nvrtc


# What CuPy 14's compiler adds to a RawModule's options for NVRTC
# (cupy/cuda/compiler.py: _compile_with_cache_cuda and
# _compile_using_nvrtc_no_warning); it compiles to a cubin (-arch=sm_XX).
CUPY_ADDED_OPTIONS = ("-ftz=true", "--device-as-default-execution-space")
# Turing (oldest CUDA 13 supports), Ampere, Hopper.
ARCHITECTURES = ["sm_75", "sm_80", "sm_90"]


@contextlib.contextmanager
def compiled_program(source, arch, program_name=None):
    """The NVRTC program of ``source`` with every name expression, compiled for ``arch``.

    ``program_name`` defaults to ``source``; CuPy passes ``""`` when it keeps
    its cache in memory (``CUPY_CACHE_IN_MEMORY=1``).
    """
    nvrtc = _nvrtc()
    options = [*compile_options(), *CUPY_ADDED_OPTIONS, f"-arch={arch}"]
    program = nvrtc.createProgram(module_code(source), source if program_name is None
                                  else program_name, [], [])
    try:
        for name in KERNEL_SOURCES[source]:
            nvrtc.addNameExpression(program, name)
        try:
            nvrtc.compileProgram(program, options)
        except nvrtc.NVRTCError as err:
            pytest.fail(f"{source} with options {options}: {err}\n"
                        f"{nvrtc.getProgramLog(program)}")
        yield nvrtc, program
    finally:
        nvrtc.destroyProgram(program)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("source", sorted(KERNEL_SOURCES))
def test_every_instantiation_compiles(source, arch):
    names = KERNEL_SOURCES[source]
    with compiled_program(source, arch) as (nvrtc, program):
        log = nvrtc.getProgramLog(program)
        assert "warning" not in log.lower(), log
        lowered = [nvrtc.getLoweredName(program, name) for name in names]
        assert len(set(lowered)) == len(names)     # one distinct kernel per expression
        assert nvrtc.getCUBIN(program)


def kernel_ptx(source):
    """{name expression: the PTX of its entry} for every kernel of ``source`` (compute_90)."""
    with compiled_program(source, "compute_90") as (nvrtc, program):
        ptx = nvrtc.getPTX(program)
        ptx = ptx.decode() if isinstance(ptx, bytes) else ptx
        bodies = {}
        for name in KERNEL_SOURCES[source]:
            entry = re.escape(nvrtc.getLoweredName(program, name))
            body = re.search(rf"\.entry {entry}\(.*?\n}}\n", ptx, re.S)
            assert body is not None, name
            bodies[name] = body.group(0)
        return bodies


@pytest.mark.timeout(120)
@pytest.mark.parametrize("source", sorted(KERNEL_SOURCES))
def test_float_kernels_do_no_double_arithmetic(source):
    """A float kernel that calls a double function (exp instead of expf)
    silently runs at FP64 speed; its PTX would contain .f64 instructions."""
    for name, body in kernel_ptx(source).items():
        if "<float" in name:
            assert ".f64" not in body, f"{name} does double-precision arithmetic"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("source", sorted(KERNEL_SOURCES))
def test_kernels_keep_their_arrays_in_registers(source):
    """The step driver's per-element arrays (gates, states, saved values) are
    indexed by unrolled loops only; an index the compiler cannot fold would
    put them in local memory (a .local frame in the PTX) and slow every step."""
    for name, body in kernel_ptx(source).items():
        assert ".local" not in body, f"{name} uses local memory"


def test_name_expressions_are_unique():
    for source, names in KERNEL_SOURCES.items():
        assert len(set(names)) == len(names), source


@pytest.mark.timeout(120)
@pytest.mark.parametrize("program_name", ["", "step_kernels.cu"], ids=["in-memory", "named"])
def test_stray_headers_in_the_working_directory_are_not_compiled(tmp_path, monkeypatch,
                                                                 program_name):
    """NVRTC resolves a quoted include against the working directory first:
    module_code leaves no include of ours for it to resolve, so headers of the
    same names beside the user (here: ones that cannot compile) change nothing."""
    for name in ("activations.cuh", "cell.cuh"):
        (tmp_path / name).write_text('#error "a stray header was compiled"\n')
    (tmp_path / "cells").mkdir()
    (tmp_path / "cells" / "lstm.cuh").write_text('#error "a stray header was compiled"\n')
    monkeypatch.chdir(tmp_path)
    with compiled_program("step_kernels.cu", "sm_80", program_name) as (nvrtc, program):
        assert nvrtc.getCUBIN(program)


def test_gpu_probe_says_when_a_kernel_cannot_be_compiled(monkeypatch):
    """A device without the CUDA headers (a driver-only node): CuPy counts the
    GPU but cannot compile; the probe must report that, so the GPU tests skip."""
    from rnnkern import devices

    class NoHeaders:
        def __init__(self, *args, **kwargs):
            raise RuntimeError("Failed to find CUDA headers")
    fake = types.SimpleNamespace(
        __version__="14.2.0", RawKernel=NoHeaders,
        cuda=types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=lambda: 1)))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    devices._probe.cache_clear()
    try:
        reason = devices.cuda_unavailable_reason()
        count = devices.cuda_device_count()
    finally:
        devices._probe.cache_clear()
    assert count == 0
    assert "cannot compile and launch" in reason and "Failed to find CUDA headers" in reason
