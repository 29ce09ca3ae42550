"""The benchmark workload: shapes, cells and dtypes, in one place.

Read by the asv benchmarks (``asv_bench/benchmarks``) and by ``python -m
rnnkern bench``, so both time the same problems.  The shape lists are
append-only: a shape that is removed or changed breaks the history asv keeps
for it, so add new shapes at the end and leave the old ones alone.

Every shape is one layer, one direction, time-major: ``x`` is ``(T, B, I)``
and the hidden size is ``H``.

The environment variable ``RNNKERN_BENCH_SHAPES`` picks the list:
``full`` (the default) for the shapes of record, ``tiny`` for a few very
small shapes that let CI run every benchmark once in seconds.

>>> [str(s) for s in shapes_for("cpu")]
['100,1,128,256', '100,32,128,256', '100,64,256,512']
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .. import cells as _registry

__all__ = ["BenchShape", "CELLS", "DTYPES", "CPU_SHAPES", "GPU_SHAPES", "TINY_SHAPES",
           "SINGLE_STEP_SHAPES", "TINY_SINGLE_STEP_SHAPES", "FIRST_CALL_SHAPE", "SHAPES_VARIABLE",
           "shape_selection", "shapes_for", "single_step_shapes", "all_shapes", "parse_shape"]


@dataclass(frozen=True)
class BenchShape:
    """Sequence length ``T``, batch ``B``, input size ``I``, hidden size ``H``."""

    T: int
    B: int
    I: int  # noqa: E741 -- the name every RNN paper and torch.nn use
    H: int

    def __str__(self):
        """``"T,B,I,H"``: the asv parameter value and the ``--shape`` syntax."""
        return f"{self.T},{self.B},{self.I},{self.H}"


#: The order in which asv first recorded the cells: asv parameter lists are
#: history, so it stays; registry cells not in it follow, in registry order.
_RECORDED_CELL_ORDER = ("lstm", "gru", "rnn_tanh", "rnn_relu")

#: Every cell of the registry (:data:`rnnkern.cells.CELLS`), by registry name.
CELLS = tuple(sorted(_registry.CELLS, key=lambda name: (
    _RECORDED_CELL_ORDER.index(name) if name in _RECORDED_CELL_ORDER
    else len(_RECORDED_CELL_ORDER))))

DTYPES = ("float32", "float64")

#: Issue 6: the CPU path against torch's CPU RNNs (oneDNN + MKL).
CPU_SHAPES = (
    BenchShape(T=100, B=1, I=128, H=256),
    BenchShape(T=100, B=32, I=128, H=256),
    BenchShape(T=100, B=64, I=256, H=512),
)

#: The CUDA path against cuDNN: the persistent kernels' shapes (B <= 8, H
#: from 256 to 1024), the step path's (B = 64, the last one its target).
GPU_SHAPES = (
    BenchShape(T=100, B=1, I=128, H=256),
    BenchShape(T=100, B=8, I=1024, H=1024),
    BenchShape(T=100, B=64, I=256, H=512),
    BenchShape(T=100, B=64, I=1024, H=1024),
)

#: For CI smoke runs: every benchmark once, in seconds.  B=1 and B>1 both,
#: since kernels may take a different path for a single sequence.
TINY_SHAPES = (
    BenchShape(T=5, B=1, I=4, H=8),
    BenchShape(T=5, B=3, I=4, H=8),
)

#: The single-step cells (``LSTMCell``, ...; ``bench --single-step``, asv ``SingleStepTime``):
#: one step (T = 1) of the CPU shapes' layer, one sequence and a batch.
SINGLE_STEP_SHAPES = (
    BenchShape(T=1, B=1, I=128, H=256),
    BenchShape(T=1, B=32, I=128, H=256),
)
TINY_SINGLE_STEP_SHAPES = (
    BenchShape(T=1, B=1, I=4, H=8),
    BenchShape(T=1, B=3, I=4, H=8),
)

#: First-call (compilation) times are taken on this small shape, so that they
#: measure compilation rather than the call itself.
FIRST_CALL_SHAPE = TINY_SHAPES[-1]

SHAPES_VARIABLE = "RNNKERN_BENCH_SHAPES"

_SELECTIONS = {
    "full": {"cpu": CPU_SHAPES, "cuda": GPU_SHAPES},
    "tiny": {"cpu": TINY_SHAPES, "cuda": TINY_SHAPES},
}


def shape_selection():
    """The value of ``RNNKERN_BENCH_SHAPES``: ``"full"`` (default) or ``"tiny"``.

    Raises
    ------
    ValueError
        If the variable holds anything else.
    """
    selection = os.environ.get(SHAPES_VARIABLE, "full")
    if selection not in _SELECTIONS:
        raise ValueError(f"{SHAPES_VARIABLE}: expected one of {sorted(_SELECTIONS)}, "
                         f"got {selection!r}")
    return selection


def shapes_for(device):
    """The selected shapes for ``device`` (``"cpu"`` or ``"cuda"``)."""
    return _SELECTIONS[shape_selection()][device]


def single_step_shapes():
    """The selected shapes of the single-step cells (T = 1)."""
    return TINY_SINGLE_STEP_SHAPES if shape_selection() == "tiny" else SINGLE_STEP_SHAPES


def all_shapes():
    """The selected shapes of every device, without repeats, in list order."""
    shapes = _SELECTIONS[shape_selection()]
    return tuple(dict.fromkeys(shapes["cpu"] + shapes["cuda"]))


def parse_shape(text):
    """A :class:`BenchShape` from ``"T,B,I,H"`` (four positive integers).

    Raises
    ------
    ValueError
        If ``text`` is not four comma-separated positive integers.
    """
    parts = text.split(",")
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        sizes = []
    if len(sizes) != 4 or min(sizes) < 1:
        raise ValueError(f"shape: expected four positive integers T,B,I,H, got {text!r}")
    return BenchShape(*sizes)
