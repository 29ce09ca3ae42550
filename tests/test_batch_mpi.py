"""Data-parallel training over MPI: 2 ranks equal 1 rank, fused buckets, a failing rank aborts.

Needs mpi4py and an ``mpiexec`` (``pip install mpi4py mpich``); skipped without them.
"""

import json
import os
import shutil
import sys
import textwrap
import time

import numpy as np
import pytest

from batch_support import (classification_config, language_model_config, run_cli,
                           write_arrays, write_config, write_text, cli_environment)
from rnnkern.training import read_checkpoint

MPI = pytest.importorskip("mpi4py.MPI")
MPIEXEC = shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep +
                       os.environ.get("PATH", ""))
needs_mpiexec = pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec on the PATH")


@pytest.fixture
def workdir(tmp_path):
    write_arrays(tmp_path)
    write_text(tmp_path)
    return tmp_path


def _run_both(workdir, config):
    """The same job on 1 process and on 2 ranks; returns both checkpoints and metrics."""
    results = {}
    for ranks in (1, 2):
        path = write_config(workdir, config, f"ranks{ranks}.toml")
        launcher = (MPIEXEC, "-n", "2") if ranks == 2 else ()
        result = run_cli("train", path, "--metrics", workdir / f"ranks{ranks}.jsonl",
                         cwd=workdir, launcher=launcher)
        assert result.returncode == 0, result.stdout + result.stderr
        metrics = [json.loads(line) for line in
                   (workdir / f"ranks{ranks}.jsonl").read_text().splitlines()]
        results[ranks] = (read_checkpoint(workdir / f"ranks{ranks}.checkpoint.npz"), metrics,
                          result.stdout)
    return results


@needs_mpiexec
@pytest.mark.parametrize("job", ["classification", "language-model"])
def test_two_ranks_equal_one_process_with_the_same_global_batch(workdir, job):
    config = (classification_config(data={"lengths": "lengths.npy"}, training={"steps": 10})
              if job == "classification" else
              language_model_config(training={"steps": 10, "log_every": 5}))
    results = _run_both(workdir, config)
    (one, one_metrics, _), (two, two_metrics, two_log) = results[1], results[2]
    assert two.progress == one.progress
    for name, value in one.model_state.items():
        np.testing.assert_allclose(two.model_state[name], value, rtol=2e-5, atol=2e-6,
                                   err_msg=name)
    # only rank 0 logs, and the logged loss is the global one
    assert [m["step"] for m in two_metrics] == [m["step"] for m in one_metrics]
    for a, b in zip(one_metrics, two_metrics):
        key = "loss" if "loss" in a else "val_loss"
        assert b[key] == pytest.approx(a[key], rel=1e-5)
    assert two_log.count("done: 10 steps") == 1


def test_gradients_travel_in_a_few_fused_buckets():
    from rnnkern.batch.distributed import MPICommunicator
    comm = MPICommunicator(MPI.COMM_SELF, bucket_bytes=1000)
    rng = np.random.default_rng(0)
    grads = {f"p{k}": rng.standard_normal(shape).astype(np.float32)
             for k, shape in enumerate([(10, 10), (3,), (50,), (200,), (7, 7), (2,)])}
    buckets = comm.buckets(grads)
    assert buckets == [["p0", "p1", "p2"], ["p3", "p4"], ["p5"]]   # <= 1000 bytes each
    averaged, loss, stop, save = comm.reduce_step(grads, 0.5, 12, False, True)
    assert comm.messages == 1 + len(buckets)             # the totals and one per bucket
    assert (loss, stop, save) == (0.5, False, True)
    for name, g in grads.items():
        np.testing.assert_allclose(averaged[name], g, rtol=1e-6)
    whole = MPICommunicator(MPI.COMM_SELF)               # default: one message for all
    assert len(whole.buckets(grads)) == 1


@needs_mpiexec
def test_a_failing_rank_aborts_the_whole_job_with_a_message(workdir):
    path = write_config(workdir, classification_config(training={"steps": 50}))
    script = workdir / "fail_on_rank1.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        from mpi4py import MPI
        import rnnkern.batch.train as train
        calls = []
        real = train.task_loss
        def failing(*args, **kwargs):
            calls.append(1)
            if MPI.COMM_WORLD.Get_rank() == 1 and len(calls) == 3:
                raise RuntimeError("injected failure on rank 1")
            return real(*args, **kwargs)
        train.task_loss = failing
        sys.exit(train.main([{str(path)!r}]))
    """))
    import subprocess
    started = time.perf_counter()
    result = subprocess.run([MPIEXEC, "-n", "2", sys.executable, str(script)], cwd=workdir,
                            env=cli_environment(), capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "rank 1 of 2: RuntimeError: injected failure on rank 1; aborting all ranks" in \
        result.stderr
    assert time.perf_counter() - started < 30                   # no hang until the timeout


@needs_mpiexec
def test_a_set_up_error_on_one_rank_ends_all_ranks_with_one_message(workdir):
    path = write_config(workdir, classification_config())
    script = workdir / "bad_data_on_rank1.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        from mpi4py import MPI
        import rnnkern.batch.train as train
        from rnnkern.batch.config import ConfigError
        real = train.load_data
        def load_data(config):
            if MPI.COMM_WORLD.Get_rank() == 1:
                raise ConfigError("[data] inputs: unreadable on this node")
            return real(config)
        train.load_data = load_data
        sys.exit(train.main([{str(path)!r}]))
    """))
    import subprocess
    result = subprocess.run([MPIEXEC, "-n", "2", sys.executable, str(script)], cwd=workdir,
                            env=cli_environment(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.count("rnnkern train: error") == 1
    assert "rank 1 of 2: [data] inputs: unreadable on this node" in result.stderr


@needs_mpiexec
def test_a_batch_that_does_not_split_over_the_ranks_is_a_clear_error(workdir):
    path = write_config(workdir, classification_config(training={"batch_size": 7}))
    result = run_cli("train", path, cwd=workdir, launcher=(MPIEXEC, "-n", "2"))
    assert result.returncode == 2
    assert "[training] batch_size: expected a multiple of the 2 MPI ranks" in result.stderr
    assert result.stderr.count("rnnkern train: error") == 1        # rank 0 reports it
