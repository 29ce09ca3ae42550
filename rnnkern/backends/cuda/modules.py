"""The CUDA sources, their template instantiations and how to compile them.

One place for everything that decides which code a kernel name refers to:

- ``KERNEL_SOURCES``: every ``.cu`` file with the ONE list of template
  instantiations (NVRTC name expressions) asked of it, derived from the cell
  registry: every cell x forward/backward x float/double.  CuPy's
  ``RawModule``, the NVRTC compile check (tests/test_cuda_compile.py) and the
  host emulation (``rnnkern.backends.cuda.emulation``) all read this list.
- ``module_code(source)``: the code they compile: every cell header of
  ``kernels/cuda/cells/``, then the source.
- ``compile_options()``: the compiler options, also shared by all three (g++
  understands them too).
- ``get_kernel(name)``: the kernel lookup for CuPy, one lazily compiled,
  cached ``RawModule`` per source file and device (``clear_kernel_cache()``
  forgets them).
- ``elementwise_launch(count)`` and ``check_launch(...)``: the launch
  configuration and the argument checks.

CuPy is imported only inside ``get_kernel`` (importing rnnkern must not
import CuPy).  Sources are read from the installed package
``rnnkern.kernels.cuda`` (the repository's ``kernels/cuda/`` folder), never
from the working directory.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
from pathlib import Path

import numpy as np

from ...cells import CELLS

__all__ = ["KERNEL_SOURCES", "STEPS", "SCALAR_TYPES", "CudaKernelError", "kernel_name",
           "kernels_dir", "cell_headers", "compile_options", "module_code", "source_of",
           "get_kernel", "clear_kernel_cache", "THREADS_PER_BLOCK", "elementwise_launch",
           "check_launch"]

#: The C++ scalar type of each dtype the kernels are instantiated for.
SCALAR_TYPES = {"float32": "float", "float64": "double"}
#: The step kernels of kernels/cuda/step_kernels.cu: ``rnn_<step>_step<T, Cell>``.
STEPS = ("forward", "backward")
_STEP_SOURCE = "step_kernels.cu"
_CELLS_FOLDER = "cells"


def kernel_name(cell, step: str, dtype) -> str:
    """Name expression of a cell's fused step kernel.

    Parameters
    ----------
    cell : rnnkern.cells.Cell
        Its ``kernels["cuda"]`` names the C++ struct of its pointwise steps.
    step : {"forward", "backward"}
    dtype : str or dtype
        ``float32`` or ``float64``.

    Returns
    -------
    str
        e.g. ``"rnn_forward_step<float, LstmCell>"``.
    """
    if step not in STEPS:
        raise CudaKernelError(f"step: expected one of {STEPS}, got {step!r}")
    return f"rnn_{step}_step<{SCALAR_TYPES[str(np.dtype(dtype))]}, {cell.kernels['cuda']}>"


# Every .cu file and every instantiation the package launches from it.
KERNEL_SOURCES = {
    _STEP_SOURCE: tuple(kernel_name(cell, step, dtype)
                        for cell in CELLS.values()
                        for step in STEPS
                        for dtype in SCALAR_TYPES),
}

# -std=c++17 for the templates (fold expressions); CuPy (and our compile
# check) add the architecture.  No fast-math: the kernels must match torch.
_LANGUAGE_OPTIONS = ("-std=c++17",)


class CudaKernelError(RuntimeError):
    """A CUDA kernel could not be compiled, found or launched."""


def kernels_dir() -> Path:
    """The folder of the CUDA sources (the installed package ``rnnkern.kernels.cuda``)."""
    folder = importlib.resources.files("rnnkern.kernels.cuda")
    if not isinstance(folder, Path):
        raise CudaKernelError(f"the CUDA sources of rnnkern.kernels.cuda are not files on disk "
                              f"({folder!r}); install rnnkern unzipped")
    return folder


def cell_headers() -> tuple:
    """Every cell header, as include paths relative to ``kernels_dir()`` (``"cells/gru.cuh"``)."""
    folder = kernels_dir()
    return tuple(path.relative_to(folder).as_posix()
                 for path in sorted((folder / _CELLS_FOLDER).glob("*.cuh")))


def compile_options() -> tuple:
    """Options for every compiler of the sources (NVRTC, and g++ in the emulation).

    The include path lets ``#include "cell.cuh"`` and ``"cells/lstm.cuh"``
    resolve wherever the package is installed.
    """
    return _LANGUAGE_OPTIONS + (f"-I{kernels_dir()}",)


def source_of(name: str) -> str:
    """The ``.cu`` file that instantiates the name expression ``name``."""
    for source, names in KERNEL_SOURCES.items():
        if name in names:
            return source
    raise CudaKernelError(f"unknown CUDA kernel {name!r}: it is not among the "
                          f"instantiations of KERNEL_SOURCES in {__name__}")


def module_code(source: str) -> str:
    """The code compiled for ``source``: every cell header, then the source itself.

    The cell headers are included here, not in the source, so that a new cell
    is only a new header in ``cells/`` (and its registry entry).  CuPy's
    on-disk kernel cache is keyed on the code string and the options, not on
    included headers; the digest of every header (``*.cuh`` and
    ``cells/*.cuh``) appended here makes an edited header recompile the
    module instead of reusing a stale binary.
    """
    folder = kernels_dir()
    headers = sorted(folder.rglob("*.cuh"))
    digest = hashlib.sha256()
    for header in headers:
        digest.update(header.relative_to(folder).as_posix().encode() + b"\0"
                      + header.read_bytes() + b"\0")
    names = ", ".join(h.relative_to(folder).as_posix() for h in headers)
    includes = "".join(f'#include "{header}"\n' for header in cell_headers())
    return (f"// The cell headers, included by {__name__}.module_code\n{includes}"
            f'#line 1 "{source}"\n{(folder / source).read_text()}'
            f"\n// headers {names}: sha256 {digest.hexdigest()}\n")


@functools.cache
def _raw_module(source: str, device_id: int):
    import cupy   # only called once a CuPy array has arrived

    return cupy.RawModule(code=module_code(source), options=compile_options(),
                          name_expressions=KERNEL_SOURCES[source])


@functools.cache
def _kernel_on_device(name: str, device_id: int):
    source = source_of(name)
    try:
        return _raw_module(source, device_id).get_function(name)
    except Exception as err:
        raise CudaKernelError(f"CUDA kernel {name!r} from {source} with options "
                              f"{compile_options()}: {type(err).__name__}: {err}") from err


def get_kernel(name: str):
    """The compiled CuPy ``RawKernel`` for the name expression ``name``.

    The first request on a device compiles the kernel's whole source file
    (or loads it from CuPy's disk cache); later requests are dictionary
    look-ups.

    Raises
    ------
    CudaKernelError
        Naming the kernel, the source file and the options, if the name is
        unknown or the source does not compile.
    """
    import cupy

    return _kernel_on_device(name, cupy.cuda.Device().id)


def clear_kernel_cache():
    """Forget this process's compiled modules: the next ``get_kernel`` compiles
    again from ``kernels_dir()`` (or loads from CuPy's disk cache)."""
    _raw_module.cache_clear()
    _kernel_on_device.cache_clear()


# ---------------------------------------------------------------------------
# Launch configuration and argument checks.
# ---------------------------------------------------------------------------

THREADS_PER_BLOCK = 256
_MAX_BLOCKS = 2 ** 16        # the grid-stride loop covers the rest
_MAX_THREADS_PER_BLOCK = 1024
_MAX_GRID_X = 2 ** 31 - 1


def elementwise_launch(count: int):
    """Grid and block for one thread per element (grid-stride kernels).

    Returns
    -------
    grid, block : tuple of int
        ``((blocks,), (THREADS_PER_BLOCK,))`` with enough blocks for
        ``count`` elements, capped at 65536 (the kernels loop over the rest).
    """
    if count < 1:
        raise CudaKernelError(f"launch: expected at least one element, got {count}")
    blocks = min(-(-count // THREADS_PER_BLOCK), _MAX_BLOCKS)
    return (blocks,), (THREADS_PER_BLOCK,)


def check_launch(name, grid, block, args, xp):
    """Check a launch before it happens: configuration and argument kinds.

    Arrays must be C-contiguous arrays of ``xp`` (the kernels index them
    flat); a tuple is a group of such arrays (a ``StepArrays`` parameter),
    never empty; scalars must be NumPy scalars of an exact type
    (``np.int32(H)``) because a Python ``int`` would be passed with CuPy's
    choice of width.

    The step drivers call this once per direction, on the first step's
    arguments: the other steps pass slices of the same buffers.  The host
    emulation calls it on every launch, besides its own checks against the
    kernel's parameter types.

    Raises
    ------
    CudaKernelError
        Naming the kernel and the offending argument.
    """
    if len(grid) != 1 or len(block) != 1:
        raise CudaKernelError(f"{name}: expected 1-D grid and block, got {grid}, {block}")
    if not 1 <= block[0] <= _MAX_THREADS_PER_BLOCK or block[0] % 32:
        raise CudaKernelError(f"{name}: block of {block[0]} threads; expected a multiple of 32 "
                              f"in [32, {_MAX_THREADS_PER_BLOCK}]")
    if not 1 <= grid[0] <= _MAX_GRID_X:
        raise CudaKernelError(f"{name}: grid of {grid[0]} blocks; expected [1, {_MAX_GRID_X}]")
    for k, a in enumerate(args):
        if isinstance(a, np.generic):
            continue
        if isinstance(a, tuple):
            if not a:
                raise CudaKernelError(f"{name}: argument {k} is an empty group of arrays")
            for i, member in enumerate(a):
                _check_array(name, f"{k}[{i}]", member, xp)
        else:
            _check_array(name, str(k), a, xp)


def _check_array(name, label, a, xp):
    if not isinstance(a, xp.ndarray):
        raise CudaKernelError(f"{name}: argument {label} is a {type(a).__name__}; expected a "
                              f"{xp.__name__} array, a tuple of them or an exactly typed NumPy "
                              f"scalar")
    if not a.flags.c_contiguous:
        raise CudaKernelError(f"{name}: argument {label} of shape {a.shape} is not C-contiguous")
