"""``python -m rnnkern bench``: rnnkern against torch.nn and the NumPy reference.

Prints one table row per cell, shape and pass (forward; forward with torch
under ``no_grad``; forward+backward) with the median time of each library,
the ratios ``torch / rnnkern`` and ``reference / rnnkern`` (above 1 means
rnnkern is faster), and the floor: the GEMM work of the pass timed on its own
with this machine's BLAS (NumPy's on the CPU, cuBLAS through CuPy on the
GPU), in the same run.

Fair by construction:

- Every library runs in processes of its own (:mod:`rnnkern.bench.workers`),
  one at a time, so no library's idle-spinning thread pool steals cores from
  another's timed calls.  Each round starts one fresh process per library
  (and one for the GEMMs), in an order that rotates from round to round, and
  the median is taken over all rounds.
- Each process makes one warm-up forward+backward per case (JIT and kernel
  compilation are not timed), then times each pass in a run of its own: one
  untimed call, then ``--repeats`` timed calls back to back.
- Other processes are watched: a case during whose timing they used more
  than ``--max-interference`` of the machine's CPU is run again in a fresh
  process (``--retries`` times at most), and the table reports the share that
  remained.
- Every library gets the same thread count (``--threads``, default: the
  cores this process may use) through ``OMP_NUM_THREADS``,
  ``OPENBLAS_NUM_THREADS``, ``MKL_NUM_THREADS`` and ``NUMBA_NUM_THREADS`` in
  the worker's environment, and ``torch.set_num_threads``.
- All libraries compute the same thing on the same seeded parameters and
  inputs, and the table says so: a warning is printed if their outputs or
  gradients disagree.
- Torch's forward is timed twice: with autograd on (``fwd``), like rnnkern's
  forward, which keeps what backward needs, and under ``torch.no_grad()``
  (``fwd no_grad``), the inference a torch user gets.

The floor of a pass counts only its GEMMs (``G`` gates, so ``G*H`` gate
columns): forward = input projection ``(T*B, I) @ (I, G*H)`` + ``T`` times
the recurrent ``(B, H) @ (H, G*H)``; backward adds the input gradient
``(T*B, G*H) @ (G*H, I)``, ``T`` recurrent gradients ``(B, G*H) @ (G*H,
H)`` and the two weight gradients ``(G*H, T*B) @ (T*B, I)`` and ``(G*H,
T*B) @ (T*B, H)``; forward+backward is 3x the forward FLOPs.  "% of
floor" is floor time / measured time: 100% means the pass costs no more than
its GEMMs on this BLAS.  Torch uses its own BLAS (MKL/oneDNN on the CPU), so
it can pass 100%.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from ..cells import cell_for
from ..devices import DEVICES
from ..backends.cuda.planner import PATHS
from .shapes import CELLS, FIRST_CALL_SHAPE, parse_shape, shapes_for, single_step_shapes
from .workers import WorkerError, first_call_seconds, run_in_fresh_process

__all__ = ["main"]

LIBRARIES = ("rnnkern", "torch", "reference")
#: Passes of the floor, and rows of the table.  ``forward_no_grad`` is
#: inference: torch under ``torch.no_grad()``, rnnkern's ``layer(x)`` (no
#: tape); the reference has one forward only, and that row repeats it.
PASSES = ("forward", "forward_backward")
ROW_PASSES = ("forward", "forward_no_grad", "forward_backward")
PASS_LABELS = {"forward": "fwd", "forward_no_grad": "fwd no_grad", "forward_backward": "fwd+bwd"}
#: Seconds to wait before re-running items that other processes disturbed.
RETRY_PAUSE_SECONDS = 5
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                    "NUMBA_NUM_THREADS")
#: Checksums of libraries doing the same work agree to this relative tolerance.
AGREEMENT_TOLERANCE = {"float32": 1e-3, "float64": 1e-8}


def _one_cell_per_layer(cells):
    """The first of ``cells`` for each public layer class (``Cell.layer``), in order."""
    first = {}
    for name in cells:
        first.setdefault(cell_for(name).layer, name)
    return tuple(first.values())


#: One cell per layer class: lstm, gru, rnn_tanh (rnn_relu is RNN again).
DEFAULT_CELLS = _one_cell_per_layer(CELLS)


def main(argv=None):
    """Run the benchmark; return the exit status (0 ok, 1 a worker failed, 2 bad usage)."""
    args = _parse_arguments(argv)
    threads = args.threads or _usable_cores()
    if args.gate or args.update_baseline:
        from .gate import main as gate

        return gate(["--update-baseline"] if args.update_baseline else [])
    if args.compare:
        return _compare(args)
    if args.plot:
        return _plot(args, threads)
    cells = args.cell or list(DEFAULT_CELLS)
    shapes = args.shape or list(single_step_shapes() if args.single_step
                                else shapes_for(args.device))
    if args.single_step and any(shape.T != 1 for shape in shapes):
        print("--single-step: a single-step cell runs one step: every --shape needs T = 1",
              file=sys.stderr)
        return 2
    cases = [(cell, shape) for shape in shapes for cell in cells]

    try:
        device = _run_worker({"task": "device", "device": args.device}, threads)
    except WorkerError as err:
        print(err, file=sys.stderr)
        return 1
    if "unavailable" in device:
        print(f"--device {args.device}: {device['unavailable']}", file=sys.stderr)
        return 2

    gemms = sorted({spec for cell, shape in cases for _, _, spec in _gemm_specs(cell, shape)})
    revision_before = _source_revision()
    timings, notes, failures = _run_rounds(args, cases, gemms, threads)
    peak_memory = {}
    if args.memory:
        peak_memory = _measure_peak_memory(args, cases, threads, failures)
    first_calls = {}
    if args.first_call:
        try:
            first_calls = _measure_first_calls(args, cells, threads)
        except WorkerError as err:
            failures.append(str(err))
    device["info"]["rnnkern_source_revision"] = _describe_revisions(revision_before,
                                                                    _source_revision())
    report = _report(args, threads, device["info"], cases, timings, notes, first_calls,
                     peak_memory)
    print(_format_report(report))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(report, out, indent=1)
    for failure in failures:
        print(failure, file=sys.stderr)
    return 1 if failures else 0


def _parse_arguments(argv):
    parser = argparse.ArgumentParser(
        prog="python -m rnnkern bench",
        description="Time rnnkern against torch.nn and the plain NumPy reference, "
                    "each library in its own processes, with the GEMM floor of each shape.")
    parser.add_argument("--device", choices=DEVICES, default="cpu",
                        help="cpu: NumPy arrays vs torch CPU; cuda: CuPy arrays vs cuDNN "
                             "(TF32 off). Default: cpu")
    parser.add_argument("--cuda-path", choices=PATHS, default="auto",
                        help="--device cuda: the path of rnnkern's layers, persistent kernels "
                             "or per-step launches; auto lets the planner choose "
                             "(rnnkern.backends.cuda.planner). Default: auto")
    parser.add_argument("--cell", nargs="+", choices=CELLS, metavar="CELL",
                        help=f"cells among {', '.join(CELLS)}. Default: {' '.join(DEFAULT_CELLS)}")
    parser.add_argument("--shape", nargs="+", type=_shape_argument, metavar="T,B,I,H",
                        help="shapes (sequence length, batch, input size, hidden size). Default: "
                             "the device's shapes in rnnkern.bench.shapes "
                             "(RNNKERN_BENCH_SHAPES=tiny picks tiny ones)")
    parser.add_argument("--single-step", action="store_true",
                        help="time the single-step cells (rnnkern.LSTMCell, ... against "
                             "torch.nn.LSTMCell, ...) on x[0] of shapes with T = 1; the "
                             "reference runs its one-step layer. Default shapes: "
                             "rnnkern.bench.shapes.SINGLE_STEP_SHAPES")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--repeats", type=_positive_int, default=5,
                        help="timed calls per pass, case and round, after one warm-up call. "
                             "Default: 5")
    parser.add_argument("--rounds", type=_positive_int, default=3,
                        help="rounds of fresh worker processes, library order rotating. "
                             "Default: 3")
    parser.add_argument("--threads", type=_positive_int,
                        help="threads for every library. Default: the cores this process may use")
    parser.add_argument("--max-interference", type=float, default=0.10, metavar="SHARE",
                        help="re-run a case when other processes used more than this share of "
                             "the machine's CPU while it was timed. Default: 0.10")
    parser.add_argument("--retries", type=int, default=2,
                        help="re-runs of a disturbed case at most (then it is kept, and "
                             "flagged). Default: 2")
    parser.add_argument("--first-call", action="store_true",
                        help="also time rnnkern's first forward+backward in a fresh process, "
                             "with an empty kernel cache (cold) and a filled one (cached)")
    parser.add_argument("--memory", action="store_true",
                        help="also measure the peak memory of one forward+backward of rnnkern "
                             "and torch, each case in a fresh process of its own (host arrays, "
                             "Linux; see rnnkern.bench.workers._peak_memory)")
    parser.add_argument("--json", metavar="FILE", help="write every figure to FILE as JSON")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the parameters and inputs. Default: 0")
    parser.add_argument("--gate", action="store_true",
                        help="instead of timing: compare the deterministic metrics (memory, "
                             "BLAS calls, FLOPs, launches) with asv_bench/baseline_metrics.json "
                             "(python -m rnnkern.bench.gate); exit 1 on a regression")
    parser.add_argument("--update-baseline", action="store_true",
                        help="write the current deterministic metrics as the baseline")
    parser.add_argument("--compare", metavar="REV",
                        help="instead of the table: time git revision REV against the working "
                             "tree (or --tree) in alternating fresh processes and report each "
                             "ratio new/old with a 95%% bootstrap interval "
                             "(rnnkern.bench.compare); exit 1 if significantly slower. "
                             "Default cell lstm, the device's second shape, --threads 1")
    parser.add_argument("--tree", metavar="DIR",
                        help="with --compare: the source tree to compare with REV. "
                             "Default: the working tree of this checkout")
    parser.add_argument("--pairs", type=_positive_int, default=10,
                        help="with --compare: pairs of processes (old, new). Default: 10")
    parser.add_argument("--plot", metavar="FILE.png",
                        help="instead of the table: draw the time of rnnkern and torch against "
                             "batch and hidden size (rnnkern.bench.plot; needs matplotlib). "
                             "Default cell lstm; --shape gives the base shape of the sweeps")
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                        help="with --compare: time each call by the process's CPU time (robust "
                             "to other processes, with one thread) or wall time. Default: cpu")
    return parser.parse_args(argv)


def _plot(args, threads):
    """``--plot FILE``: see :mod:`rnnkern.bench.plot`."""
    from . import plot

    if args.device != "cpu":
        print("--plot: --device cpu only", file=sys.stderr)
        return 2
    cells = args.cell or ["lstm"]
    base = args.shape[0] if args.shape else plot.BASE_SHAPE
    try:
        seconds, missing = plot.measure_sweep(cells, base, args.dtype, args.repeats, threads,
                                              _thread_environment(threads))
    except WorkerError as err:
        print(err, file=sys.stderr)
        return 1
    try:
        plot.draw(args.plot, seconds, missing, cells, base,
                  f"rnnkern vs torch.nn, {args.dtype}, {threads} threads, CPU, "
                  f"median of {args.repeats} calls; source {_source_revision()}")
    except ImportError as err:
        print(err, file=sys.stderr)
        return 2
    print(f"wrote {args.plot}")
    return 0


def _compare(args):
    """``--compare REV``: see :mod:`rnnkern.bench.compare`."""
    from .compare import run_compare

    if args.device != "cpu":
        print("--compare: --device cpu only", file=sys.stderr)
        return 2
    shapes = args.shape or [shapes_for(args.device)[min(1, len(shapes_for(args.device)) - 1)]]
    return run_compare(args.compare, args.cell or ["lstm"], shapes, args.dtype, args.pairs,
                       args.repeats, _thread_environment(args.threads or 1), tree=args.tree,
                       json_path=args.json, clock=args.clock)


def _shape_argument(text):
    try:
        return parse_shape(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _source_revision():
    """``git describe --always --dirty`` of the rnnkern source tree, or None outside git.

    The figures belong to this revision ("-dirty": with uncommitted changes).
    """
    try:
        completed = subprocess.run(["git", "describe", "--always", "--dirty"],
                                   cwd=Path(__file__).resolve().parent,
                                   capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return completed.stdout.strip() if completed.returncode == 0 else None


def _describe_revisions(before, after):
    """The source revision, or both if the tree changed while the benchmark ran."""
    if before == after:
        return before
    return f"{before}, then {after} (the source changed during the run: its figures mix both)"


def _usable_cores():
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


# ---------------------------------------------------------------------- workers

def _run_worker(request, threads):
    """Run one worker process on ``request`` with ``threads`` threads per library."""
    return run_in_fresh_process(request, _thread_environment(threads))


def _thread_environment(threads):
    return {name: str(threads) for name in THREAD_VARIABLES}


def _run_rounds(args, cases, gemms, threads):
    """Time every library and the GEMMs, ``args.rounds`` times, one process at a time.

    Returns
    -------
    timings : dict
        ``(library, cell, shape, pass) -> [seconds, ...]`` over all rounds;
        ``(library, cell, shape, "warmup_seconds") -> [seconds, ...]``;
        ``(library, cell, shape, "other_cpu_share") -> [share, ...]``;
        ``("checksums", library, cell, shape) -> {name: sum}``;
        ``("gemm", m, k, n, calls) -> [seconds, ...]`` and
        ``("gemm", m, k, n, calls, "other_cpu_share") -> [share, ...]``;
        ``("info", library) -> {...}``.
    notes : dict
        ``library -> why it is missing from the table`` (not installed, ...).
    failures : list of str
        The errors of workers that failed.
    """
    timings, notes, failures = {}, {}, []
    case_list = [{"cell": cell, "shape": _shape_list(shape)} for cell, shape in cases]
    kinds = list(LIBRARIES) + ["gemm"]
    for round_index in range(args.rounds):
        shift = round_index % len(kinds)
        for kind in kinds[shift:] + kinds[:shift]:
            if kind in notes:
                continue
            if kind == "gemm":
                request = {"task": "gemm", "gemms": gemms}
            else:
                request = {"task": "time", "library": kind, "cases": case_list,
                           "threads": threads, "seed": args.seed,
                           "cuda_path": args.cuda_path, "single_step": args.single_step}
            request.update(device=args.device, dtype=args.dtype, repeats=args.repeats)
            started = time.perf_counter()
            try:
                answer, reruns = _run_undisturbed(request, threads, args)
            except WorkerError as err:
                notes[kind] = "failed (see the error below)"
                failures.append(str(err))
                continue
            print(f"round {round_index + 1}/{args.rounds}: {kind} "
                  f"{time.perf_counter() - started:.1f} s"
                  + (f", {reruns} re-run as other processes were busy" if reruns else ""),
                  file=sys.stderr)
            if "unavailable" in answer:
                notes[kind] = answer["unavailable"]
                continue
            timings[("info", kind)] = answer["info"]
            if kind == "gemm":
                for gemm in answer["gemms"]:
                    key = ("gemm", gemm["m"], gemm["k"], gemm["n"], gemm["calls"])
                    timings.setdefault(key, []).extend(gemm["seconds"])
                    timings.setdefault(key + ("other_cpu_share",), []).append(
                        gemm["other_cpu_share"])
                continue
            for case in answer["cases"]:
                shape = tuple(case["shape"])
                for name, samples in case["seconds"].items():
                    timings.setdefault((kind, case["cell"], shape, name), []).extend(samples)
                for name in ("warmup_seconds", "other_cpu_share"):
                    timings.setdefault((kind, case["cell"], shape, name), []).append(case[name])
                timings[("checksums", kind, case["cell"], shape)] = case["checksums"]
                if case.get("cuda_paths"):
                    timings[("cuda_paths", case["cell"], shape)] = case["cuda_paths"]
    return timings, notes, failures


def _run_undisturbed(request, threads, args):
    """Run a worker; re-run the items other processes disturbed, keep the least disturbed.

    An item (a case, or a GEMM) is disturbed when other processes used more
    than ``args.max_interference`` of the machine's CPU while it was timed
    (``workers.OtherProcessesMeter``).  Disturbed items go to a fresh
    worker, after a pause, up to ``args.retries`` times.

    Returns the answer and the number of items re-run.
    """
    items_key = "gemms" if request["task"] == "gemm" else "cases"
    answer = _run_worker(request, threads)
    if "unavailable" in answer:
        return answer, 0
    items, reruns = answer[items_key], 0
    for _ in range(args.retries):
        disturbed = [index for index, item in enumerate(items)
                     if (item["other_cpu_share"] or 0.0) > args.max_interference]
        if not disturbed:
            break
        reruns += len(disturbed)
        time.sleep(RETRY_PAUSE_SECONDS)
        retry = dict(request, **{items_key: [request[items_key][index] for index in disturbed]})
        for index, item in zip(disturbed, _run_worker(retry, threads)[items_key]):
            if (item["other_cpu_share"] or 0.0) < (items[index]["other_cpu_share"] or 0.0):
                items[index] = item
    return answer, reruns


MEMORY_LIBRARIES = ("rnnkern", "torch")


def _measure_peak_memory(args, cases, threads, failures):
    """``(cell, shape) -> {library: bytes or None}``: one fresh process per case and library."""
    measured = {}
    for cell, shape in cases:
        per_library = measured[(cell, tuple(_shape_list(shape)))] = {}
        for library in MEMORY_LIBRARIES:
            request = {"task": "peak_memory", "library": library, "device": args.device,
                       "dtype": args.dtype, "cell": cell, "shape": _shape_list(shape),
                       "threads": threads, "seed": args.seed}
            try:
                answer = _run_worker(request, threads)
            except WorkerError as err:
                failures.append(str(err))
                answer = {}
            per_library[library] = answer.get("bytes")
    return measured


def _measure_first_calls(args, cells, threads):
    """``cell -> {"cold": s, "cached": s}`` (see ``workers.first_call_seconds``)."""
    return {cell: {kind: first_call_seconds(cell, args.dtype, args.device, kind == "cached",
                                            _thread_environment(threads))
                   for kind in ("cold", "cached")}
            for cell in cells}


def _shape_list(shape):
    return [shape.T, shape.B, shape.I, shape.H]


# ---------------------------------------------------------------------- the floor

def _gemm_specs(cell, shape):
    """``[(name, pass, (m, k, n, calls)), ...]``: the GEMMs of one layer-direction.

    ``pass`` is ``"forward"`` (in both passes) or ``"backward"`` (in
    forward+backward only); see the module docstring.
    """
    T, B, I, H = shape.T, shape.B, shape.I, shape.H
    gate_columns = cell_for(cell).num_gates * H
    return [
        ("input projection", "forward", (T * B, I, gate_columns, 1)),
        ("recurrent product", "forward", (B, H, gate_columns, T)),
        ("input gradient", "backward", (T * B, gate_columns, I, 1)),
        ("recurrent gradient", "backward", (B, gate_columns, H, T)),
        ("input weight gradient", "backward", (gate_columns, T * B, I, 1)),
        ("recurrent weight gradient", "backward", (gate_columns, T * B, H, 1)),
    ]


def _floor(cell, shape, timings):
    """``pass -> {"flops", "seconds", "gemms"}``: the GEMM work of each pass and its time.

    ``seconds`` is None when a GEMM of the pass was not timed.
    """
    floor = {name: {"flops": 0, "seconds": 0.0, "gemms": []} for name in PASSES}
    for name, gemm_pass, (m, k, n, calls) in _gemm_specs(cell, shape):
        seconds = _median(timings.get(("gemm", m, k, n, calls)))
        flops = 2 * m * k * n * calls
        gemm = {"gemm": name, "m": m, "k": k, "n": n, "calls": calls, "flops": flops,
                "seconds": seconds, "gflops_per_second": _ratio(flops / 1e9, seconds)}
        for pass_name in PASSES if gemm_pass == "forward" else ("forward_backward",):
            pass_floor = floor[pass_name]
            pass_floor["flops"] += flops
            pass_floor["gemms"].append(gemm)
            pass_floor["seconds"] = (None if seconds is None or pass_floor["seconds"] is None
                                     else pass_floor["seconds"] + seconds)
    return floor


# ---------------------------------------------------------------------- report

def _median(samples):
    return statistics.median(samples) if samples else None


def _row_samples(timings, library, cell, shape, row_pass):
    """A library's samples for a table row: a library without an inference pass (the
    reference) has its one forward stand in for ``forward_no_grad``."""
    samples = timings.get((library, cell, shape, row_pass))
    if samples is None and row_pass == "forward_no_grad":
        samples = timings.get((library, cell, shape, "forward"))
    return samples


def _worst(shares):
    shares = [share for share in shares if share is not None]
    return max(shares) if shares else None


def _ratio(numerator, denominator):
    if numerator is None or denominator is None:
        return None
    return numerator / denominator


def _agreement(checksums):
    """Largest relative difference of any library's checksums from rnnkern's, or None."""
    base = checksums.get("rnnkern")
    if base is None:
        return None
    worst = 0.0
    for library, sums in checksums.items():
        for name, value in sums.items():
            worst = max(worst, abs(value - base[name]) / max(abs(base[name]), 1e-30))
    return worst


def _report(args, threads, device_info, cases, timings, notes, first_calls, peak_memory):
    """Everything measured, as one JSON-ready dict."""
    rows = []
    for cell, shape in cases:
        key = tuple(_shape_list(shape))
        floor = _floor(cell, shape, timings)
        checksums = {library: timings[("checksums", library, cell, key)]
                     for library in LIBRARIES if ("checksums", library, cell, key) in timings}
        worst = _agreement(checksums)
        for name in ROW_PASSES:
            samples = {library: _row_samples(timings, library, cell, key, name)
                       for library in LIBRARIES}
            seconds = {library: _median(s) for library, s in samples.items()}
            pass_floor = floor["forward" if name == "forward_no_grad" else name]
            floor_seconds = pass_floor["seconds"]
            rows.append({
                "cell": cell, "shape": list(key), "pass": name,
                "seconds": seconds, "samples": samples,
                "warmup_seconds": {library: timings.get((library, cell, key, "warmup_seconds"))
                                   for library in LIBRARIES},
                "other_cpu_share": {library: timings.get((library, cell, key, "other_cpu_share"))
                                    for library in LIBRARIES},
                "ratios": {"torch/rnnkern": _ratio(seconds["torch"], seconds["rnnkern"]),
                           "reference/rnnkern": _ratio(seconds["reference"], seconds["rnnkern"])},
                "floor": pass_floor,
                "percent_of_floor": {library: None if s is None or floor_seconds is None
                                     else 100.0 * floor_seconds / s
                                     for library, s in seconds.items()},
                "checksums": checksums,
                "largest_relative_difference": worst,
                "libraries_agree": None if worst is None else worst <= AGREEMENT_TOLERANCE[args.dtype],
            })
    return {
        "settings": {"device": args.device, "dtype": args.dtype, "threads": threads,
                     "cuda_path": args.cuda_path, "single_step": args.single_step,
                     "repeats": args.repeats, "rounds": args.rounds, "seed": args.seed,
                     "max_interference": args.max_interference, "retries": args.retries},
        "other_cpu_share_worst": {kind: _worst([share for key, shares in timings.items()
                                                if key[0] == kind and key[-1] == "other_cpu_share"
                                                for share in shares])
                                  for kind in LIBRARIES + ("gemm",)},
        "machine": device_info,
        "libraries": {library: timings.get(("info", library)) for library in LIBRARIES},
        "missing": notes,
        "rows": rows,
        "first_call_seconds": first_calls,
        "first_call_shape": _shape_list(FIRST_CALL_SHAPE),
        "peak_memory_bytes": [{"cell": cell, "shape": list(shape), "bytes": per_library}
                              for (cell, shape), per_library in peak_memory.items()],
        "cuda_paths": {f"{cell} {','.join(map(str, _shape_list(shape)))}":
                       timings.get(("cuda_paths", cell, tuple(_shape_list(shape))), [])
                       for cell, shape in cases} if args.device == "cuda" else {},
    }


def _format_ms(seconds):
    if seconds is None:
        return "n/a"
    ms = seconds * 1e3
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 10 else f"{ms:.1f}" if ms < 100 else f"{ms:.0f}"


def _format_ratio(value):
    return "n/a" if value is None else f"{value:.2f}"


def _format_percent(value):
    return "n/a" if value is None else f"{value:.0f}%"


def _format_report(report):
    settings, machine = report["settings"], report["machine"]
    torch_info = report["libraries"].get("torch") or {}
    rnnkern_info = report["libraries"].get("rnnkern") or {}
    samples = settings["repeats"] * settings["rounds"]
    lines = [
        f"rnnkern bench: device {settings['device']}, {settings['dtype']}, "
        f"{settings['threads']} threads per library, median of {samples} timed calls "
        f"({settings['rounds']} rounds x {settings['repeats']}) after a warm-up call"
        + ("; single-step cells (rnnkern.LSTMCell, ... vs torch.nn.LSTMCell, ...; the "
           "reference: its layer for one step)" if settings.get("single_step") else ""),
        f"machine: {machine.get('gpu') or machine['cpu']} ({machine['cpu_count']} cores), "
        f"numpy {machine['numpy']} with {machine['blas'] or 'no BLAS found'}"
        + (f", torch {torch_info['torch']}" if torch_info else ""),
        f"rnnkern source: {machine.get('rnnkern_source_revision') or 'not a git checkout'}"
        + (f", its CPU GEMMs: RNNKERN_BLAS={rnnkern_info['rnnkern_cpu_blas']}"
           if rnnkern_info and settings["device"] == "cpu" else ""),
    ]
    for library, why in report["missing"].items():
        lines.append(f"{library}: n/a, {why}")
    header = ("cell", "T,B,I,H", "pass", "rnnkern ms", "torch ms", "reference ms",
              "torch/rnnkern", "reference/rnnkern", "floor ms", "rnnkern % floor",
              "torch % floor")
    table = [header]
    for row in report["rows"]:
        table.append((row["cell"], ",".join(map(str, row["shape"])), PASS_LABELS[row["pass"]],
                      *(_format_ms(row["seconds"][library]) for library in LIBRARIES),
                      _format_ratio(row["ratios"]["torch/rnnkern"]),
                      _format_ratio(row["ratios"]["reference/rnnkern"]),
                      _format_ms(row["floor"]["seconds"]),
                      _format_percent(row["percent_of_floor"]["rnnkern"]),
                      _format_percent(row["percent_of_floor"]["torch"])))
    lines.append("")
    lines.extend(_aligned(table, left_columns=3))
    lines.append("")
    lines.append("fwd: rnnkern's layer.forward (keeps the tape) and torch with autograd on; "
                 "fwd no_grad: inference, rnnkern's layer(x) (no tape) and torch under "
                 "torch.no_grad() (the reference: its one forward, as in fwd).")
    lines.append("ratios: other library's time / rnnkern's (above 1: rnnkern faster). "
                 "% floor: floor time / library time.")
    lines.append("floor: the GEMMs of the pass alone, on "
                 + ("cuBLAS (CuPy)" if settings["device"] == "cuda" else "NumPy's BLAS")
                 + ", timed in this run; GFLOP/s of each GEMM (x T: once per step):")
    for case, paths in report.get("cuda_paths", {}).items():
        for path in paths or ["(no plan recorded)"]:
            lines.append(f"rnnkern CUDA path (--cuda-path {settings['cuda_path']}), {case}: "
                         f"{path}")
    lines.append("")
    lines.extend(_floor_table(report["rows"]))
    lines.extend(_interference_lines(report))
    disagreeing = [r for r in report["rows"] if r["libraries_agree"] is False
                   and r["pass"] == "forward"]
    for row in disagreeing:
        lines.append(f"WARNING: {row['cell']} {row['shape']}: libraries disagree "
                     f"(relative difference of |y|, |dx| or |dW_hh| sums up to "
                     f"{row['largest_relative_difference']:.2g}): {row['checksums']}")
    lines.extend(_memory_table(report["peak_memory_bytes"]))
    if report["first_call_seconds"]:
        shape = ",".join(map(str, report["first_call_shape"]))
        calls = "; ".join(f"{cell} {_format_seconds(s['cold'])} cold, "
                          f"{_format_seconds(s['cached'])} cached"
                          for cell, s in report["first_call_seconds"].items())
        lines.append(f"first forward+backward in a fresh process (shape {shape}, "
                     f"compilation included): {calls}")
    return "\n".join(lines)


def _memory_table(measured):
    """Lines of the peak-memory table (``--memory``), or none."""
    if not measured:
        return []
    table = [("cell", "T,B,I,H", *(f"{library} MiB" for library in MEMORY_LIBRARIES),
              "torch/rnnkern")]
    for item in measured:
        measured_bytes = item["bytes"]
        mib = [None if measured_bytes[library] is None else measured_bytes[library] / 2**20
               for library in MEMORY_LIBRARIES]
        ratio = (None if not measured_bytes["rnnkern"]          # None, or 0: no ratio
                 else _ratio(measured_bytes["torch"], measured_bytes["rnnkern"]))
        table.append((item["cell"], ",".join(map(str, item["shape"])),
                      *("n/a" if value is None else f"{value:.1f}" for value in mib),
                      _format_ratio(ratio)))
    return ["", "peak memory of one forward+backward: the rise of the resident set above what "
                "the process held before the call, after a warm-up call at T=2 (fresh process "
                "per case and library):", "", *_aligned(table, left_columns=2)]


def _interference_lines(report):
    """How much CPU other processes took while each library was timed (the worst kept)."""
    worst = report["other_cpu_share_worst"]
    measured = {kind: share for kind, share in worst.items() if share is not None}
    if not measured:
        return []
    lines = ["other processes' share of the CPU while timed (worst case or GEMM kept): "
             + ", ".join(f"{kind} {share:.0%}" for kind, share in measured.items())]
    limit = report["settings"]["max_interference"]
    if max(measured.values()) > limit:
        lines.append(f"WARNING: above {limit:.0%} even after re-runs: other processes were "
                     f"busy, the times are noisy (see other_cpu_share in --json)")
    return lines


def _floor_table(rows):
    """Lines of the floor table: one row per cell and shape."""
    forward_rows = [row for row in rows if row["pass"] == "forward"]
    full_rows = [row for row in rows if row["pass"] == "forward_backward"]
    gemm_names = [gemm["gemm"] for gemm in full_rows[0]["floor"]["gemms"]] if full_rows else []
    table = [("cell", "T,B,I,H", "fwd GFLOP", "fwd floor ms", "fwd+bwd GFLOP",
              "fwd+bwd floor ms", *gemm_names)]
    for forward, full in zip(forward_rows, full_rows):
        gemms = full["floor"]["gemms"]
        table.append((full["cell"], ",".join(map(str, full["shape"])),
                      f"{forward['floor']['flops'] / 1e9:.3g}",
                      _format_ms(forward["floor"]["seconds"]),
                      f"{full['floor']['flops'] / 1e9:.3g}",
                      _format_ms(full["floor"]["seconds"]),
                      *(_format_rate(g["gflops_per_second"])
                        + (" x T" if g["calls"] > 1 else "") for g in gemms)))
    return _aligned(table, left_columns=2)


def _aligned(table, left_columns):
    """Rows of strings -> lines, the first ``left_columns`` left-aligned, the rest right."""
    widths = [max(len(row[column]) for row in table) for column in range(len(table[0]))]
    return ["  ".join(text.ljust(width) if column < left_columns else text.rjust(width)
                      for column, (text, width) in enumerate(zip(row, widths)))
            for row in table]


def _format_rate(gflops):
    return "n/a" if gflops is None else f"{gflops:.3g}"


def _format_seconds(seconds):
    return "n/a" if seconds is None else f"{seconds:.2f} s"
