"""`python -m rnnkern predict`: chunked inference equals one pass; --dask equals it too."""

import numpy as np
import pytest

from batch_support import (classification_config, language_model_config, run_cli,
                           write_arrays, write_config, write_text)
from rnnkern.batch import predict, train
from rnnkern.batch.predict import load_model


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Checkpoints of a classifier (with lengths), a regression and a language model."""
    directory = tmp_path_factory.mktemp("predict")
    write_arrays(directory)
    write_text(directory)
    jobs = {
        "classification": classification_config(
            model={"layer": "LSTM", "bidirectional": True}, data={"lengths": "lengths.npy"}),
        "regression": classification_config(
            data={"targets": "series.npy"}, task={"kind": "regression"},
            training={"dtype": "float64"}),
        "language_model": language_model_config(training={"steps": 6}),
    }
    for name, config in jobs.items():
        assert train.main([str(write_config(directory, config, f"{name}.toml"))]) == 0
    return directory


def _reference(directory, job, x, lengths=None):
    model, _ = load_model(directory / f"{job}.checkpoint.npz")
    return predict.predict_array(model, x, lengths)


@pytest.mark.parametrize("chunk_size", [1, 7, 48, 1000])
def test_chunks_equal_one_whole_batch(trained, chunk_size, tmp_path):
    x, lengths = np.load(trained / "x.npy"), np.load(trained / "lengths.npy")
    out = tmp_path / "scores.npy"
    assert predict.main([str(trained / "classification.checkpoint.npz"), str(trained / "x.npy"),
                         "--out", str(out), "--lengths", str(trained / "lengths.npy"),
                         "--chunk-size", str(chunk_size)]) == 0
    expected = _reference(trained, "classification", x, lengths)
    assert expected.shape == (48, 2)
    np.testing.assert_allclose(np.load(out), expected, rtol=1e-5, atol=1e-6)
    assert list(tmp_path.iterdir()) == [out]                     # no temporary left


def test_predict_cli_regression_and_language_model(trained, tmp_path):
    result = run_cli("predict", trained / "regression.checkpoint.npz", trained / "x.npy",
                     "--out", tmp_path / "series.npy", "--chunk-size", 5, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "predicted 48 samples" in result.stdout
    out = np.load(tmp_path / "series.npy")
    assert out.shape == (48, 9, 1) and out.dtype == np.float64
    np.testing.assert_allclose(out, _reference(trained, "regression", np.load(trained / "x.npy")),
                               rtol=1e-12)
    ids = np.arange(30).reshape(3, 10) % 7
    np.save(tmp_path / "ids.npy", ids)
    assert predict.main([str(trained / "language_model.checkpoint.npz"),
                         str(tmp_path / "ids.npy"), "--out", str(tmp_path / "logits.npy")]) == 0
    logits = np.load(tmp_path / "logits.npy")
    assert logits.shape[:2] == (3, 10)
    np.testing.assert_allclose(logits, _reference(trained, "language_model", ids), rtol=1e-5,
                               atol=1e-6)


def test_bad_inputs_get_clear_errors(trained, tmp_path, capsys):
    checkpoint = str(trained / "classification.checkpoint.npz")
    np.save(tmp_path / "wrong.npy", np.zeros((4, 9, 5), np.float32))
    assert predict.main([checkpoint, str(tmp_path / "wrong.npy"), "--out",
                         str(tmp_path / "o.npy")]) == 2
    assert "expected an (N, T, 3) float array, got shape (4, 9, 5)" in capsys.readouterr().err
    assert predict.main([checkpoint, str(tmp_path / "absent.npy"), "--out",
                         str(tmp_path / "o.npy")]) == 2
    assert "no such file" in capsys.readouterr().err
    np.save(tmp_path / "ids.npy", np.full((2, 4), 10_000))
    assert predict.main([str(trained / "language_model.checkpoint.npz"),
                         str(tmp_path / "ids.npy"), "--out", str(tmp_path / "o.npy")]) == 2
    assert "expected token ids in [0," in capsys.readouterr().err
    (tmp_path / "bad.npz").write_bytes(b"not a checkpoint")
    assert predict.main([str(tmp_path / "bad.npz"), str(trained / "x.npy"), "--out",
                         str(tmp_path / "o.npy")]) == 2
    assert "checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "o.npy").exists()
    assert not list(tmp_path.glob("*.tmp"))


def test_dask_on_a_local_cluster_equals_the_single_process_path(trained, tmp_path):
    pytest.importorskip("dask.array")
    pytest.importorskip("distributed")
    x, lengths = np.load(trained / "x.npy"), np.load(trained / "lengths.npy")
    for job, extra in (("classification", ["--lengths", str(trained / "lengths.npy")]),
                       ("regression", [])):
        out = tmp_path / f"{job}.npy"
        assert predict.main([str(trained / f"{job}.checkpoint.npz"), str(trained / "x.npy"),
                             "--out", str(out), "--dask", "--workers", "2",
                             "--chunk-size", "10", *extra]) == 0
        expected = _reference(trained, job, x, lengths if extra else None)
        np.testing.assert_allclose(np.load(out), expected, rtol=1e-5, atol=1e-6)


def test_dask_with_a_scheduler_address_reads_blocks_on_the_workers(trained, tmp_path):
    pytest.importorskip("dask.array")
    distributed = pytest.importorskip("distributed")
    x = np.load(trained / "x.npy")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=None) as cluster:
        out = tmp_path / "scores.npy"
        assert predict.main([str(trained / "regression.checkpoint.npz"), str(trained / "x.npy"),
                             "--out", str(out), "--dask", "--scheduler", cluster.scheduler_address,
                             "--chunk-size", "16"]) == 0
    np.testing.assert_allclose(np.load(out), _reference(trained, "regression", x), rtol=1e-12)
