"""Small data sets, configurations and a CLI runner shared by the tests/test_batch_*.py files."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_arrays(directory, n=48, steps=9, features=3, seed=0):
    """x.npy (N, T, I) float32, labels.npy (N,), series.npy (N, T, 1), lengths.npy (N,)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, steps, features)).astype(np.float32)
    np.save(directory / "x.npy", x)
    np.save(directory / "labels.npy", (x[:, :, 0].sum(axis=1) > 0).astype(np.int64))
    np.save(directory / "series.npy", np.cumsum(x[:, :, :1], axis=1).astype(np.float32))
    np.save(directory / "lengths.npy", rng.integers(2, steps + 1, n))
    return x


def write_text(directory, characters=3000):
    text = "".join(f"def f{k}(x):\n    return x * {k % 7} + {k % 5}\n" for k in range(200))
    (directory / "text.txt").write_text(text[:characters], encoding="utf-8")


def toml_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def to_toml(config):
    lines = []
    for table, values in config.items():
        lines.append(f"[{table}]")
        lines.extend(f"{key} = {toml_value(value)}" for key, value in values.items())
    return "\n".join(lines) + "\n"


def classification_config(**tables):
    config = {
        "model": {"input": "dense", "layer": "GRU", "hidden_size": 6},
        "data": {"inputs": "x.npy", "targets": "labels.npy", "validation_split": 0.25},
        "task": {"kind": "classification"},
        "optimizer": {"name": "adam", "lr": 0.01, "clip_norm": 1.0},
        "training": {"batch_size": 8, "steps": 12, "log_every": 4, "seed": 3},
    }
    for table, values in tables.items():
        config[table] = {**config.get(table, {}), **values}
    return config


def language_model_config(**tables):
    config = {
        "model": {"input": "embedding", "embedding_dim": 5, "layer": "LSTM", "hidden_size": 12},
        "data": {"text": "text.txt", "validation_split": 0.1},
        "task": {"kind": "language_model"},
        "optimizer": {"name": "adam", "lr": 0.005, "clip_norm": 1.0},
        "training": {"batch_size": 4, "steps": 60, "bptt": 8, "log_every": 1, "seed": 1},
    }
    for table, values in tables.items():
        config[table] = {**config.get(table, {}), **values}
    return config


def write_config(directory, config, name="job.toml"):
    path = directory / name
    path.write_text(to_toml(config), encoding="utf-8")
    return path


def cli_environment():
    env = dict(os.environ)
    env["PYTHONPATH"] = REPOSITORY + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("NUMBA_NUM_THREADS", "1")
    return env


def run_cli(*args, cwd, timeout=120, launcher=()):
    """Run ``python -m rnnkern ARGS`` in a subprocess; return the CompletedProcess."""
    return subprocess.run([*launcher, sys.executable, "-m", "rnnkern", *map(str, args)],
                          cwd=cwd, env=cli_environment(), capture_output=True, text=True,
                          timeout=timeout)
