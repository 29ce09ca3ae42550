"""``python -m rnnkern bench`` and the benchmark workload it shares with asv.

- :mod:`~rnnkern.bench.shapes`: the shapes, cells and dtypes (append-only lists);
- :mod:`~rnnkern.bench.workloads`: the timed calls of rnnkern, torch and the reference;
- :mod:`~rnnkern.bench.workers`: the worker processes that time them, and their protocol;
- :mod:`~rnnkern.bench.cli`: the command, which runs the workers and prints the table.
"""

__all__ = ["main"]


def __getattr__(name):
    # ``main`` is loaded on first use, not here: ``python -m rnnkern.bench.workers``
    # imports this package first, and importing the CLI (hence the workers module)
    # at that point would run the worker module twice (runpy warns about it).
    if name == "main":
        from .cli import main

        return main
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
