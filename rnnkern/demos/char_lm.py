r"""``python -m rnnkern demo``: train a character-level LSTM language model.

::

    python -m rnnkern demo [--text FILE] [--device cpu|cuda] [--steps N] [--seed S]
                           [--checkpoint PATH] [--resume PATH] [...]

reads a corpus (by default the Python standard library's own top-level
``.py`` files, read at run time from ``sysconfig.get_paths()["stdlib"]``;
every tenth file is held out), trains ``Embedding -> LSTM -> Dense`` with
Adam and truncated BPTT (the state carried from chunk to chunk), shows a
progress bar with the loss and tokens per second, prints generated text as it
goes, and ends with the held-out loss and perplexity beside the unigram
baseline's:

.. math:: L = -\frac{1}{N} \sum_n \log p(c_{n+1} \mid c_{\le n}), \qquad
          \mathrm{perplexity} = e^{L}

where the unigram baseline predicts every character with its (add-one
smoothed) frequency in the training text.  A checkpoint is saved at the end
and on Ctrl-C; ``--resume`` continues from one.
"""

from __future__ import annotations

import argparse
import math
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .. import recurrent
from ..devices import DEVICES
from ..training import (Adam, Dense, Embedding, Sequential, batchify, bptt_chunks,
                        chunks_per_epoch, evaluate_loss, generate, load_checkpoint,
                        read_checkpoint, save_checkpoint, train_step)
from .common import (UsageError, build_on_device, check_writable_directory,
                     namespace_and_device, nonnegative_float, positive_int)

__all__ = ["TASK", "build_parser", "run"]

TASK = "char-lm"
HELD_OUT_EVERY = 10            # every tenth stdlib file is held out
HELD_OUT_FRACTION = 0.1        # of a --text file: its last 10 %
HELD_OUT_CHARS = 100_000       # held-out characters scored at the end
DEFAULT_CHECKPOINT = "rnnkern-demo.npz"


def build_parser():
    """The command line of ``demo``."""
    parser = argparse.ArgumentParser(
        prog="python -m rnnkern demo",
        description="Train a character-level LSTM language model and generate text "
                    "(`python -m rnnkern demo sine` for the regression demo).")
    parser.add_argument("--text", metavar="FILE",
                        help="UTF-8 text file to train on, its last 10%% held out (default: "
                             "the Python standard library's own .py files, every tenth held out)")
    parser.add_argument("--device", choices=DEVICES, default="cpu",
                        help="cpu: NumPy arrays, Numba kernels; cuda: CuPy arrays, CUDA kernels")
    parser.add_argument("--steps", type=positive_int, default=1000,
                        help="training steps (chunks of batch-size x seq-len characters) "
                             "in this run (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="initialisation and sampling seed")
    parser.add_argument("--checkpoint", metavar="PATH",
                        help=f"where to save the model at the end and on Ctrl-C (default: the "
                             f"--resume file, else {DEFAULT_CHECKPOINT})")
    parser.add_argument("--resume", metavar="PATH",
                        help="continue from a checkpoint: its model, vocabulary, optimizer state "
                             "and data position (the size options below are then ignored)")
    size = parser.add_argument_group("model and training sizes")
    size.add_argument("--hidden", type=positive_int, default=256, help="LSTM units (256)")
    size.add_argument("--layers", type=positive_int, default=1, help="LSTM layers (1)")
    size.add_argument("--embedding", type=positive_int, default=32,
                      help="character vector size (32)")
    size.add_argument("--batch-size", type=positive_int, default=32,
                      help="parallel text streams (32)")
    size.add_argument("--seq-len", type=positive_int, default=64,
                      help="truncated-BPTT chunk length (64)")
    size.add_argument("--lr", type=nonnegative_float, default=3e-3,
                      help="Adam learning rate (3e-3)")
    size.add_argument("--clip", type=nonnegative_float, default=1.0,
                      help="global gradient-norm clip (1.0)")
    output = parser.add_argument_group("output")
    output.add_argument("--sample-every", type=positive_int, metavar="N",
                        help="print generated text every N steps (default: 4 times per run)")
    output.add_argument("--sample-length", type=positive_int, default=240,
                        help="characters per sample (240)")
    output.add_argument("--temperature", type=nonnegative_float, default=0.7,
                        help="sampling temperature (0.7; 0 = greedy)")
    output.add_argument("--held-out-chars", type=positive_int, default=HELD_OUT_CHARS,
                        help=f"held-out characters scored at the end ({HELD_OUT_CHARS:,})")
    return parser


def run(args) -> int:
    """Train (or resume) the character model; see the module docstring."""
    started = time.perf_counter()
    train_text, held_out_text, corpus_name = (_text_file_corpus(args.text) if args.text
                                              else _stdlib_corpus())
    checkpoint_path = args.checkpoint or args.resume or DEFAULT_CHECKPOINT
    check_writable_directory(checkpoint_path)
    if args.resume:
        saved = read_checkpoint(args.resume)
        config = saved.config
        if config.get("task") != TASK:
            raise UsageError(f"--resume {args.resume}: a checkpoint of "
                             f"`demo {config.get('task', '?')}`, not of the character model")
        progress = saved.progress
    else:
        config = {"task": TASK, "vocabulary": "".join(sorted(set(train_text + held_out_text))),
                  "embedding": args.embedding, "hidden": args.hidden, "layers": args.layers,
                  "batch_size": args.batch_size, "seq_len": args.seq_len, "lr": args.lr,
                  "clip": args.clip, "seed": args.seed, "corpus": corpus_name}
        progress = {"steps": 0, "tokens": 0, "chunk": 0}
    vocabulary = config["vocabulary"]
    train_ids = _encode(train_text, vocabulary, "training text")
    held_out_ids = _encode(held_out_text, vocabulary, "held-out text")[:args.held_out_chars]
    if len(held_out_ids) < 4:
        raise UsageError(f"--held-out-chars: expected at least 4 held-out characters, "
                         f"got {len(held_out_ids)}")

    model = _char_model(config, args.device, args.seed)
    optimizer = Adam(lr=config["lr"])
    if args.resume:
        load_checkpoint(args.resume, model, optimizer)
        print(f"resumed from {args.resume}: {progress['steps']:,} steps and "
              f"{progress['tokens']:,} characters trained so far")

    print(f"corpus: {corpus_name}: {len(train_ids):,} training and {len(held_out_ids):,} "
          f"held-out characters, vocabulary of {len(vocabulary)}")
    model.summary((config["seq_len"], config["batch_size"]), print_fn=print)   # one chunk
    print(f"device: {args.device} ({_backend_description(args.device)}); "
          f"{config['batch_size']} streams x {config['seq_len']} steps per chunk, "
          f"Adam lr {config['lr']}, gradient norm clipped to {config['clip']}")

    xp, device = namespace_and_device(model)
    streams = batchify(xp.asarray(train_ids, device=device), config["batch_size"])
    rng = np.random.default_rng(args.seed)
    prompt = _prompt(vocabulary, corpus_name)
    sample_every = args.sample_every or max(args.steps // 4, 1)

    def save():
        save_checkpoint(checkpoint_path, model, optimizer=optimizer, config=config,
                        progress=progress)

    try:
        _warm_up(model, streams[:2, ...])
        _train_chars(model, optimizer, streams, config, progress, args.steps, sample_every,
                     lambda: _sample_text(model, vocabulary, prompt, args, rng))
        print("\nfinal sample:")
        print(_sample_text(model, vocabulary, prompt, args, rng))
        held_out_streams = batchify(xp.asarray(held_out_ids, device=device),
                                    min(config["batch_size"], len(held_out_ids) // 2))
        held_out_loss = evaluate_loss(model, held_out_streams, config["seq_len"])
        held_out_targets = batchify(held_out_ids, held_out_streams.shape[1])[1:, ...]
        baseline = _unigram_loss(train_ids, held_out_targets, len(vocabulary))
    except KeyboardInterrupt:
        save()
        print(f"\ninterrupted after {progress['steps']:,} steps; checkpoint saved to "
              f"{checkpoint_path} (continue with --resume {checkpoint_path})")
        return 130
    save()
    print(f"\nheld-out loss    {held_out_loss:.3f} nats/char   perplexity {math.exp(held_out_loss):6.2f}")
    print(f"unigram baseline {baseline:.3f} nats/char   perplexity {math.exp(baseline):6.2f}"
          f"   (character frequencies of the training text)")
    print(f"trained {progress['steps']:,} steps, {progress['tokens']:,} characters in all; "
          f"checkpoint saved to {checkpoint_path}; wall time {time.perf_counter() - started:.0f} s")
    return 0


def _train_chars(model, optimizer, streams, config, progress, steps, sample_every, sample):
    """The truncated-BPTT loop: ``steps`` chunks, the state carried between them."""
    seq_len, clip = config["seq_len"], config["clip"]
    per_epoch = chunks_per_epoch(streams, seq_len)
    chunks = bptt_chunks(streams, seq_len, start=progress["chunk"] % per_epoch)
    states, smoothed, tokens, training_seconds = None, None, 0, 0.0
    with tqdm(total=steps, unit="step", dynamic_ncols=True, mininterval=0.5) as bar:
        for step in range(1, steps + 1):
            inputs_targets = next(chunks, None)
            if inputs_targets is None:                    # end of the text: next epoch
                chunks, states = bptt_chunks(streams, seq_len), None
                inputs_targets = next(chunks)
            inputs, targets = inputs_targets
            step_started = time.perf_counter()
            loss, states, _ = train_step(model, optimizer, inputs, targets, states,
                                         max_grad_norm=clip)
            loss = float(loss)                     # waits for the device: the step is done
            training_seconds += time.perf_counter() - step_started
            smoothed = loss if smoothed is None else 0.95 * smoothed + 0.05 * loss
            chunk_tokens = inputs.shape[0] * inputs.shape[1]
            tokens += chunk_tokens
            progress["steps"] += 1
            progress["tokens"] += chunk_tokens
            progress["chunk"] = (progress["chunk"] + 1) % per_epoch
            bar.update(1)
            bar.set_postfix(loss=f"{smoothed:.3f}",
                            tok_s=f"{tokens / training_seconds:,.0f}",
                            refresh=False)
            if step % sample_every == 0 and step != steps:
                bar.write(f"\n--- step {progress['steps']:,}, loss {smoothed:.3f} ---")
                bar.write(sample())


def _char_model(config, device, seed):
    """``Embedding -> LSTM -> Dense`` on ``device``."""
    vocabulary_size = len(config["vocabulary"])

    def build():
        return Sequential(
            Embedding(vocabulary_size, config["embedding"], device=device, seed=seed),
            recurrent.LSTM(config["embedding"], config["hidden"], config["layers"],
                           device=device, seed=seed + 1),
            Dense(config["hidden"], vocabulary_size, device=device, seed=seed + 2))

    return build_on_device(build, device)


def _sample_text(model, vocabulary, prompt, args, rng):
    prompt_ids = [vocabulary.index(c) for c in prompt]
    ids = generate(model, prompt_ids, args.sample_length, temperature=args.temperature, rng=rng)
    return prompt + "".join(vocabulary[k] for k in ids)


def _prompt(vocabulary, corpus_name):
    """``"def "`` for Python sources, else the most common character."""
    if corpus_name.startswith("Python") and all(c in vocabulary for c in "\ndef "):
        return "\ndef "
    return vocabulary[0] if "\n" not in vocabulary else "\n"


def _stdlib_corpus():
    """The standard library's top-level modules, sorted; every tenth held out."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(stdlib.glob("*.py"))
    if len(files) < 2 * HELD_OUT_EVERY:
        raise UsageError(f"the standard library sources were not found under {stdlib}; "
                         f"pass --text FILE")
    texts = [f.read_text(encoding="utf-8", errors="replace") for f in files]
    held_out = [t for k, t in enumerate(texts) if k % HELD_OUT_EVERY == HELD_OUT_EVERY - 1]
    train = [t for k, t in enumerate(texts) if k % HELD_OUT_EVERY != HELD_OUT_EVERY - 1]
    name = (f"Python {sys.version_info.major}.{sys.version_info.minor} standard library, "
            f"{len(files)} modules in {stdlib} ({len(held_out)} held out)")
    return "\n".join(train), "\n".join(held_out), name


def _text_file_corpus(path):
    """A user's text file; its last 10 % is held out."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise UsageError(f"--text {path}: {err.strerror or err}") from None
    cut = int(len(text) * (1 - HELD_OUT_FRACTION))
    if cut < 200 or len(text) - cut < 100:
        raise UsageError(f"--text {path}: expected at least 1,000 characters, got {len(text):,}")
    return text[:cut], text[cut:], f"{path}"


def _encode(text, vocabulary, what):
    """Character ids (int64); characters outside the vocabulary are dropped, with a note."""
    code_points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    vocabulary_points = np.array([ord(c) for c in vocabulary], dtype=np.uint32)
    order = np.argsort(vocabulary_points)
    position = np.minimum(np.searchsorted(vocabulary_points[order], code_points),
                          len(vocabulary) - 1)
    known = vocabulary_points[order][position] == code_points
    ids = order[position[known]].astype(np.int64)
    dropped = len(text) - len(ids)
    if dropped:
        print(f"note: {dropped:,} characters of the {what} are not in the model's vocabulary "
              f"and were dropped")
    return ids


def _unigram_loss(train_ids, targets, vocabulary_size):
    r"""Cross-entropy of the add-one-smoothed unigram model on ``targets``.

    .. math:: q(c) = \frac{n_c + 1}{N + V}, \qquad L = -\frac{1}{|T|} \sum_{t \in T} \log q(t)

    with :math:`n_c` the count of ``c`` in the training text; ``targets`` are
    the very characters the model is scored on.
    """
    counts = np.bincount(train_ids, minlength=vocabulary_size) + 1.0
    log_q = np.log(counts / counts.sum())
    return float(-np.mean(log_q[targets]))


def _warm_up(model, inputs):
    """One forward and backward pass, so that JIT compilation (Numba, NVRTC) and
    library loading happen before the clock and the progress bar start."""
    outputs, _, tape = model.forward(inputs)
    model.backward(outputs * 0.0, tape)


def _backend_description(device):
    return "NumPy arrays, Numba kernels" if device == "cpu" else "CuPy arrays, CUDA kernels"
