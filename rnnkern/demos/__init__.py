"""``python -m rnnkern demo``: the character language model, or ``demo sine``.

::

    python -m rnnkern demo [--text FILE] [--device cpu|cuda] [--steps N] ...   # char_lm
    python -m rnnkern demo sine [--cell rnn|lstm|gru] [--steps N] ...          # sine

- :mod:`~rnnkern.demos.char_lm`: a character-level LSTM trained with truncated
  BPTT on the standard library's sources (or ``--text FILE``), with
  checkpoints, ``--resume``, samples and the held-out perplexity;
- :mod:`~rnnkern.demos.sine`: many-to-one regression of a sine wave against
  the naive forecast.

The model code is the same on every device: the arrays' namespace does the
work, and only ``--device`` decides whether they are NumPy or CuPy arrays.
Torch is never imported.
"""

from __future__ import annotations

import sys

from ..training import CheckpointError
from . import char_lm, sine
from .common import UsageError

__all__ = ["main"]


def main(argv=None) -> int:
    """Entry point of ``python -m rnnkern demo``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "sine":
            return sine.run(sine.build_parser().parse_args(argv[1:]))
        return char_lm.run(char_lm.build_parser().parse_args(argv))
    except (CheckpointError, FileNotFoundError, UsageError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
