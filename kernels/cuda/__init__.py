"""CUDA C++ sources, compiled at run time by CuPy's RawModule (NVRTC).

Layout::

    step_kernels.cu   rnn_forward_step<T, Cell, Index> / rnn_backward_step<...>: the
                      grid-stride loop, the length mask, the dh/dc carries and all
                      indexing, written once for every cell
    cell.cuh          the contract of a cell struct (constants, pointwise
                      forward/backward) and SavedWidths
    activations.cuh   device exp/tanh per scalar type, sigmoid, derivatives,
                      the Elman activations
    cells/*.cuh       one header per cell (elman, lstm, gru): ONLY its pointwise
                      algebra, the struct named by ``rnnkern.cells.Cell.kernels["cuda"]``
    host_shim.h       CUDA's built-ins for g++, so the host emulation
                      (``rnnkern.backends.cuda.emulation``) compiles the same sources

``rnnkern.backends.cuda.modules`` turns these into one RawModule: every cell
header, then ``step_kernels.cu``, every header inlined, with one name
expression per registry cell x step x scalar type x index type.  A new cell is
a new header in ``cells/`` and its registry entry; nothing here lists the cells.  No Python code lives here.
"""
