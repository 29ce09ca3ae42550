"""`python -m rnnkern train` end to end in subprocesses: metrics, signals, resume, checkpoints."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from batch_support import (classification_config, cli_environment, language_model_config,
                           run_cli, write_arrays, write_config, write_text)
from rnnkern.batch import train
from rnnkern.training import read_checkpoint


@pytest.fixture
def workdir(tmp_path):
    write_arrays(tmp_path)
    write_text(tmp_path)
    return tmp_path


def test_train_writes_metrics_plain_log_lines_and_a_checkpoint(workdir):
    path = write_config(workdir, classification_config(
        model={"layer": "LSTM", "bidirectional": True, "num_layers": 2},
        data={"lengths": "lengths.npy"}, training={"validate_every": 8}))
    result = run_cli("train", path, "--metrics", workdir / "m.jsonl", cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert "step 4/12  loss" in result.stdout and "\r" not in result.stdout   # no bar off a TTY
    records = [json.loads(line) for line in (workdir / "m.jsonl").read_text().splitlines()]
    training = [r for r in records if "loss" in r]
    assert [r["step"] for r in training] == [4, 8, 12]
    assert all(set(r) == {"step", "loss", "samples_per_s", "wall_s", "epoch"} for r in training)
    assert all(np.isfinite(r["loss"]) and r["samples_per_s"] > 0 for r in training)
    assert [r["step"] for r in records if "val_loss" in r] == [8, 12]
    saved = read_checkpoint(workdir / "job.checkpoint.npz")
    assert saved.progress == {"step": 12, "carry": 0}
    assert saved.optimizer_state["steps"] == 12
    assert "0.weight_hh_l1_reverse" in saved.model_state and "1.weight" in saved.model_state


def _lines_until(process, prefix):
    for line in process.stdout:
        if line.startswith(prefix):
            return line
    raise AssertionError(f"the run ended before printing {prefix!r}")


def _start(path, *extra):
    return subprocess.Popen([sys.executable, "-m", "rnnkern", "train", str(path), *extra],
                            cwd=path.parent, env=cli_environment(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


JOBS = {
    # truncated BPTT with the state carried across chunks, Adam, a text file
    "language-model": lambda: language_model_config(training={"steps": 600}),
    # truncated BPTT within each batch, epochs of shuffled samples, SGD with momentum
    "regression-bptt": lambda: classification_config(
        model={"layer": "RNN", "nonlinearity": "relu"},
        data={"targets": "series.npy"}, task={"kind": "regression"},
        optimizer={"name": "sgd", "lr": 0.01, "momentum": 0.9, "clip_norm": 5.0},
        training={"steps": 600, "bptt": 4, "log_every": 1, "dtype": "float64"}),
}


@pytest.mark.parametrize("job", sorted(JOBS))
def test_sigterm_then_resume_equals_an_uninterrupted_run_bit_for_bit(workdir, job):
    (workdir / "a").mkdir()
    (workdir / "b").mkdir()
    for name in ("x.npy", "labels.npy", "series.npy", "text.txt"):
        for sub in ("a", "b"):
            os.link(workdir / name, workdir / sub / name)
    whole = write_config(workdir / "a", JOBS[job]())
    assert run_cli("train", whole, cwd=workdir / "a").returncode == 0
    expected = read_checkpoint(workdir / "a" / "job.checkpoint.npz")

    path = write_config(workdir / "b", JOBS[job]())
    process = _start(path, "--metrics", workdir / "b" / "m.jsonl")
    _lines_until(process, "step 3/")
    process.send_signal(signal.SIGUSR1)                 # save and go on
    _lines_until(process, "SIGUSR1: checkpoint saved at step")
    process.send_signal(signal.SIGTERM)                 # save and stop
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert "stopped by SIGTERM" in stderr
    stopped = read_checkpoint(workdir / "b" / "job.checkpoint.npz").progress["step"]
    assert 3 < stopped < 600

    resumed = run_cli("train", path, "--resume", "--metrics", workdir / "b" / "m.jsonl",
                      cwd=workdir / "b")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {workdir / 'b' / 'job.checkpoint.npz'} at step {stopped}" in \
        resumed.stdout
    final = read_checkpoint(workdir / "b" / "job.checkpoint.npz")
    assert final.progress["step"] == 600
    assert sorted(final.model_state) == sorted(expected.model_state)
    for name, value in expected.model_state.items():
        assert np.array_equal(final.model_state[name], value), name
    for slot, buffers in expected.optimizer_state["slots"].items():
        for name, value in buffers.items():
            assert np.array_equal(final.optimizer_state["slots"][slot][name], value)
    steps = [json.loads(line)["step"] for line in (workdir / "b" / "m.jsonl").read_text()
             .splitlines()]
    assert steps[-1] == 600 and steps[:stopped] == list(range(1, stopped + 1))


def test_a_killed_run_never_leaves_a_half_written_checkpoint(workdir):
    config = language_model_config(training={"steps": 100000, "checkpoint_every": 1})
    path = write_config(workdir, config)
    target = workdir / "job.checkpoint.npz"
    for lines in (3, 11):
        process = _start(path, "--resume")
        for _ in range(lines):
            _lines_until(process, "step ")
        process.kill()                                  # SIGKILL: no handler runs
        process.communicate()
        saved = read_checkpoint(target)                  # complete, whatever the moment
        assert saved.progress["step"] >= 1
    # temporary files a killed writer may leave are removed by the next run
    stale = workdir / "job.checkpoint.npz.abc123.tmp"
    stale.write_bytes(b"partial")
    config["training"]["steps"] = saved.progress["step"] + 1
    write_config(workdir, config)
    result = run_cli("train", path, "--resume", cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert not stale.exists()


def test_resume_refuses_a_different_job_and_bad_checkpoints(workdir, capsys):
    path = str(write_config(workdir, classification_config()))
    assert train.main([path]) == 0
    write_config(workdir, classification_config(model={"hidden_size": 7}))
    assert train.main([path, "--resume"]) == 2
    assert "saved with [model] hidden_size = 6, the configuration now says 7" in \
        capsys.readouterr().err
    (workdir / "job.checkpoint.npz").write_bytes(b"PK\x03\x04 truncated")
    write_config(workdir, classification_config())
    assert train.main([path, "--resume"]) == 2
    assert "corrupt or truncated" in capsys.readouterr().err
    # more steps for the same job is a continuation
    (workdir / "job.checkpoint.npz").unlink()
    assert train.main([path]) == 0
    write_config(workdir, classification_config(training={"steps": 16}))
    assert train.main([path, "--resume"]) == 0
    assert "at step 12" in capsys.readouterr().out
    assert read_checkpoint(workdir / "job.checkpoint.npz").progress["step"] == 16


def test_the_example_job_generates_its_data_and_learns(tmp_path):
    examples = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "examples")
    config = open(os.path.join(examples, "sine.toml"), encoding="utf-8").read()
    (tmp_path / "sine.toml").write_text(config.replace("epochs = 3", "epochs = 2"))
    subprocess.run([sys.executable, os.path.join(examples, "make_data.py"),
                    str(tmp_path / "data")], check=True, capture_output=True)
    result = run_cli("train", tmp_path / "sine.toml", "--metrics", tmp_path / "m.jsonl",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    val_loss = [r["val_loss"] for r in records if "val_loss" in r][-1]
    assert val_loss < 0.5 * np.log(2), records      # far better than guessing (ln 2)
