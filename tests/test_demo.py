"""`python -m rnnkern demo` end to end on tiny settings (NumPy path)."""

import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from rnnkern import demos
from rnnkern.demos import char_lm
from rnnkern.devices import cuda_device_count
from rnnkern.training import read_checkpoint

TINY = ["--steps", "12", "--hidden", "24", "--embedding", "8", "--batch-size", "4",
        "--seq-len", "16", "--sample-length", "30", "--held-out-chars", "400"]


@pytest.fixture
def corpus(tmp_path):
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "sum", "of", "the", "rnn"]
    text = " ".join(rng.choice(words, 900)) + "\n"
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    return path


def test_char_demo_trains_saves_and_resumes(corpus, tmp_path, capsys):
    checkpoint = tmp_path / "lm.npz"
    assert demos.main(["--text", str(corpus), "--checkpoint", str(checkpoint), *TINY]) == 0
    out = capsys.readouterr().out
    for expected in ("Total params", "final sample:", "held-out loss", "unigram baseline",
                     "perplexity", f"checkpoint saved to {checkpoint}"):
        assert expected in out
    saved = read_checkpoint(checkpoint)
    assert saved.progress["steps"] == 12 and saved.config["task"] == "char-lm"

    assert demos.main(["--text", str(corpus), "--resume", str(checkpoint), "--steps", "3",
                      "--sample-length", "10", "--held-out-chars", "400"]) == 0
    assert "resumed from" in capsys.readouterr().out
    assert read_checkpoint(checkpoint).progress["steps"] == 15      # saved back to --resume


def test_char_demo_default_corpus_is_the_standard_library(tmp_path, capsys):
    train, held_out, name = char_lm._stdlib_corpus()
    assert len(train) > 1_000_000 and len(held_out) > 100_000 and "standard library" in name
    assert demos.main(["--checkpoint", str(tmp_path / "lm.npz"), "--steps", "2", "--hidden", "16",
                      "--embedding", "4", "--sample-length", "5", "--held-out-chars", "300"]) == 0
    out = capsys.readouterr().out
    assert "standard library" in out and "held-out loss" in out


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_resume_from_a_damaged_checkpoint_is_a_clear_error(corpus, tmp_path, capsys, damage):
    checkpoint = tmp_path / "lm.npz"
    assert demos.main(["--text", str(corpus), "--checkpoint", str(checkpoint), *TINY]) == 0
    data = checkpoint.read_bytes()
    checkpoint.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"junk" * 100)
    capsys.readouterr()
    assert demos.main(["--text", str(corpus), "--resume", str(checkpoint), *TINY]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: checkpoint") and "corrupt or truncated" in err
    assert "Traceback" not in err


def test_resume_errors_name_the_problem(corpus, tmp_path, capsys):
    assert demos.main(["--text", str(corpus), "--resume", str(tmp_path / "absent.npz")]) == 2
    assert "no such file" in capsys.readouterr().err
    sine_checkpoint = tmp_path / "sine.npz"
    assert demos.main(["sine", "--steps", "2", "--checkpoint", str(sine_checkpoint)]) == 0
    capsys.readouterr()
    assert demos.main(["--text", str(corpus), "--resume", str(sine_checkpoint)]) == 2
    assert "a checkpoint of `demo sine`" in capsys.readouterr().err
    assert demos.main(["--text", str(tmp_path / "absent.txt")]) == 2
    assert "--text" in capsys.readouterr().err
    assert demos.main(["--text", str(corpus), "--checkpoint", str(tmp_path / "no" / "lm.npz")]) == 2
    assert "does not exist or is not writable" in capsys.readouterr().err


def test_ctrl_c_saves_a_checkpoint_before_exiting(corpus, tmp_path, capsys, monkeypatch):
    real_train_step, calls = char_lm.train_step, []

    def interrupted_on_third_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_train_step(*args, **kwargs)
    monkeypatch.setattr(char_lm, "train_step", interrupted_on_third_step)
    checkpoint = tmp_path / "lm.npz"
    assert demos.main(["--text", str(corpus), "--checkpoint", str(checkpoint), *TINY]) == 130
    assert "interrupted after 2 steps" in capsys.readouterr().out
    assert read_checkpoint(checkpoint).progress["steps"] == 2


def test_sine_demo_beats_the_naive_forecast(capsys):
    assert demos.main(["sine", "--steps", "300"]) == 0
    out = capsys.readouterr().out
    assert "(None, 10, 50)" in out and "(None, 1)" in out
    test_mse = float(out.split("test MSE ")[1].split()[0])
    naive_mse = float(out.split("last value' MSE ")[1].split()[0])
    assert test_mse < naive_mse, out


def test_demo_never_imports_torch():
    code = ("import sys, rnnkern.demos, rnnkern.demos.char_lm, rnnkern.demos.sine, "
            "rnnkern.demos.common, rnnkern.training; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_sigint_saves_a_checkpoint(corpus, tmp_path):
    """A real Ctrl-C (SIGINT) in a real process: exit status 130 and a readable checkpoint."""
    checkpoint = tmp_path / "lm.npz"
    command = [sys.executable, "-u", "-m", "rnnkern", "demo", "--text", str(corpus),
               "--checkpoint", str(checkpoint), *TINY[2:], "--steps", "1000000"]
    # The child starts with SIGINT's default action even where this test process ignores
    # it (a shell without job control starts background jobs with SIGINT ignored, and
    # children inherit that: the demo then never stops).
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    output = []
    for line in process.stdout:                   # wait until training has started
        output.append(line)
        if "device:" in line:
            break
    time.sleep(2.0)
    process.send_signal(signal.SIGINT)
    output.append(process.communicate(timeout=120)[0])
    assert process.returncode == 130, "".join(output)
    assert "checkpoint saved to" in output[-1]
    assert read_checkpoint(checkpoint).config["task"] == "char-lm"




@pytest.mark.gpu
@pytest.mark.skipif(cuda_device_count() == 0, reason="needs CuPy and a CUDA GPU")
def test_demos_run_on_cuda(corpus, tmp_path, capsys):
    checkpoint = tmp_path / "lm.npz"
    assert demos.main(["--device", "cuda", "--text", str(corpus), "--checkpoint", str(checkpoint),
                      *TINY]) == 0
    assert "CuPy arrays, CUDA kernels" in capsys.readouterr().out
    assert demos.main(["--device", "cuda", "--text", str(corpus), "--resume", str(checkpoint),
                      "--steps", "2", "--sample-length", "5", "--held-out-chars", "400"]) == 0
    assert demos.main(["sine", "--device", "cuda", "--steps", "50"]) == 0


def test_cuda_without_a_gpu_is_a_clear_error(corpus, capsys):
    if cuda_device_count():
        pytest.skip("a GPU is present")
    assert demos.main(["--device", "cuda", "--text", str(corpus), *TINY]) == 2
    assert "--device cuda" in capsys.readouterr().err
