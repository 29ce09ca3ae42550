"""``python -m rnnkern bench --plot FILE.png``: time against batch and hidden size, as a picture.

For each cell, two panels: the median time of forward and of
forward+backward against the batch size ``B`` (the hidden size fixed), and
against the hidden size ``H`` (the batch fixed), for rnnkern and for
``torch.nn`` (if installed), log-log.  The timings are those of ``python -m
rnnkern bench``: each library in fresh worker processes of its own
(:mod:`rnnkern.bench.workers`), with the same threads, seeds and shapes.

matplotlib is an optional extra (``pip install matplotlib``); it is imported
only here, and only for drawing.
"""

from __future__ import annotations

import statistics
from dataclasses import replace

from .shapes import BenchShape
from .workers import run_in_fresh_process

__all__ = ["BASE_SHAPE", "BATCH_SIZES", "HIDDEN_SIZES", "sweep_shapes", "measure_sweep",
           "draw"]

#: The shape the sweeps vary, one size at a time.
BASE_SHAPE = BenchShape(T=50, B=32, I=128, H=256)
BATCH_SIZES = (1, 4, 16, 64)
HIDDEN_SIZES = (64, 128, 256, 512)
LIBRARIES = ("rnnkern", "torch")
PASSES = ("forward", "forward_backward")


def sweep_shapes(base=BASE_SHAPE):
    """``{"B": [shapes...], "H": [shapes...]}``: ``base`` with each batch / hidden size."""
    return {"B": [replace(base, B=b) for b in BATCH_SIZES],
            "H": [replace(base, H=h) for h in HIDDEN_SIZES]}


def measure_sweep(cells, base, dtype, repeats, threads, environment):
    """Median seconds of every library, cell, swept shape and pass.

    Returns
    -------
    seconds : dict
        ``(library, cell, (T, B, I, H), pass) -> median seconds``.
    missing : dict
        ``library -> why it did not run``.
    """
    shapes = sorted({s for group in sweep_shapes(base).values() for s in group},
                    key=lambda s: (s.B, s.H))
    cases = [{"cell": cell, "shape": [s.T, s.B, s.I, s.H]} for cell in cells for s in shapes]
    seconds, missing = {}, {}
    for library in LIBRARIES:
        answer = run_in_fresh_process({"task": "time", "library": library, "cases": cases,
                                       "device": "cpu", "dtype": dtype, "repeats": repeats,
                                       "threads": threads, "seed": 0}, environment)
        if "unavailable" in answer:
            missing[library] = answer["unavailable"]
            continue
        for case in answer["cases"]:
            for name in PASSES:
                seconds[(library, case["cell"], tuple(case["shape"]), name)] = \
                    statistics.median(case["seconds"][name])
    return seconds, missing


def draw(path, seconds, missing, cells, base, title):
    """Write the figure to ``path`` (PNG, or any format matplotlib infers from the suffix).

    Raises
    ------
    ImportError
        If matplotlib is not installed (the message says how to install it).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("--plot needs matplotlib: pip install matplotlib") from None
    sweeps = sweep_shapes(base)
    figure, axes = plt.subplots(len(cells), 2, figsize=(10, 3.6 * len(cells)), squeeze=False)
    styles = {"forward": "--", "forward_backward": "-"}
    colors = {"rnnkern": "tab:blue", "torch": "tab:orange"}
    for row, cell in enumerate(cells):
        for column, (size, shapes) in enumerate(sweeps.items()):
            ax = axes[row][column]
            xs = [getattr(s, size) for s in shapes]
            for library in LIBRARIES:
                if library in missing:
                    continue
                for name in PASSES:
                    ys = [seconds[(library, cell, (s.T, s.B, s.I, s.H), name)] * 1e3
                          for s in shapes]
                    ax.plot(xs, ys, styles[name], marker="o", color=colors[library],
                            label=f"{library} {'fwd+bwd' if name != 'forward' else 'fwd'}")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            fixed = (f"H={base.H}" if size == "B" else f"B={base.B}")
            ax.set_title(f"{cell}: T={base.T}, I={base.I}, {fixed}")
            ax.set_xlabel("batch size B" if size == "B" else "hidden size H")
            ax.set_ylabel("median ms")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize="small")
    note = "; ".join(f"{library}: {why}" for library, why in missing.items())
    figure.suptitle(title + (f"\n({note})" if note else ""), fontsize="medium")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
