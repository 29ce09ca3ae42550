"""Save and restore a model (and optimizer) as one ``.npz`` file.

Layout of the file (a NumPy ``.npz``, read with ``allow_pickle=False``)::

    model/<name>               one array per entry of model.state_dict()
    optimizer/<slot>/<name>    the optimizer's slot arrays (Adam: exp_avg, exp_avg_sq)
    __meta__                   uint8 array: UTF-8 JSON with the format tag, the
                               parameter shapes, the optimizer's type,
                               hyperparameters and step count, and the caller's
                               ``config`` and ``progress`` dicts

A checkpoint is written to a temporary file in the target's directory, flushed
to disk and moved over the target with ``os.replace``, so a crash mid-write
leaves the previous checkpoint intact.  Reading checks the whole file before
the model is touched: a corrupt, truncated or foreign file, or one saved from
a model with other parameters, raises ``CheckpointError`` and leaves the model
and optimizer as they were.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
import zlib
from dataclasses import dataclass

import numpy as np

from .beyond_array_api import to_numpy

__all__ = ["CheckpointError", "Checkpoint", "save_checkpoint", "read_checkpoint",
           "unwritable_reason",
           "load_checkpoint"]

FORMAT = "rnnkern-checkpoint"
FORMAT_VERSION = 1
_META = "__meta__"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read or does not fit the model."""


@dataclass
class Checkpoint:
    """The contents of a checkpoint file (arrays as NumPy arrays on the host)."""

    config: dict
    progress: dict
    model_state: dict
    optimizer_state: dict | None


def unwritable_reason(path):
    """Why a checkpoint cannot be written to ``path`` (None if it can): ask before training."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory) or not os.access(directory, os.W_OK):
        return f"the directory {directory} does not exist or is not writable"
    return None


def save_checkpoint(path, model, *, optimizer=None, config=None, progress=None):
    """Write ``model`` (and ``optimizer``) to ``path`` atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Target file; written exactly there (no extension is added).
    model : object with ``state_dict()``
        A ``Sequential``, a recurrent layer, ``Dense``, ...
    optimizer : SGD or Adam, optional
    config : dict, optional
        JSON-serialisable description needed to rebuild the model.
    progress : dict, optional
        JSON-serialisable training progress (steps done, ...).
    """
    path = os.fspath(path)
    arrays = {f"model/{name}": to_numpy(a) for name, a in model.state_dict().items()}
    meta = {"format": FORMAT, "version": FORMAT_VERSION,
            "parameters": {name[len("model/"):]: list(a.shape) for name, a in arrays.items()},
            "config": config or {}, "progress": progress or {}, "optimizer": None}
    if optimizer is not None:
        state = optimizer.state_dict()
        meta["optimizer"] = {"type": state["type"], "hyperparameters": state["hyperparameters"],
                             "steps": state["steps"], "slots": list(state["slots"])}
        for slot, buffers in state["slots"].items():
            arrays.update({f"optimizer/{slot}/{name}": a for name, a in buffers.items()})
    try:
        meta_bytes = json.dumps(meta).encode("utf-8")
    except TypeError as err:
        raise TypeError(f"config, progress: expected JSON-serialisable dicts ({err})") from None
    arrays[_META] = np.frombuffer(meta_bytes, dtype=np.uint8)

    directory = os.path.dirname(os.path.abspath(path))
    descriptor, temporary = tempfile.mkstemp(prefix=os.path.basename(path) + ".",
                                             suffix=".tmp", dir=directory)
    try:
        with os.fdopen(descriptor, "wb") as file:
            np.savez(file, **arrays)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def read_checkpoint(path):
    """Read and check a checkpoint file; return a :class:`Checkpoint`.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    CheckpointError
        If the file is not a complete rnnkern checkpoint.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint: no such file {path!r}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            contents = {name: archive[name] for name in archive.files}
        meta = json.loads(bytes(contents.pop(_META)).decode("utf-8"))
    except KeyError:
        raise CheckpointError(f"checkpoint {path!r}: not an rnnkern checkpoint "
                              f"(no {_META} entry)") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise CheckpointError(f"checkpoint {path!r}: not a readable rnnkern checkpoint "
                              f"(corrupt or truncated?): {err}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path!r}: not an rnnkern checkpoint "
                              f"(format tag {meta.get('format') if isinstance(meta, dict) else meta!r})")
    if meta.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path!r}: format version {meta.get('version')!r}, "
                              f"this rnnkern reads version {FORMAT_VERSION}")

    try:
        return _unpack(path, meta, contents)
    except (KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(f"checkpoint {path!r}: damaged metadata ({type(err).__name__}: "
                              f"{err})") from None


def _unpack(path, meta, contents):
    """Sort the arrays of a checked file into a :class:`Checkpoint`."""
    model_state = {name[len("model/"):]: a for name, a in contents.items()
                   if name.startswith("model/")}
    expected = {name: tuple(shape) for name, shape in meta["parameters"].items()}
    found = {name: tuple(a.shape) for name, a in model_state.items()}
    if expected != found:
        raise CheckpointError(f"checkpoint {path!r}: damaged; its parameter list {expected} "
                              f"does not match the arrays stored {found}")
    optimizer_state = None
    if meta["optimizer"] is not None:
        info = meta["optimizer"]
        slots = {slot: {} for slot in info["slots"]}
        for name, a in contents.items():
            if name.startswith("optimizer/"):
                slot, _, parameter = name[len("optimizer/"):].partition("/")
                if slot not in slots:
                    raise CheckpointError(f"checkpoint {path!r}: damaged; unknown optimizer "
                                          f"slot {slot!r}")
                slots[slot][parameter] = a
        optimizer_state = {"type": info["type"], "hyperparameters": info["hyperparameters"],
                           "steps": info["steps"], "slots": slots}
    return Checkpoint(meta["config"], meta["progress"], model_state, optimizer_state)


def load_checkpoint(path, model, optimizer=None):
    """Load the checkpoint at ``path`` into ``model`` (and ``optimizer``).

    Everything is checked before anything changes: on any error the model and
    the optimizer are left as they were.

    Returns
    -------
    Checkpoint
        The file's contents (for ``config`` and ``progress``).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    CheckpointError
        If the file is unreadable, or was saved from a model with other
        parameters, or without the optimizer state asked for.
    """
    checkpoint = read_checkpoint(path)
    if optimizer is not None:
        _check_optimizer_state(os.fspath(path), checkpoint)
    previous_optimizer_state = optimizer.state_dict() if optimizer is not None else None
    try:
        if optimizer is not None:
            optimizer.load_state_dict(checkpoint.optimizer_state)
        model.load_state_dict(checkpoint.model_state)
    except (ValueError, TypeError) as err:
        if optimizer is not None:
            optimizer.load_state_dict(previous_optimizer_state)
        raise CheckpointError(f"checkpoint {os.fspath(path)!r}: does not fit this model: "
                              f"{err}") from None
    return checkpoint


def _check_optimizer_state(path, checkpoint):
    """The optimizer's slots must be for the checkpoint's own parameters and shapes."""
    state = checkpoint.optimizer_state
    if state is None:
        raise CheckpointError(f"checkpoint {path!r}: holds no optimizer state")
    shapes = {name: a.shape for name, a in checkpoint.model_state.items()}
    for slot, buffers in state["slots"].items():
        if buffers and {n: a.shape for n, a in buffers.items()} != shapes:
            raise CheckpointError(f"checkpoint {path!r}: damaged; the optimizer's {slot!r} "
                                  f"does not match the model's parameters")
