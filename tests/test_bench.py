"""The benchmarks themselves run: every asv benchmark once on the tiny shapes,
``asv check`` accepts them, and ``python -m rnnkern bench`` writes its figures.

A benchmark that breaks (an API change, a typo in a rarely run combination)
fails here, on machines without a GPU too, instead of in someone's nightly
asv run.
"""

import importlib
import importlib.util
import inspect
import itertools
import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

from rnnkern.bench.shapes import (CPU_SHAPES, SHAPES_VARIABLE, TINY_SHAPES, parse_shape,
                                  shape_selection)
from rnnkern.cells import cell_for
from rnnkern.devices import cuda_unavailable_reason

REPO = Path(__file__).resolve().parents[1]
BENCHMARK_PREFIXES = ("time_", "timeraw_", "peakmem_", "mem_", "track_")   # asv's
GPU_MISSING = cuda_unavailable_reason()
TORCH_INSTALLED = importlib.util.find_spec("torch") is not None


def _load_benchmark_modules():
    """Every module of ``asv_bench/benchmarks``, imported with the tiny shapes selected."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(SHAPES_VARIABLE, "tiny")
        patch.syspath_prepend(str(REPO / "asv_bench"))
        package = importlib.import_module("benchmarks")
        return [importlib.import_module(f"benchmarks.{module.name}")
                for module in pkgutil.iter_modules(package.__path__)]


def _benchmark_methods(cls):
    return [name for name in dir(cls) if name.startswith(BENCHMARK_PREFIXES)]


BENCHMARK_MODULES = _load_benchmark_modules()
# as asv discovers them: public classes of the module with benchmark methods
# (a private base such as _ForcedPathTime is not a benchmark)
BENCHMARK_CLASSES = [cls for module in BENCHMARK_MODULES
                     for name, cls in inspect.getmembers(module, inspect.isclass)
                     if cls.__module__ == module.__name__ and not name.startswith("_")
                     and _benchmark_methods(cls)]


def _cases():
    """(class, parameter combination) for every asv benchmark class.

    FirstCall runs for one cell and dtype only: each of its calls starts
    fresh processes that compile every kernel, seconds apiece.
    """
    for cls in BENCHMARK_CLASSES:
        for params in itertools.product(*cls.params):
            named = dict(zip(cls.param_names, params))
            if cls.__name__ == "FirstCall" and (named["cell"], named["dtype"]) != ("lstm", "float32"):
                continue
            yield pytest.param(cls, params, id=f"{cls.__name__}-{'-'.join(params)}")


def test_the_benchmarks_use_the_tiny_shapes():
    recurrent = importlib.import_module("benchmarks.recurrent")
    assert recurrent.SHAPES == [str(shape) for shape in TINY_SHAPES]
    assert {cls.__name__ for cls in BENCHMARK_CLASSES} >= {
        "LayerTime", "SingleStepTime", "HostMemory", "GpuPoolMemory", "FirstCall"}


@pytest.mark.parametrize("benchmark_class, params", list(_cases()))
def test_benchmark_runs_once(benchmark_class, params, monkeypatch):
    monkeypatch.setenv(SHAPES_VARIABLE, "tiny")
    benchmark = benchmark_class()
    try:
        benchmark.setup(*params)
    except NotImplementedError as why:
        # With the tiny shapes (on every device) the only reason to skip is a missing GPU.
        assert GPU_MISSING is not None and str(why) == GPU_MISSING, why
        pytest.skip(str(why))
    for name in _benchmark_methods(benchmark_class):
        result = getattr(benchmark, name)(*params)
        if name.startswith("track_"):
            assert isinstance(result, (int, float)) and result > 0, (name, result)
        else:
            assert result is None, (name, result)
    if hasattr(benchmark, "teardown"):
        benchmark.teardown(*params)


def test_asv_check_accepts_the_benchmarks():
    pytest.importorskip("asv")
    completed = subprocess.run([sys.executable, "-m", "asv", "check", "--python=same"],
                               cwd=REPO, capture_output=True, text=True, timeout=120,
                               env=_environment(RNNKERN_BENCH_SHAPES="tiny"))
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "No problems found" in completed.stdout


def _environment(**variables):
    return dict(os.environ, **variables)


def _run_bench(*arguments, **environment):
    """``python -m rnnkern bench`` without re-runs (a busy test machine is not an error)."""
    return subprocess.run([sys.executable, "-m", "rnnkern", "bench", "--retries", "0", *arguments],
                          capture_output=True, text=True, timeout=300,
                          env=_environment(**environment))


def test_bench_command_writes_every_figure(tmp_path):
    report_file = tmp_path / "bench.json"
    shape = parse_shape("5,3,4,8")
    completed = _run_bench("--cell", "lstm", "gru", "--shape", str(shape), "--repeats", "2",
                           "--rounds", "1", "--json", str(report_file))
    assert completed.returncode == 0, completed.stderr
    assert "torch/rnnkern" in completed.stdout and "floor ms" in completed.stdout

    report = json.loads(report_file.read_text())
    assert report["settings"]["repeats"] == 2 and report["settings"]["threads"] >= 1
    assert report["machine"]["cpu_count"] >= 1
    libraries = ("rnnkern", "torch", "reference") if TORCH_INSTALLED else ("rnnkern", "reference")
    rows = report["rows"]
    assert [(row["cell"], row["pass"]) for row in rows] == [
        (cell, name) for cell in ("lstm", "gru")
        for name in ("forward", "forward_no_grad", "forward_backward")]
    for row in rows:
        assert row["shape"] == [5, 3, 4, 8]
        for library in libraries:
            assert len(row["samples"][library]) == 2
            assert row["seconds"][library] > 0
            assert row["percent_of_floor"][library] > 0
        assert row["ratios"]["reference/rnnkern"] == pytest.approx(
            row["seconds"]["reference"] / row["seconds"]["rnnkern"])
        if TORCH_INSTALLED:
            assert row["ratios"]["torch/rnnkern"] == pytest.approx(
                row["seconds"]["torch"] / row["seconds"]["rnnkern"])
        # Forward GEMMs: 2*T*B*G*H*(I+H) FLOPs; forward+backward does three times that.
        forward_flops = 2 * shape.T * shape.B * cell_for(row["cell"]).num_gates * shape.H * (
            shape.I + shape.H)
        assert row["floor"]["flops"] == forward_flops * (3 if row["pass"] == "forward_backward" else 1)
        assert row["floor"]["seconds"] > 0
        assert row["libraries_agree"] is True, row["checksums"]
    forward, no_grad = rows[0], rows[1]
    assert no_grad["samples"]["reference"] == forward["samples"]["reference"]  # one forward only
    assert no_grad["samples"]["rnnkern"] != forward["samples"]["rnnkern"]      # layer(x), timed apart
    if TORCH_INSTALLED:
        assert no_grad["samples"]["torch"] != forward["samples"]["torch"]


def test_bench_single_step_times_the_cells_and_agrees_with_torch(tmp_path):
    """``--single-step`` times rnnkern.LSTMCell (GRUCell) against torch.nn's on x[0]: the
    checksums of h', dx and dW_hh agree with torch's cells and with the reference's one-step
    layer; a shape with T > 1 is refused."""
    report_file = tmp_path / "bench.json"
    completed = _run_bench("--single-step", "--cell", "lstm", "gru", "--shape", "1,3,4,8",
                           "--repeats", "1", "--rounds", "1", "--json", str(report_file))
    assert completed.returncode == 0, completed.stderr
    assert "single-step cells" in completed.stdout
    report = json.loads(report_file.read_text())
    assert report["settings"]["single_step"] is True
    for row in report["rows"]:
        assert row["libraries_agree"] is True, row["checksums"]
        assert row["seconds"]["rnnkern"] > 0
    refused = _run_bench("--single-step", "--cell", "lstm", "--shape", "2,3,4,8")
    assert refused.returncode == 2 and "T = 1" in refused.stderr


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux procfs")
def test_peak_memory_counts_what_a_forward_backward_allocates():
    """The ``peak_memory`` worker sees at least the tape and the gate gradients of a
    forward+backward (LSTM: the saved gates and dG, each T*B*4H elements), and at most
    a few times all the call's arrays; torch answers too where it is installed."""
    from rnnkern.bench.workers import run_in_fresh_process

    T, B, I, H = 200, 16, 8, 64
    request = {"task": "peak_memory", "device": "cpu", "dtype": "float64", "cell": "lstm",
               "shape": [T, B, I, H], "threads": 1, "seed": 0}
    gates_bytes = T * B * 4 * H * 8
    answer = run_in_fresh_process(dict(request, library="rnnkern"))
    assert 2 * gates_bytes <= answer["bytes"] <= 8 * gates_bytes, answer
    torch_answer = run_in_fresh_process(dict(request, library="torch"))
    if TORCH_INSTALLED:
        assert gates_bytes <= torch_answer["bytes"], torch_answer
    else:
        assert "unavailable" in torch_answer
    assert "unavailable" in run_in_fresh_process(dict(request, library="rnnkern",
                                                      device="cuda"))


def test_bench_memory_table(tmp_path):
    report_file = tmp_path / "bench.json"
    completed = _run_bench("--cell", "gru", "--shape", "30,4,8,16", "--repeats", "1",
                           "--rounds", "1", "--memory", "--json", str(report_file))
    assert completed.returncode == 0, completed.stderr
    assert "peak memory of one forward+backward" in completed.stdout
    (item,) = json.loads(report_file.read_text())["peak_memory_bytes"]
    assert item["cell"] == "gru" and item["shape"] == [30, 4, 8, 16]
    assert item["bytes"]["rnnkern"] >= 0
    assert (item["bytes"]["torch"] is not None) == TORCH_INSTALLED


def test_bench_without_torch_says_n_a(tmp_path):
    """A ``torch`` package that fails to import stands in for torch not installed."""
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text("raise ImportError('no torch here')\n")
    report_file = tmp_path / "bench.json"
    completed = _run_bench("--cell", "rnn_tanh", "--shape", "5,1,4,8", "--repeats", "1",
                           "--rounds", "1", "--json", str(report_file),
                           PYTHONPATH=str(tmp_path))
    assert completed.returncode == 0, completed.stderr
    assert "torch: n/a, torch is not installed" in completed.stdout
    report = json.loads(report_file.read_text())
    for row in report["rows"]:
        assert row["seconds"]["torch"] is None and row["ratios"]["torch/rnnkern"] is None
        assert row["seconds"]["rnnkern"] > 0


@pytest.mark.skipif(GPU_MISSING is None, reason="a GPU is present")
def test_bench_on_cuda_without_a_gpu_says_why():
    completed = _run_bench("--device", "cuda", "--shape", "5,1,4,8")
    assert completed.returncode == 2
    assert completed.stderr.strip() == f"--device cuda: {GPU_MISSING}"


def test_bench_modules_import_neither_torch_nor_cupy():
    code = ("import sys, rnnkern.bench, rnnkern.bench.cli, rnnkern.bench.shapes, "
            "rnnkern.bench.workers, rnnkern.bench.workloads; "
            "print(sorted({'torch', 'cupy'} & set(sys.modules)))")
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                               check=True)
    assert completed.stdout.strip() == "[]"


def test_shape_selection_and_parsing(monkeypatch):
    monkeypatch.delenv(SHAPES_VARIABLE, raising=False)
    assert shape_selection() == "full"
    assert parse_shape("100,32,128,256") == CPU_SHAPES[1]
    assert str(CPU_SHAPES[1]) == "100,32,128,256"
    for bad in ("100,32,128", "100,0,128,256", "a,b,c,d"):
        with pytest.raises(ValueError, match="T,B,I,H"):
            parse_shape(bad)
    monkeypatch.setenv(SHAPES_VARIABLE, "huge")
    with pytest.raises(ValueError, match=SHAPES_VARIABLE):
        shape_selection()


def test_plot_draws_or_says_how_to_get_matplotlib(tmp_path):
    """``--plot``: a PNG where matplotlib is installed, else exit 2 naming the extra."""
    picture = tmp_path / "speed.png"
    completed = _run_bench("--plot", str(picture), "--shape", "3,2,4,8", "--repeats", "1")
    if importlib.util.find_spec("matplotlib") is None:
        assert completed.returncode == 2, completed.stderr
        assert "pip install matplotlib" in completed.stderr
        assert not picture.exists()
    else:
        assert completed.returncode == 0, completed.stderr
        assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
