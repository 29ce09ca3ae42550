"""The CUDA sources, their template instantiations and how to compile them.

One place for everything that decides which code a kernel name refers to:

- ``KERNEL_SOURCES``: every ``.cu`` file with the ONE list of template
  instantiations (NVRTC name expressions) asked of it, derived from the cell
  registry: the step kernels for every cell x forward/backward x
  float/double x 32/64-bit index math (``index_type`` picks the latter per
  launch), the persistent kernels for every cell x forward/backward x
  float/double (``COOPERATIVE_SOURCES``: launched cooperatively).  CuPy's
  ``RawModule``, the NVRTC compile check (tests/test_cuda_compile.py) and the
  host emulation (``rnnkern.backends.cuda.emulation``) all read this list.
- ``module_code(source)``: the code they compile: every cell header of
  ``kernels/cuda/cells/``, then the source, every header inlined (no
  ``#include`` left for a compiler to resolve).
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
import importlib.resources
import re
from pathlib import Path

import numpy as np

from ...cells import CELLS

__all__ = ["KERNEL_SOURCES", "COOPERATIVE_SOURCES", "persistent_kernel_name", "STEPS", "SCALAR_TYPES", "INDEX_TYPES", "INT32_LIMIT",
           "CudaKernelError", "kernel_name", "index_type", "kernels_dir", "cell_headers",
           "compile_options", "inline_file", "module_code", "source_of",
           "get_kernel", "clear_kernel_cache", "THREADS_PER_BLOCK", "elementwise_launch",
           "check_launch"]

#: The C++ scalar type of each dtype the kernels are instantiated for.
SCALAR_TYPES = {"float32": "float", "float64": "double"}
#: The step kernels of kernels/cuda/step_kernels.cu: ``rnn_<step>_step<T, Cell>``.
STEPS = ("forward", "backward")
_STEP_SOURCE = "step_kernels.cu"
_PERSISTENT_SOURCE = "persistent_kernels.cu"
_CELLS_FOLDER = "cells"


def kernel_name(cell, step: str, dtype, index: str = "int") -> str:
    """Name expression of a cell's fused step kernel.

    Parameters
    ----------
    cell : rnnkern.cells.Cell
        Its ``kernels["cuda"]`` names the C++ struct of its pointwise steps.
    step : {"forward", "backward"}
    dtype : str or dtype
        ``float32`` or ``float64``.
    index : {"int", "long long"}
        The type of the kernel's index math (``index_type`` chooses it).

    Returns
    -------
    str
        e.g. ``"rnn_forward_step<float, LstmCell, int>"``.
    """
    if step not in STEPS:
        raise CudaKernelError(f"step: expected one of {STEPS}, got {step!r}")
    if index not in INDEX_TYPES:
        raise CudaKernelError(f"index: expected one of {INDEX_TYPES}, got {index!r}")
    return (f"rnn_{step}_step<{SCALAR_TYPES[str(np.dtype(dtype))]}, {cell.kernels['cuda']}, "
            f"{index}>")


def persistent_kernel_name(cell, step: str, dtype) -> str:
    """Name expression of a cell's persistent kernel, e.g. ``"rnn_persistent_forward<float, GruCell>"``."""
    if step not in STEPS:
        raise CudaKernelError(f"step: expected one of {STEPS}, got {step!r}")
    return f"rnn_persistent_{step}<{SCALAR_TYPES[str(np.dtype(dtype))]}, {cell.kernels['cuda']}>"


def index_type(cell, batch: int, hidden: int, threads: int) -> str:
    r"""The index type of the step kernels for a (B, H) state and a launch of ``threads``.

    The largest index a step kernel forms is below :math:`B \cdot w \cdot H`,
    :math:`w = \max(G, \text{the saved widths})`; its grid-stride loop
    also forms ``e + threads``.  ``"int"`` (32-bit division and products)
    when both stay below :math:`2^{31}`, ``"long long"`` beyond.
    """
    widest = max([cell.num_gates, *(s.width for s in cell.saved)])
    return "int" if batch * widest * hidden + threads <= INT32_LIMIT else "long long"


#: The C++ types of the step kernels' index math (``index_type`` picks one).
INDEX_TYPES = ("int", "long long")
#: The largest index (plus stride) the 32-bit kernels may form: 2^31 - 1.
INT32_LIMIT = 2 ** 31 - 1

# Every .cu file and every instantiation the package launches from it.
KERNEL_SOURCES = {
    _STEP_SOURCE: tuple(kernel_name(cell, step, dtype, index)
                        for cell in CELLS.values()
                        for step in STEPS
                        for dtype in SCALAR_TYPES
                        for index in INDEX_TYPES),
    _PERSISTENT_SOURCE: tuple(persistent_kernel_name(cell, step, dtype)
                              for cell in CELLS.values()
                              for step in STEPS
                              for dtype in SCALAR_TYPES),
}
#: The sources whose kernels synchronise the whole grid: built with cooperative
#: groups and launched cooperatively (every block resident at once).
COOPERATIVE_SOURCES = frozenset({_PERSISTENT_SOURCE})

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
    """Every cell header, as paths relative to ``kernels_dir()`` (``"cells/gru.cuh"``)."""
    folder = kernels_dir()
    return tuple(path.relative_to(folder).as_posix()
                 for path in sorted((folder / _CELLS_FOLDER).glob("*.cuh")))


def compile_options() -> tuple:
    """Options for every compiler of the sources (NVRTC, and g++ in the emulation).

    No include path: ``module_code`` hands the compilers one self-contained
    string, so nothing is looked up on disk at compile time.
    """
    return _LANGUAGE_OPTIONS


def source_of(name: str) -> str:
    """The ``.cu`` file that instantiates the name expression ``name``."""
    for source, names in KERNEL_SOURCES.items():
        if name in names:
            return source
    raise CudaKernelError(f"unknown CUDA kernel {name!r}: it is not among the "
                          f"instantiations of KERNEL_SOURCES in {__name__}")


_LOCAL_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]*"(?P<path>[^"]+)"[ \t]*$', re.M)
_PRAGMA_ONCE = re.compile(r"^[ \t]*#[ \t]*pragma[ \t]+once[ \t]*$", re.M)


def inline_file(relative: str, done: set | None = None) -> str:
    """The text of ``kernels_dir()/relative`` with its local includes inlined.

    Each ``#include "x"`` (resolved against ``kernels_dir()`` only, never the
    working directory) is replaced by the inlined text of ``x`` the first
    time, and by nothing later (``#pragma once`` semantics, over ``done``);
    ``#pragma once`` lines go, and ``#line`` directives keep the compilers'
    messages pointing at the original files and lines.  A missing header
    raises ``CudaKernelError`` naming it and the file that includes it.
    """
    folder = kernels_dir()
    done = set() if done is None else done
    done.add(relative)
    path = folder / relative
    try:
        text = _PRAGMA_ONCE.sub("// (once-only header: inlined once)", path.read_text())
    except OSError as err:
        raise CudaKernelError(f"CUDA source {relative!r} of {folder}: {err}") from None
    pieces, position = [f'#line 1 "{relative}"\n'], 0
    for match in _LOCAL_INCLUDE.finditer(text):
        pieces.append(text[position:match.start()])
        header = match["path"]
        if not (folder / header).is_file():
            raise CudaKernelError(f"{relative}: included header {header!r} is not in {folder}")
        if header not in done:
            pieces.append(inline_file(header, done))
        line = text.count("\n", 0, match.end()) + 2         # the line after the include
        pieces.append(f'// (#include "{header}": inlined)\n#line {line} "{relative}"')
        position = match.end()
    pieces.append(text[position:])
    return "".join(pieces) + ("" if text.endswith("\n") else "\n")


def module_code(source: str) -> str:
    """The code compiled for ``source``: every cell header, then the source, self-contained.

    Every header (``cells/*.cuh``, and what they and the source include) is
    inlined (``inline_file``), so the string handed to NVRTC (CuPy's
    ``RawModule``, the compile check) and to g++ (the emulation) has no
    ``#include`` of ours: no compiler can pick up a stray ``activations.cuh``
    from the working directory, and CuPy's on-disk cache, keyed on this
    string and the options, sees every header edit.  The cell headers are
    added here, not included by the source, so that a new cell is only a new
    header in ``cells/`` (and its registry entry).
    """
    done = set()
    headers = "".join(inline_file(header, done) for header in cell_headers())
    return (f"// Generated by {__name__}.module_code: the cell headers of cells/, then\n"
            f"// {source}, with every header inlined.\n{headers}{inline_file(source, done)}")


@functools.cache
def _raw_module(source: str, device_id: int):
    import cupy   # only called once a CuPy array has arrived

    return cupy.RawModule(code=module_code(source), options=compile_options(),
                          name_expressions=KERNEL_SOURCES[source],
                          enable_cooperative_groups=source in COOPERATIVE_SOURCES)


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
