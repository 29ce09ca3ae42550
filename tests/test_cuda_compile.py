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

from rnnkern.backends.cuda import planner
from rnnkern.backends.cuda.modules import (COOPERATIVE_SOURCES, KERNEL_SOURCES, compile_options,
                                           kernels_dir, module_code)


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


def cupy_include_options():
    """The ``-I`` options CuPy adds: its bundled CCCL (``nv/target``, which
    cooperative_groups.h needs) and the CUDA runtime headers it finds
    (here the ``nvidia-cuda-runtime`` wheel of the ``test`` extra)."""
    from cupy._core.core import _get_cccl_include_options
    try:
        from cuda.pathfinder import find_nvidia_header_directory

        runtime = find_nvidia_header_directory("cudart")
    except Exception:            # an older pathfinder, or no headers at all
        runtime = None
    if runtime is None:
        pytest.skip("no CUDA runtime headers (cooperative_groups.h): install rnnkern[test] "
                    "for the nvidia-cuda-runtime wheel")
    return (*_get_cccl_include_options(), f"-I{runtime}")


@contextlib.contextmanager
def compiled_program(source, arch, program_name=None, extra_options=()):
    """The NVRTC program of ``source`` with every name expression, compiled for ``arch``.

    ``program_name`` defaults to ``source``; CuPy passes ``""`` when it keeps
    its cache in memory (``CUPY_CACHE_IN_MEMORY=1``).  The cooperative
    sources include ``<cooperative_groups.h>``, found where CuPy finds it.
    """
    nvrtc = _nvrtc()
    includes = cupy_include_options() if source in COOPERATIVE_SOURCES else ()
    options = [*compile_options(), *CUPY_ADDED_OPTIONS, *includes, f"-arch={arch}",
               *extra_options]
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


# ptxas -v, per entry: "Compiling entry function '<lowered>' for 'sm_90'", then
# "N bytes stack frame, N bytes spill stores, N bytes spill loads" and
# "Used N registers, used N barriers, N bytes smem, ..." (smem: static only).
_ENTRY = re.compile(r"Compiling entry function '(?P<entry>[^']+)'")
_SPILLS = re.compile(r"(?P<stack>\d+) bytes stack frame, (?P<stores>\d+) bytes spill stores")
_REGISTERS = re.compile(r"Used (?P<registers>\d+) registers(?:.*?(?P<smem>\d+) bytes smem)?")


def resource_usage(source, arch):
    """{name expression: {"registers", "static_shared", "stack", "spill_stores"}} from ptxas."""
    with compiled_program(source, arch, extra_options=("-Xptxas=-v",)) as (nvrtc, program):
        log = nvrtc.getProgramLog(program)
        by_entry = {nvrtc.getLoweredName(program, name): name for name in KERNEL_SOURCES[source]}
    usage, entry = {}, None
    for line in log.splitlines():
        if (match := _ENTRY.search(line)) is not None:
            entry = by_entry.get(match["entry"])
            usage[entry] = {}
        elif entry is not None and (match := _SPILLS.search(line)) is not None:
            usage[entry].update(stack=int(match["stack"]), spill_stores=int(match["stores"]))
        elif entry is not None and (match := _REGISTERS.search(line)) is not None:
            usage[entry].update(registers=int(match["registers"]),
                                static_shared=int(match["smem"] or 0))
    return usage


@pytest.mark.timeout(180)
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("source", sorted(COOPERATIVE_SOURCES))
def test_persistent_kernels_fit_the_planners_assumptions(source, arch):
    """Registers and shared memory, read from the compiled code, against the planner.

    The planner launches ``PERSISTENT_THREADS`` threads a block, one block per
    SM, with ``planner.shared_bytes`` of DYNAMIC shared memory: so the kernels
    must need at most 64K registers for a block (65536 a SM on sm_80 and
    sm_90), no static shared memory the planner does not count, and no spills
    (a spill goes to local memory, which a step would pay for every time).
    """
    usage = resource_usage(source, arch)
    assert set(usage) == set(KERNEL_SOURCES[source])
    for name, found in usage.items():
        assert found["registers"] * planner.PERSISTENT_THREADS <= 65536, (name, found)
        assert found["static_shared"] == 0, (name, found)
        assert found["spill_stores"] == 0 and found["stack"] == 0, (name, found)


@pytest.mark.parametrize("constant", ["PERSISTENT_THREADS", "ROWS_PER_THREAD",
                                      "UNITS_PER_THREAD"])
def test_persistent_kernel_constants_are_the_planners(constant):
    """The planner sizes the launch and the shared memory with these."""
    text = (kernels_dir() / "persistent_kernels.cu").read_text()
    match = re.search(rf"constexpr int {constant} = (\d+);", text)
    assert match is not None and int(match[1]) == getattr(planner, constant)
