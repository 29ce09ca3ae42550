"""`python -m rnnkern train` configuration and data checks: clear errors for bad keys and files."""

import subprocess
import sys

import numpy as np
import pytest

from batch_support import (classification_config, cli_environment, language_model_config,
                           run_cli, write_arrays, write_config)
from rnnkern.batch.config import ConfigError, check_config, load_config
from rnnkern.batch.data import load_data


@pytest.fixture
def arrays(tmp_path):
    write_arrays(tmp_path)
    return tmp_path


def test_a_good_config_is_completed_with_defaults_and_absolute_paths(arrays):
    config = load_config(write_config(arrays, classification_config()))
    assert config["model"]["num_layers"] == 1 and config["model"]["bidirectional"] is False
    assert config["task"]["loss"] == "cross_entropy"
    assert config["training"]["device"] == "cpu" and config["training"]["dtype"] == "float32"
    assert config["data"]["inputs"] == {"file": str(arrays / "x.npy"), "key": None}
    assert config["training"]["checkpoint"] == str(arrays / "job.checkpoint.npz")
    train, validation = load_data(config)
    assert (len(train), len(validation)) == (36, 12)


@pytest.mark.parametrize("tables, key, expected", [
    ({"model": {"hidden_sise": 4}}, "[model] hidden_sise", "one of the keys"),
    ({"model": {"layer": "LSTMX"}}, "[model] layer", "one of 'GRU', 'LSTM', 'RNN'"),
    ({"model": {"hidden_size": 0}}, "[model] hidden_size", "an integer >= 1"),
    ({"model": {"hidden_size": True}}, "[model] hidden_size", "an integer >= 1"),
    ({"model": {"nonlinearity": "relu"}}, "[model] nonlinearity", "GRU has no nonlinearity"),
    ({"model": {"layer": "RNN", "nonlinearity": "gelu"}}, "[model] nonlinearity", "'tanh'"),
    ({"model": {"embedding_dim": 4}}, "[model] embedding_dim", 'input = "embedding"'),
    ({"model": {"proj_size": 2}}, "[model] proj_size", "only LSTM"),
    ({"data": {"inputs": "x.csv"}}, "[data] inputs", "a path to a .npy file"),
    ({"data": {"inputs": {"file": "d.npz"}}}, "[data] inputs", 'key = "name"'),
    ({"data": {"validation_split": 1.0}}, "[data] validation_split", "[0.0, 1.0)"),
    ({"data": {"text": "t.txt"}}, "[data] text", "language_model"),
    ({"task": {"kind": "ranking"}}, "[task] kind", "'classification'"),
    ({"task": {"loss": "mse"}}, "[task] loss", "'cross_entropy'"),
    ({"optimizer": {"momentum": 0.9}}, "[optimizer] momentum", 'name = "sgd"'),
    ({"optimizer": {"betas": [0.9]}}, "[optimizer] betas", "two numbers"),
    ({"optimizer": {"clip_value": 1.0}}, "[optimizer] clip_value", "one clipping"),
    ({"training": {"epochs": 2}}, "[training] steps", "exactly one of steps and epochs"),
    ({"training": {"bptt": 4}}, "[training] bptt", "whole sequence"),
    ({"training": {"device": "tpu"}}, "[training] device", "'cpu', 'cuda'"),
    ({"training": {"dtype": "float16"}}, "[training] dtype", "'float32', 'float64'"),
    ({"training": {"seed": -1}}, "[training] seed", "an integer >= 0"),
    ({"logging": {"level": 1}}, "[logging]", "only the tables"),
])
def test_bad_keys_are_named_with_the_file_and_the_expected_value(tmp_path, tables, key, expected):
    config = classification_config(**tables)
    path = write_config(tmp_path, config)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert message.startswith(str(path)) and key in message and expected in message, message


def test_missing_required_key_and_bad_toml(tmp_path):
    config = classification_config()
    del config["optimizer"]["lr"]
    with pytest.raises(ConfigError, match=r"\[optimizer\] lr: expected a value \(this key is "
                                          r"required\)"):
        load_config(write_config(tmp_path, config))
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\ninput = 'dense'\n")
    with pytest.raises(ConfigError, match="bad.toml: not valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.toml")


def test_the_language_model_needs_text_and_bptt(tmp_path):
    with pytest.raises(ConfigError, match=r"\[training\] bptt: expected an integer >= 1"):
        check_config(language_model_config(training={"bptt": 0}), "lm.toml")
    with pytest.raises(ConfigError, match=r"\[model\] input: expected \"embedding\""):
        check_config(language_model_config(model={"input": "dense"}),
                     "lm.toml")


def _bad_data(tmp_path, name, array):
    np.save(tmp_path / name, array)


@pytest.mark.parametrize("name, make, key, expected", [
    ("x.npy", lambda: np.zeros((48, 9), np.float32), "[data] inputs", "(N, T, I) float"),
    ("x.npy", lambda: np.full((48, 9, 3), np.nan, np.float32), "[data] inputs", "finite"),
    ("labels.npy", lambda: np.zeros(47, np.int64), "[data] targets", "(48,) integer"),
    ("labels.npy", lambda: np.full(48, -1), "[data] targets", "class ids in [0"),
    ("labels.npy", lambda: np.zeros(48, np.float32), "[data] targets", "integer array"),
])
def test_bad_data_files_get_clear_errors(arrays, name, make, key, expected):
    np.save(arrays / name, make())
    with pytest.raises(ConfigError) as error:
        load_data(load_config(write_config(arrays, classification_config())))
    assert key in str(error.value) and expected in str(error.value), str(error.value)


def test_unreadable_missing_and_archive_files(arrays):
    (arrays / "x.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(ConfigError, match=r"\[data\] inputs .*not a readable NumPy file"):
        load_data(load_config(write_config(arrays, classification_config())))
    config = classification_config(data={"inputs": "absent.npy"})
    with pytest.raises(ConfigError, match=r"\[data\] inputs .*absent.npy\): no such file"):
        load_data(load_config(write_config(arrays, config)))
    np.savez(arrays / "d.npz", x=np.zeros((48, 9, 3), np.float32))
    config = classification_config(data={"inputs": {"file": "d.npz", "key": "inputs"}})
    with pytest.raises(ConfigError, match=r"has no array 'inputs' \(it has \['x'\]\)"):
        load_data(load_config(write_config(arrays, config)))
    config = classification_config(data={"inputs": {"file": "d.npz", "key": "x"}})
    assert load_data(load_config(write_config(arrays, config)))[0].inputs.shape == (36, 9, 3)
    config = classification_config(data={"lengths": "x.npy"})
    np.save(arrays / "x.npy", np.zeros((48, 9, 3), np.float32))
    with pytest.raises(ConfigError, match=r"\[data\] lengths: expected an \(48,\) integer"):
        load_data(load_config(write_config(arrays, config)))


def test_the_cli_reports_config_errors_without_a_traceback_or_checkpoint(arrays):
    path = write_config(arrays, classification_config(model={"hidden_size": "big"}))
    result = run_cli("train", path, cwd=arrays)
    assert result.returncode == 2
    assert "rnnkern train: error:" in result.stderr and "[model] hidden_size" in result.stderr
    assert "Traceback" not in result.stderr
    assert not list(arrays.glob("job.checkpoint*"))


def test_importing_rnnkern_and_the_batch_package_imports_neither_mpi4py_nor_dask():
    code = ("import sys, rnnkern, rnnkern.batch, rnnkern.batch.config, rnnkern.batch.data, "
            "rnnkern.batch.model, rnnkern.batch.train, rnnkern.batch.predict, "
            "rnnkern.batch.distributed, rnnkern.__main__; "
            "bad = sorted({'mpi4py', 'dask', 'distributed', 'torch', 'cupy'} & "
            "{m.split('.')[0] for m in sys.modules}); print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=cli_environment())
    assert result.returncode == 0, result.stdout + result.stderr
