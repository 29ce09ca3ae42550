"""``python -m rnnkern bench --compare REV``: paired timings of two builds, with intervals.

On a shared 2-core machine one timing moves by 10-30% from run to run, so two
builds timed one after the other (or an asv run against last week's) differ
by noise as often as by code.  Here the two builds are timed side by side:

1. REV is checked out into a temporary ``git worktree`` under the system's
   temporary folder; the tree to test is the working tree of the rnnkern
   checkout (or ``--tree DIR``).  Each is *built* into a folder of its own
   the way its ``pyproject.toml`` lays the package out (``rnnkern/`` plus the
   ``package-dir`` mappings, e.g. ``kernels/`` as ``rnnkern.kernels``), so a
   process given that folder imports that build and nothing of the other.
2. One untimed process per build compiles its Numba kernels into the
   build's own cache.
3. ``--pairs`` pairs of fresh processes follow, the two builds alternating
   (old, new, then new, old, ...), so slow drifts of the machine (another
   job starting, the CPU clock) hit both alike.  Each process makes one
   warm-up call per pass and then ``--repeats`` timed calls; its figure is
   their minimum (other processes only ever add time to a call).
   By default each process runs ONE thread (``--threads 1``: BLAS, Numba)
   and is timed by its own CPU time (``--clock cpu``,
   ``time.process_time``): a single thread's CPU seconds do not count the
   time other processes hold the core, which is what makes wall times on a
   loaded 2-core machine move by 2-80x (measured: the same LSTM forward
   took 23 ms to 2 s of wall time at a load average of 5.7 with two BLAS
   threads per process).  ``--clock wall`` times wall seconds instead.
4. For each case and pass the ratio new/old of each pair is formed, and the
   geometric mean of the ratios is given with a 95% bootstrap confidence
   interval (10,000 resamples of the pairs, seeded).  A change is reported
   as significant only when the interval excludes 1.

The timed calls are those of the public API only (``rk.<Layer>(I, H, ...)``,
``layer.forward(x)``, ``layer.backward(dy, tape)``), so any two revisions
that have it can be compared, whatever their internals.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import numpy as np

from ..cells import cell_for

__all__ = ["ratio_interval", "build_tree", "compare_builds", "run_compare", "format_results"]

#: Resamples of the bootstrap, and its confidence level.
BOOTSTRAP_RESAMPLES = 10_000
CONFIDENCE = 0.95

#: Run in each timing process, with only the build's folder on sys.path.
#: Uses the public API only.  argv[1]: the JSON request.
_WORKER = r"""
import gc, json, sys, time
import numpy as np
import rnnkern as rk
request = json.loads(sys.argv[1])
answer = {"rnnkern_file": rk.__file__, "cases": []}
for case in request["cases"]:
    T, B, I, H = case["shape"]
    dtype = request["dtype"]
    layer = getattr(rk, case["layer"])(I, H, **case["options"], dtype=dtype, seed=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    dy = rng.standard_normal((T, B, H)).astype(dtype)

    def forward():
        return layer.forward(x)

    def forward_backward():
        y, state, tape = layer.forward(x)
        return layer.backward(dy, tape)

    forward_backward()
    seconds = {}
    clock = {"cpu": time.process_time, "wall": time.perf_counter}[request["clock"]]
    for name, call in (("forward", forward), ("forward_backward", forward_backward)):
        call()
        samples = []
        for _ in range(request["repeats"]):
            gc.collect()
            gc.disable()
            start = clock()
            call()
            samples.append(clock() - start)
            gc.enable()
        seconds[name] = min(samples)
    answer["cases"].append({"cell": case["cell"], "shape": case["shape"], "seconds": seconds})
print(json.dumps(answer))
"""


def ratio_interval(ratios, confidence=CONFIDENCE, resamples=BOOTSTRAP_RESAMPLES, seed=0):
    """Geometric mean of ``ratios`` and its bootstrap confidence interval.

    The log-ratios of the pairs are resampled with replacement; the interval
    is the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` percentiles
    of the resampled means, exponentiated (percentile bootstrap).

    Parameters
    ----------
    ratios : sequence of float
        One positive ratio new/old per pair; at least 2.
    confidence : float, optional
    resamples : int, optional
    seed : int, optional

    Returns
    -------
    (float, float, float)
        The geometric mean, the low and the high end of the interval.

    Raises
    ------
    ValueError
        If fewer than 2 ratios are given, or one is not positive.
    """
    values = np.asarray(ratios, dtype=np.float64)
    if values.size < 2:
        raise ValueError(f"ratios: expected at least 2 pairs, got {values.size}")
    if not np.all(np.isfinite(values) & (values > 0)):
        raise ValueError(f"ratios: expected positive finite ratios, got {list(ratios)}")
    logs = np.log(values)
    rng = np.random.default_rng(seed)
    means = logs[rng.integers(0, logs.size, size=(resamples, logs.size))].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(np.exp(logs.mean())), float(np.exp(low)), float(np.exp(high))


def _git(repo, *args):
    completed = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed: {completed.stderr.strip()}")
    return completed.stdout.strip()


def source_checkout():
    """The git checkout this rnnkern was imported from.

    Raises
    ------
    RuntimeError
        If rnnkern was not imported from a git checkout (an installed wheel).
    """
    here = Path(__file__).resolve().parent
    try:
        return Path(_git(here, "rev-parse", "--show-toplevel"))
    except (RuntimeError, OSError):
        raise RuntimeError("--compare: rnnkern was not imported from a git checkout; run it "
                           "from one (pip install -e .)") from None


def build_tree(tree, site):
    """Lay out the rnnkern package of source tree ``tree`` in ``site``, as its wheel would.

    ``rnnkern/`` is copied, then every ``package-dir`` mapping of the tree's
    ``pyproject.toml`` (``{"rnnkern.kernels": "kernels"}``) to its dotted
    place.  Nothing is written into ``tree``.
    """
    tree, site = Path(tree), Path(site)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.so")
    shutil.copytree(tree / "rnnkern", site / "rnnkern", ignore=ignore)
    pyproject = tree / "pyproject.toml"
    mapping = {}
    if pyproject.exists():
        with open(pyproject, "rb") as stream:
            mapping = tomllib.load(stream).get("tool", {}).get("setuptools", {}).get(
                "package-dir", {})
    for package, folder in mapping.items():
        if package:
            target = site.joinpath(*package.split("."))
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(tree / folder, target, ignore=ignore)
    return site


def _time_build(site, request, environment):
    """One fresh process of build ``site`` on ``request``; its answer."""
    env = dict(os.environ, **environment, PYTHONPATH=str(site),
               NUMBA_CACHE_DIR=str(Path(site).parent / "numba-cache"))
    completed = subprocess.run([sys.executable, "-c", _WORKER, json.dumps(request)],
                               cwd=str(Path(site).parent), capture_output=True, text=True,
                               env=env)
    if completed.returncode != 0:
        raise RuntimeError(f"the timing process of {site} failed:\n{completed.stderr[-3000:]}")
    answer = json.loads(completed.stdout.strip().splitlines()[-1])
    if not Path(answer["rnnkern_file"]).resolve().is_relative_to(Path(site).resolve()):
        raise RuntimeError(f"the timing process of {site} imported {answer['rnnkern_file']}")
    return answer


def compare_builds(old_site, new_site, request, pairs, environment, progress=None):
    """Time two builds in alternating fresh processes.

    Returns
    -------
    dict
        ``(cell, shape, pass) -> {"old": [s, ...], "new": [s, ...]}``, one
        figure per process, pairs in order.
    """
    for site in (old_site, new_site):            # compile into each build's cache, untimed
        _time_build(site, request, environment)
    samples = {}
    for index in range(pairs):
        order = (("old", old_site), ("new", new_site))
        for side, site in (order if index % 2 == 0 else order[::-1]):
            for case in _time_build(site, request, environment)["cases"]:
                for name, seconds in case["seconds"].items():
                    key = (case["cell"], tuple(case["shape"]), name)
                    samples.setdefault(key, {"old": [], "new": []})[side].append(seconds)
        if progress:
            progress(f"pair {index + 1}/{pairs} done")
    return samples


def summarize(samples, confidence=CONFIDENCE):
    """One row per case and pass: medians, ratio new/old, its interval, significance."""
    rows = []
    for (cell, shape, name), sides in samples.items():
        ratios = [new / old for old, new in zip(sides["old"], sides["new"])]
        ratio, low, high = ratio_interval(ratios, confidence)
        significant = low > 1.0 or high < 1.0
        rows.append({"cell": cell, "shape": list(shape), "pass": name,
                     "old_median": statistics.median(sides["old"]),
                     "new_median": statistics.median(sides["new"]),
                     "ratio": ratio, "low": low, "high": high, "significant": significant,
                     "verdict": ("slower" if low > 1.0 else "faster" if high < 1.0
                                 else "no significant change"),
                     "samples": sides})
    return rows


def format_results(rows, old_label, new_label, pairs, confidence=CONFIDENCE, clock="cpu"):
    """The table printed by ``--compare``."""
    lines = [f"paired comparison: old = {old_label}, new = {new_label}; {pairs} pairs of "
             f"fresh processes, alternating; {clock} time, min of the repeats per process; "
             f"ratio = new/old (geometric mean over pairs), "
             f"{confidence:.0%} bootstrap interval; significant only if it excludes 1", ""]
    header = ("cell", "T,B,I,H", "pass", "old ms", "new ms", "new/old", "interval", "verdict")
    table = [header]
    for row in rows:
        table.append((row["cell"], ",".join(map(str, row["shape"])), row["pass"],
                      f"{row['old_median'] * 1e3:.2f}", f"{row['new_median'] * 1e3:.2f}",
                      f"{row['ratio']:.3f}", f"[{row['low']:.3f}, {row['high']:.3f}]",
                      ("SIGNIFICANT: " if row["significant"] else "") + row["verdict"]))
    widths = [max(len(r[c]) for r in table) for c in range(len(header))]
    lines += ["  ".join(text.ljust(w) if c < 3 or c == 7 else text.rjust(w)
                        for c, (text, w) in enumerate(zip(r, widths))) for r in table]
    return "\n".join(lines)


def run_compare(revision, cells, shapes, dtype, pairs, repeats, environment, tree=None,
                json_path=None, clock="cpu"):
    """Build ``revision`` and ``tree`` (default: the working tree), time them, print the table.

    Returns
    -------
    int
        0 when nothing is significantly slower, 1 when something is, 2 on a
        build or git error.
    """
    checkout = source_checkout()
    new_tree = Path(tree) if tree else checkout
    request = {"dtype": dtype, "repeats": repeats, "clock": clock,
               "cases": [{"cell": cell, "layer": cell_for(cell).layer,
                          "options": dict(cell_for(cell).layer_options),
                          "shape": [s.T, s.B, s.I, s.H]} for cell in cells for s in shapes]}
    work = Path(tempfile.mkdtemp(prefix="rnnkern-compare-"))
    worktree = work / "worktree"
    try:
        commit = _git(checkout, "rev-parse", "--verify", f"{revision}^{{commit}}")
        _git(checkout, "worktree", "add", "--detach", str(worktree), commit)
        old_site = build_tree(worktree, work / "old" / "site")
        new_site = build_tree(new_tree, work / "new" / "site")
        samples = compare_builds(old_site, new_site, request, pairs, environment,
                                 progress=lambda text: print(text, file=sys.stderr))
    except RuntimeError as err:
        print(err, file=sys.stderr)
        return 2
    finally:
        if worktree.exists():
            subprocess.run(["git", "-C", str(checkout), "worktree", "remove", "--force",
                            str(worktree)], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    rows = summarize(samples)
    new_label = str(new_tree) + (" (working tree)" if tree is None else "")
    print(format_results(rows, f"{revision} ({commit[:10]})", new_label, pairs, clock=clock))
    if json_path:
        with open(json_path, "w") as stream:
            json.dump({"old": revision, "old_commit": commit, "new": str(new_tree),
                       "clock": clock, "threads": environment, "pairs": pairs, "repeats": repeats, "rows": rows}, stream, indent=1)
    return 1 if any(row["verdict"] == "slower" for row in rows) else 0
