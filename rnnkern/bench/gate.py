"""The regression gate: deterministic metrics against a committed baseline.

``python -m rnnkern.bench.gate`` (also ``python -m rnnkern bench --gate``)
measures every metric of :mod:`rnnkern.bench.metrics` (memory, BLAS calls,
FLOPs, kernel launches, for every registry cell on the Numba backend and the
emulated CUDA path) and compares each with ``asv_bench/baseline_metrics.json``.
It takes a few seconds and needs no GPU, so CI runs it on every submission
(``tests/test_regression_gate.py``).

Tolerance (:data:`TOLERANCE`): a count (BLAS calls, FLOPs, launches) fails on
any rise; a byte figure fails when it rises by more than 1% and more than
1 KiB: Python's own small objects move traced memory by up to ~500 bytes
from call to call (free lists decide whether an object is allocated), while
one extra ``(B, H)`` float32 buffer of the metric shape is 2 KiB.  A figure that falls passes, with a note to lock the gain in.

To accept a change on purpose, regenerate the baseline and commit it with the
change::

    python -m rnnkern.bench.gate --update-baseline

First-call (compile) times are printed for information, never compared.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..cells import CELLS
from . import metrics

__all__ = ["BASELINE", "TOLERANCE", "Regression", "compare", "main", "UPDATE_COMMAND"]

#: The committed baseline (in a source checkout).
BASELINE = Path(__file__).resolve().parents[2] / "asv_bench" / "baseline_metrics.json"
UPDATE_COMMAND = "python -m rnnkern.bench.gate --update-baseline"

#: unit -> (relative, absolute) slack: a rise fails when above both.
TOLERANCE = {"bytes": (0.01, 1024), "calls": (0.0, 0), "flops": (0.0, 0), "launches": (0.0, 0)}


class Regression:
    """One figure out of tolerance (or missing from one side)."""

    def __init__(self, name, old, new, why):
        self.name, self.old, self.new, self.why = name, old, new, why

    def __str__(self):
        return f"{self.name}: {self.why} (baseline {self.old}, now {self.new})"


def _allowed(name, old):
    relative, absolute = TOLERANCE[metrics.unit_of(name.rsplit("/", 1)[-1])]
    return old + max(relative * old, absolute)


def compare(baseline, current):
    """Compare two ``{name: value}`` dicts (baseline, current).

    Returns
    -------
    regressions : list of Regression
        Figures that rose beyond :data:`TOLERANCE`, and names on one side only.
    improvements : list of (name, old, new)
        Figures that fell by more than the tolerance.
    """
    regressions, improvements = [], []
    for name in sorted(set(baseline) | set(current)):
        old, new = baseline.get(name), current.get(name)
        if old is None:
            regressions.append(Regression(name, old, new, "not in the baseline"))
        elif new is None:
            regressions.append(Regression(name, old, new, "in the baseline but not measured"))
        elif new > _allowed(name, old):
            unit = metrics.unit_of(name.rsplit("/", 1)[-1])
            change = f"{(new - old) / old:+.1%}" if old else "from 0"
            regressions.append(Regression(
                name, old, new, f"rose {change} ({new - old:+d} {unit}), beyond the tolerance"))
        elif new < old - (_allowed(name, old) - old):
            improvements.append((name, old, new))
    return regressions, improvements


def _settings():
    return {"shape": asdict(metrics.METRIC_SHAPE), "dtype": metrics.METRIC_DTYPE}


def read_baseline(path):
    """The baseline's ``{"settings", "metrics", ...}``.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    """
    with open(path) as stream:
        return json.load(stream)


def write_baseline(path, current):
    """Write ``current`` (``{name: value}``) as the baseline at ``path``."""
    document = {
        "about": "Deterministic metrics of rnnkern.bench.metrics, compared by "
                 f"`python -m rnnkern.bench.gate`; regenerate with `{UPDATE_COMMAND}` "
                 "in the commit that changes them on purpose.",
        "settings": _settings(),
        "tolerance": {unit: {"relative": rel, "absolute": ab}
                      for unit, (rel, ab) in TOLERANCE.items()},
        "recorded_with": {"python": platform.python_version(), "numpy": np.__version__},
        "metrics": dict(sorted(current.items())),
    }
    with open(path, "w") as stream:
        json.dump(document, stream, indent=1)
        stream.write("\n")


def _parse_arguments(argv):
    parser = argparse.ArgumentParser(
        prog="python -m rnnkern.bench.gate",
        description="Compare rnnkern's deterministic metrics (memory, BLAS calls, FLOPs, "
                    "kernel launches) with the committed baseline; exit 1 on a regression.")
    parser.add_argument("--baseline", type=Path, default=BASELINE, metavar="FILE",
                        help=f"the baseline file. Default: {BASELINE}")
    parser.add_argument("--update-baseline", action="store_true",
                        help="write the current metrics as the baseline (commit it with the "
                             "change that moved them)")
    parser.add_argument("--cell", nargs="+", choices=list(CELLS), metavar="CELL",
                        help="measure these cells only (the others are not compared)")
    parser.add_argument("--json", metavar="FILE", help="also write the current metrics to FILE")
    return parser.parse_args(argv)


def main(argv=None):
    """Run the gate; return 0 (pass), 1 (regression) or 2 (no usable baseline)."""
    args = _parse_arguments(argv)
    started = time.perf_counter()
    cells = args.cell or list(CELLS)
    first_calls = {cell: metrics.first_call_seconds(cell) for cell in cells}
    current = metrics.measure_all(cells)
    elapsed = time.perf_counter() - started
    print("first forward+backward in this process, compilation or kernel-cache load "
          "included (reported, not gated): "
          + ", ".join(f"{cell} {seconds:.2f} s" for cell, seconds in first_calls.items()))
    if args.json:
        with open(args.json, "w") as stream:
            json.dump(current, stream, indent=1)
    if args.update_baseline:
        if args.cell:
            print("--update-baseline: measure every cell (leave out --cell)", file=sys.stderr)
            return 2
        write_baseline(args.baseline, current)
        print(f"wrote {len(current)} metrics to {args.baseline} ({elapsed:.1f} s); "
              f"commit it with the change")
        return 0
    try:
        baseline = read_baseline(args.baseline)
    except FileNotFoundError:
        print(f"no baseline at {args.baseline}: create it with `{UPDATE_COMMAND}`",
              file=sys.stderr)
        return 2
    if baseline.get("settings") != _settings():
        print(f"the baseline was measured with {baseline.get('settings')}, the metrics now use "
              f"{_settings()}: regenerate it with `{UPDATE_COMMAND}`", file=sys.stderr)
        return 1
    old = baseline["metrics"]
    if args.cell:
        old = {name: value for name, value in old.items() if name.split("/", 1)[0] in cells}
    regressions, improvements = compare(old, current)
    for name, was, now in improvements:
        print(f"improved: {name}: baseline {was}, now {now} "
              f"(lock it in with `{UPDATE_COMMAND}`)")
    if regressions:
        print(f"PERFORMANCE REGRESSION: {len(regressions)} of {len(current)} metrics against "
              f"{args.baseline.name} (tolerance: counts must not rise; bytes may rise by "
              f"1% or 1 KiB, whichever is larger):", file=sys.stderr)
        for regression in regressions:
            print(f"  {regression}", file=sys.stderr)
        print(f"If the change is intended, accept it on purpose: run `{UPDATE_COMMAND}` and "
              f"commit {args.baseline.name} in the same commit.", file=sys.stderr)
        return 1
    print(f"gate passed: {len(current)} metrics within tolerance of {args.baseline.name} "
          f"({elapsed:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
