r"""Data of a batch job: read, check, split, and the deterministic order of the batches.

The order of the training data is a pure function of the seed and the step,
so a resumed (or re-sharded) run sees exactly the batches an uninterrupted one
would:

.. math:: \pi_e = \mathrm{permutation}_{\,\mathrm{PCG64}(\mathrm{seed},\,e)}(N), \qquad
          \text{batch } b \text{ of epoch } e = \pi_e[bB : (b+1)B]

(the last incomplete batch of an epoch is dropped, so every step has the same
global batch ``B``).  A rank ``r`` of ``R`` takes the slice
``[rB/R, (r+1)B/R)`` of each global batch.  A language model's text is cut
into ``B`` streams (``rnnkern.training.batchify``); rank ``r`` takes streams
``[rB/R, (r+1)B/R)``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .config import ConfigError

__all__ = ["ArrayData", "TextData", "load_data", "read_array", "encode_text", "epoch_order"]


@dataclass
class ArrayData:
    """Samples of an array task, sample axis first (host NumPy arrays)."""

    inputs: np.ndarray            # (N, T, I) float or (N, T) int
    targets: np.ndarray           # (N,) int or (N, T, O) float
    lengths: np.ndarray | None    # (N,) int64

    def __len__(self):
        return self.inputs.shape[0]

    def take(self, index):
        return ArrayData(self.inputs[index], self.targets[index],
                         None if self.lengths is None else self.lengths[index])


@dataclass
class TextData:
    """Character ids of a language model's training and validation text."""

    vocabulary: str
    train_ids: np.ndarray         # (N,) int64
    validation_ids: np.ndarray | None


def read_array(source, what):
    """Read ``source`` (``{"file", "key"}``); errors name ``what`` and the file."""
    path, key = source["file"], source["key"]
    label = f"[data] {what} ({path}" + (f", key {key!r})" if key else ")")
    if not os.path.isfile(path):
        raise ConfigError(f"{label}: no such file")
    try:
        loaded = np.load(path, allow_pickle=False)
        if key is None:
            if not isinstance(loaded, np.ndarray):
                raise ConfigError(f"{label}: expected a .npy array file, got an archive")
            return loaded
        with loaded:
            if key not in loaded.files:
                raise ConfigError(f"{label}: the archive has no array {key!r} "
                                  f"(it has {sorted(loaded.files)})")
            return loaded[key]
    except ConfigError:
        raise
    except Exception as err:            # numpy raises ValueError, OSError, EOFError, zip errors
        raise ConfigError(f"{label}: not a readable NumPy file ({type(err).__name__}: "
                          f"{err})") from None


def load_data(config):
    """Read and check the data a config names; return ``(train, validation)``.

    ``validation`` is None without a validation split or file.  Raises
    :class:`ConfigError` for a missing, unreadable or ill-shaped file.
    """
    data, task, model = config["data"], config["task"], config["model"]
    if task["kind"] == "language_model":
        return _load_text(data)
    train = _check_arrays(data, "", model, task)
    if data["validation_inputs"] is not None:
        validation = _check_arrays(data, "validation_", model, task)
        if validation.inputs.shape[2:] != train.inputs.shape[2:]:
            raise ConfigError(f"[data] validation_inputs: expected feature shape "
                              f"{train.inputs.shape[2:]} (that of inputs), got "
                              f"{validation.inputs.shape[2:]}")
        return train, validation
    if data["validation_split"]:
        n_validation = int(round(len(train) * data["validation_split"]))
        if n_validation < 1 or n_validation >= len(train):
            raise ConfigError(f"[data] validation_split: {data['validation_split']} of "
                              f"{len(train)} samples leaves no validation or no training data")
        # the last samples are held out: stable, and independent of the seed
        return (train.take(slice(0, len(train) - n_validation)),
                train.take(slice(len(train) - n_validation, None)))
    return train, None


def _check_arrays(data, prefix, model, task):
    inputs = read_array(data[prefix + "inputs"], prefix + "inputs")
    targets = read_array(data[prefix + "targets"], prefix + "targets")
    lengths = (read_array(data[prefix + "lengths"], prefix + "lengths")
               if data[prefix + "lengths"] is not None else None)
    name = f"[data] {prefix}inputs"
    if model["input"] == "embedding":
        if inputs.ndim != 2 or inputs.dtype.kind not in "iu":
            raise ConfigError(f"{name}: expected an (N, T) integer array of token ids "
                              f'(input = "embedding"), got shape {inputs.shape} and dtype '
                              f"{inputs.dtype}")
        if inputs.min() < 0:
            raise ConfigError(f"{name}: expected token ids >= 0, got {int(inputs.min())}")
        if model["vocab_size"] is not None and inputs.max() >= model["vocab_size"]:
            raise ConfigError(f"{name}: expected token ids < [model] vocab_size = "
                              f"{model['vocab_size']}, got {int(inputs.max())}")
        inputs = inputs.astype(np.int64)
    else:
        if inputs.ndim != 3 or inputs.dtype.kind != "f":
            raise ConfigError(f"{name}: expected an (N, T, I) float array "
                              f'(input = "dense"), got shape {inputs.shape} and dtype '
                              f"{inputs.dtype}")
        if not np.all(np.isfinite(inputs)):
            raise ConfigError(f"{name}: expected finite values, got NaN or inf")
    if min(inputs.shape) == 0:
        raise ConfigError(f"{name}: expected no empty axis, got shape {inputs.shape}")
    n, steps = inputs.shape[:2]
    tname = f"[data] {prefix}targets"
    if task["kind"] == "classification":
        if targets.shape != (n,) or targets.dtype.kind not in "iu":
            raise ConfigError(f"{tname}: expected an ({n},) integer array of class ids (one "
                              f"per sample), got shape {targets.shape} and dtype {targets.dtype}")
        limit = task["num_classes"]
        if targets.min() < 0 or (limit is not None and targets.max() >= limit):
            raise ConfigError(f"{tname}: expected class ids in [0, "
                              f"{limit if limit is not None else 'num_classes'}), got values "
                              f"from {int(targets.min())} to {int(targets.max())}")
        targets = targets.astype(np.int64)
    else:
        if targets.ndim != 3 or targets.shape[:2] != (n, steps) or targets.dtype.kind != "f":
            raise ConfigError(f"{tname}: expected an ({n}, {steps}, O) float array (one "
                              f"vector per input step), got shape {targets.shape} and dtype "
                              f"{targets.dtype}")
        if not np.all(np.isfinite(targets)):
            raise ConfigError(f"{tname}: expected finite values, got NaN or inf")
    if lengths is not None:
        lname = f"[data] {prefix}lengths"
        if lengths.shape != (n,) or lengths.dtype.kind not in "iu":
            raise ConfigError(f"{lname}: expected an ({n},) integer array, got shape "
                              f"{lengths.shape} and dtype {lengths.dtype}")
        if lengths.min() < 1 or lengths.max() > steps:
            raise ConfigError(f"{lname}: expected lengths in [1, {steps}], got values from "
                              f"{int(lengths.min())} to {int(lengths.max())}")
        lengths = lengths.astype(np.int64)
    return ArrayData(inputs, targets, lengths)


def _read_text(path, key):
    try:
        with open(path, encoding="utf-8") as file:
            return file.read()
    except OSError as err:
        raise ConfigError(f"[data] {key} ({path}): {err.strerror or err}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"[data] {key} ({path}): not UTF-8 text ({err})") from None


def _load_text(data):
    text = _read_text(data["text"], "text")
    validation = None
    if data["validation_text"] is not None:
        validation = _read_text(data["validation_text"], "validation_text")
    elif data["validation_split"]:
        cut = int(len(text) * (1 - data["validation_split"]))
        text, validation = text[:cut], text[cut:]
    vocabulary = "".join(sorted(set(text) | set(validation or "")))
    if len(vocabulary) < 2:
        raise ConfigError(f"[data] text ({data['text']}): expected at least two distinct "
                          f"characters, got {len(vocabulary)}")
    data = TextData(vocabulary, encode_text(text, vocabulary),
                    None if validation is None else encode_text(validation, vocabulary))
    return data, (data if validation is not None else None)


def encode_text(text, vocabulary):
    """Character ids (int64) of ``text``; every character must be in ``vocabulary``."""
    index = {c: k for k, c in enumerate(vocabulary)}
    try:
        return np.fromiter((index[c] for c in text), dtype=np.int64, count=len(text))
    except KeyError as err:
        raise ConfigError(f"text: character {err.args[0]!r} is not in the model's "
                          f"vocabulary") from None


def epoch_order(seed, epoch, n):
    """The permutation of ``n`` samples used in ``epoch`` (a pure function)."""
    return np.random.default_rng([seed, epoch]).permutation(n)
