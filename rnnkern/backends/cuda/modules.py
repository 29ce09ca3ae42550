"""The CUDA sources, their template instantiations and how to compile them.

One place for everything that decides which code a kernel name refers to:

- ``KERNEL_SOURCES``: every ``.cu`` file with the ONE list of template
  instantiations (NVRTC name expressions) asked of it.  CuPy's ``RawModule``,
  the NVRTC compile check (tests/test_cuda_compile.py) and the host emulation
  (``rnnkern.cuda_emulation``) all read this list.
- ``compile_options()``: the compiler options, also shared by all three (g++
  understands them too).
- ``get_kernel(name)``: the kernel lookup for CuPy, one lazily compiled,
  cached ``RawModule`` per source file.
- ``elementwise_launch(count)`` and ``check_launch(...)``: the launch
  configuration and the argument checks every launcher applies.

CuPy is imported only inside ``get_kernel`` (importing rnnkern must not
import CuPy).  Sources are read from the installed package ``rnnkern.kernels``
(the repository's ``kernels/`` folder), never from the working directory.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
from pathlib import Path

import numpy as np

__all__ = ["KERNEL_SOURCES", "CudaKernelError", "kernel_name", "kernels_dir",
           "compile_options", "module_code", "source_of", "get_kernel",
           "THREADS_PER_BLOCK", "elementwise_launch", "check_launch"]

_SCALAR_TYPES = {"float32": "float", "float64": "double"}

# Kernel template of each cell's fused steps (rnnkern.cells.Cell.name).
_STEP_TEMPLATES = {
    "rnn_tanh": "rnn_{step}_step<{T}, TanhActivation>",
    "rnn_relu": "rnn_{step}_step<{T}, ReluActivation>",
    "lstm": "lstm_{step}_step<{T}>",
    "gru": "gru_{step}_step<{T}>",
}


def kernel_name(cell_name: str, step: str, dtype) -> str:
    """Name expression of a cell's fused step kernel.

    Parameters
    ----------
    cell_name : str
        ``rnnkern.cells.Cell.name``, e.g. ``"lstm"``.
    step : {"forward", "backward"}
    dtype : str or dtype
        ``float32`` or ``float64``.

    Returns
    -------
    str
        e.g. ``"lstm_forward_step<float>"``.
    """
    return _STEP_TEMPLATES[cell_name].format(step=step, T=_SCALAR_TYPES[str(np.dtype(dtype))])


# Every .cu file and every instantiation the package launches from it.
KERNEL_SOURCES = {
    "rnn_cells.cu": tuple(kernel_name(cell, step, dtype)
                          for cell in _STEP_TEMPLATES
                          for step in ("forward", "backward")
                          for dtype in _SCALAR_TYPES),
}

# -std=c++17 for the templates; CuPy (and our compile check) add the
# architecture.  No fast-math: the kernels must match torch.
_LANGUAGE_OPTIONS = ("-std=c++17",)


class CudaKernelError(RuntimeError):
    """A CUDA kernel could not be compiled, found or launched."""


def kernels_dir() -> Path:
    """The folder of the CUDA sources (the installed package ``rnnkern.kernels``)."""
    folder = importlib.resources.files("rnnkern.kernels")
    if not isinstance(folder, Path):
        raise CudaKernelError(f"the CUDA sources of rnnkern.kernels are not files on disk "
                              f"({folder!r}); install rnnkern unzipped")
    return folder


def compile_options() -> tuple:
    """Options for every compiler of the sources (NVRTC, and g++ in the emulation).

    The include path lets ``#include "activations.cuh"`` resolve wherever the
    package is installed.
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
    """The code handed to ``RawModule`` for ``source``.

    CuPy's on-disk kernel cache is keyed on the code string and the options,
    not on included headers; the digest of the headers appended here makes an
    edited header recompile the module instead of reusing a stale binary.
    """
    folder = kernels_dir()
    headers = sorted(folder.glob("*.cuh"))
    digest = hashlib.sha256(b"".join(h.read_bytes() for h in headers)).hexdigest()
    names = ", ".join(h.name for h in headers)
    return (folder / source).read_text() + f"\n// headers {names}: sha256 {digest}\n"


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


# ---------------------------------------------------------------------------
# Launch configuration and argument checks, shared by every launcher.
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
    flat); scalars must be NumPy scalars of an exact type (``np.int32(H)``)
    because a Python ``int`` would be passed with CuPy's choice of width.

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
        if not isinstance(a, xp.ndarray):
            raise CudaKernelError(f"{name}: argument {k} is a {type(a).__name__}; expected a "
                                  f"{xp.__name__} array or an exactly typed NumPy scalar")
        if not a.flags.c_contiguous:
            raise CudaKernelError(f"{name}: argument {k} of shape {a.shape} is not C-contiguous")
