"""The TOML configuration of ``python -m rnnkern train``: its schema and its checks.

A configuration has five tables; every key is checked, unknown keys are
errors, and every error names the file, the key and the expected value::

    [model]      input = "dense" | "embedding", embedding_dim, vocab_size,
                 layer = "RNN" | "LSTM" | "GRU", hidden_size, num_layers,
                 bidirectional, bias, nonlinearity (RNN), proj_size (LSTM), dropout
    [data]       inputs, targets, lengths      (.npy path, or {file = "x.npz", key = "x"})
                 text                           (UTF-8 file: a character language model)
                 validation_split | validation_inputs, validation_targets,
                 validation_lengths | validation_text
    [task]       kind = "classification" | "regression" | "language_model",
                 loss = "cross_entropy" | "mse", num_classes
    [optimizer]  name = "adam" | "sgd", lr, betas, eps, weight_decay, momentum,
                 dampening, nesterov, clip_norm, clip_value
    [training]   batch_size, steps | epochs, bptt, seed, device, dtype, checkpoint,
                 checkpoint_every, log_every, validate_every

Array layouts (sample first, as they are usually stored): dense inputs
``(N, T, I)`` float, embedding inputs ``(N, T)`` integer ids, lengths
``(N,)``; classification targets ``(N,)`` class ids, regression targets
``(N, T, O)`` float.  Relative paths are relative to the configuration file.
"""

from __future__ import annotations

import math
import numbers
import os

from ..cells import CELLS, cells_of_layer
from ..devices import DEVICES

__all__ = ["ConfigError", "load_config", "check_config", "layer_names"]

TASKS = ("classification", "regression", "language_model")
LOSSES = {"classification": ("cross_entropy",), "regression": ("mse",),
          "language_model": ("cross_entropy",)}
DTYPES = ("float32", "float64")


class ConfigError(ValueError):
    """A configuration or data file that cannot be used, with the file and key named."""


def layer_names():
    """The public recurrent layer classes, from the cell registry."""
    return tuple(sorted({cell.layer for cell in CELLS.values()}))


def _layer_options(layer):
    """Option names (e.g. ``nonlinearity``) and their allowed values for ``layer``."""
    options = {}
    for cell in cells_of_layer(layer):
        for key, value in cell.layer_options.items():
            options.setdefault(key, []).append(value)
    return options


# ---------------------------------------------------------------- value checkers
# Each returns the checked value or raises _Bad(expected) with what it wanted.

class _Bad(Exception):
    def __init__(self, expected):
        super().__init__(expected)
        self.expected = expected


def _int(minimum):
    def check(value):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise _Bad(f"an integer >= {minimum}")
        return value
    return check


def _float(low, high=math.inf, *, high_open=False):
    def check(value):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) \
                or not math.isfinite(value) or value < low or value > high \
                or (high_open and value >= high):
            bracket = ")" if high_open else "]"
            raise _Bad(f"a number in [{low}, {high}{bracket}" if high != math.inf
                       else f"a finite number >= {low}")
        return float(value)
    return check


def _bool(value):
    if not isinstance(value, bool):
        raise _Bad("true or false")
    return value


def _choice(*choices):
    def check(value):
        if value not in choices:
            raise _Bad("one of " + ", ".join(repr(c) for c in choices))
        return value
    return check


def _string(value):
    if not isinstance(value, str) or not value:
        raise _Bad("a non-empty string")
    return value


def _array_source(value):
    """``"x.npy"`` or ``{file = "d.npz", key = "x"}``."""
    if isinstance(value, str) and value.endswith(".npy"):
        return {"file": value, "key": None}
    if isinstance(value, dict) and set(value) == {"file", "key"} and \
            isinstance(value["file"], str) and value["file"].endswith(".npz") and \
            isinstance(value["key"], str) and value["key"]:
        return dict(value)
    raise _Bad('a path to a .npy file, or {file = "data.npz", key = "name"}')


def _betas(value):
    if not isinstance(value, list) or len(value) != 2 or not all(
            isinstance(b, numbers.Real) and not isinstance(b, bool) and 0 <= b < 1
            for b in value):
        raise _Bad("a list of two numbers in [0, 1)")
    return [float(b) for b in value]


# ---------------------------------------------------------------- schema
# table -> key -> (checker, default); _REQUIRED marks keys without a default.

_REQUIRED = object()
_ABSENT = None

SCHEMA = {
    "model": {
        "input": (_choice("dense", "embedding"), _REQUIRED),
        "embedding_dim": (_int(1), _ABSENT),
        "vocab_size": (_int(1), _ABSENT),
        "layer": (None, _REQUIRED),            # checked against the registry
        "hidden_size": (_int(1), _REQUIRED),
        "num_layers": (_int(1), 1),
        "bidirectional": (_bool, False),
        "bias": (_bool, True),
        "nonlinearity": (_string, _ABSENT),   # the registry's layer_options
        "proj_size": (_int(0), 0),
        "dropout": (_float(0.0, 1.0, high_open=True), 0.0),
    },
    "data": {
        "inputs": (_array_source, _ABSENT),
        "targets": (_array_source, _ABSENT),
        "lengths": (_array_source, _ABSENT),
        "text": (_string, _ABSENT),
        "validation_split": (_float(0.0, 1.0, high_open=True), 0.0),
        "validation_inputs": (_array_source, _ABSENT),
        "validation_targets": (_array_source, _ABSENT),
        "validation_lengths": (_array_source, _ABSENT),
        "validation_text": (_string, _ABSENT),
    },
    "task": {
        "kind": (_choice(*TASKS), _REQUIRED),
        "loss": (_choice("cross_entropy", "mse"), _ABSENT),
        "num_classes": (_int(2), _ABSENT),
    },
    "optimizer": {
        "name": (_choice("adam", "sgd"), _REQUIRED),
        "lr": (_float(0.0), _REQUIRED),
        "betas": (_betas, _ABSENT),
        "eps": (_float(0.0), _ABSENT),
        "weight_decay": (_float(0.0), 0.0),
        "momentum": (_float(0.0), _ABSENT),
        "dampening": (_float(0.0), _ABSENT),
        "nesterov": (_bool, _ABSENT),
        "clip_norm": (_float(0.0), _ABSENT),
        "clip_value": (_float(0.0), _ABSENT),
    },
    "training": {
        "batch_size": (_int(1), _REQUIRED),
        "steps": (_int(1), _ABSENT),
        "epochs": (_int(1), _ABSENT),
        "bptt": (_int(0), 0),
        "seed": (_int(0), 0),
        "device": (_choice(*DEVICES), "cpu"),
        "dtype": (_choice(*DTYPES), "float32"),
        "checkpoint": (_string, _ABSENT),
        "checkpoint_every": (_int(0), 0),
        "log_every": (_int(1), 10),
        "validate_every": (_int(0), 0),
    },
}
OPTIMIZER_KEYS = {"adam": {"betas", "eps"}, "sgd": {"momentum", "dampening", "nesterov"}}


def load_config(path):
    """Read and check the TOML file at ``path``; return the completed config dict.

    Relative data and checkpoint paths are made absolute (relative to the
    file's directory).  Raises :class:`ConfigError` naming the file and key.
    """
    try:
        import tomllib
    except ModuleNotFoundError:                   # Python 3.10
        import tomli as tomllib
    path = os.fspath(path)
    try:
        with open(path, "rb") as file:
            raw = tomllib.load(file)
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the configuration: "
                          f"{err.strerror or err}") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from None
    return check_config(raw, path)


def check_config(raw, path="<config>"):
    """Check a parsed configuration (``dict`` of tables); return the completed copy."""
    def fail(key, expected, got=_REQUIRED):
        got_text = "" if got is _REQUIRED else f", got {got!r}"
        raise ConfigError(f"{path}: {key}: expected {expected}{got_text}")

    unknown = sorted(set(raw) - set(SCHEMA))
    if unknown:
        fail(f"[{unknown[0]}]", "only the tables " + ", ".join(f"[{t}]" for t in SCHEMA),
             "an unknown table")
    config = {}
    for table, keys in SCHEMA.items():
        given = raw.get(table, {})
        if not isinstance(given, dict):
            fail(f"[{table}]", "a table", given)
        unknown = sorted(set(given) - set(keys))
        if unknown:
            fail(f"[{table}] {unknown[0]}", "one of the keys " + ", ".join(keys),
                 "an unknown key")
        checked = {}
        for key, (checker, default) in keys.items():
            if key in given:
                value = given[key]
                if checker is not None:
                    try:
                        value = checker(value)
                    except _Bad as bad:
                        fail(f"[{table}] {key}", bad.expected, value)
                checked[key] = value
            elif default is _REQUIRED:
                fail(f"[{table}] {key}", "a value (this key is required)")
            else:
                checked[key] = default
        config[table] = checked

    _check_model(config["model"], config["task"], fail)
    _check_data(config["data"], config["task"], fail)
    _check_task(config["task"], fail)
    _check_optimizer(config["optimizer"], raw.get("optimizer", {}), fail)
    _check_training(config["training"], config["task"], config["data"], fail)
    base = os.path.dirname(os.path.abspath(path))
    data = config["data"]
    for key, value in data.items():
        if isinstance(value, dict):
            value["file"] = os.path.join(base, value["file"])
        elif key in ("text", "validation_text") and value is not None:
            data[key] = os.path.join(base, value)
    training = config["training"]
    stem = os.path.splitext(os.path.basename(path))[0]
    training["checkpoint"] = os.path.join(base, training["checkpoint"] or f"{stem}.checkpoint.npz")
    return config


def _check_model(model, task, fail):
    if task["kind"] == "language_model" and model["input"] != "embedding":
        fail("[model] input", '"embedding" for kind = "language_model"', model["input"])
    layers = layer_names()
    if model["layer"] not in layers:
        fail("[model] layer", "one of " + ", ".join(repr(n) for n in layers), model["layer"])
    options = _layer_options(model["layer"])
    if model["nonlinearity"] is not None:
        if "nonlinearity" not in options:
            fail("[model] nonlinearity", f"no value: {model['layer']} has no nonlinearity option",
                 model["nonlinearity"])
        if model["nonlinearity"] not in options["nonlinearity"]:
            fail("[model] nonlinearity",
                 "one of " + ", ".join(repr(o) for o in options["nonlinearity"]),
                 model["nonlinearity"])
    if model["proj_size"] and not any(c.has_projection for c in cells_of_layer(model["layer"])):
        projected = sorted({c.layer for c in CELLS.values() if c.has_projection})
        fail("[model] proj_size", f"0 (only {', '.join(projected)} layers have a projection)",
             model["proj_size"])
    if model["proj_size"] and model["proj_size"] >= model["hidden_size"]:
        fail("[model] proj_size", f"an integer < hidden_size = {model['hidden_size']}",
             model["proj_size"])
    if model["input"] == "embedding":
        if model["embedding_dim"] is None:
            fail("[model] embedding_dim", 'a value (required with input = "embedding")')
    else:
        for key in ("embedding_dim", "vocab_size"):
            if model[key] is not None:
                fail(f"[model] {key}", 'no value: it applies only to input = "embedding"',
                     model[key])


def _check_data(data, task, fail):
    if task["kind"] == "language_model":
        if data["text"] is None:
            fail("[data] text", 'a path to a UTF-8 text file (kind = "language_model")')
        for key in ("inputs", "targets", "lengths", "validation_inputs", "validation_targets",
                    "validation_lengths"):
            if data[key] is not None:
                fail(f"[data] {key}", 'no value with kind = "language_model" (it reads text)',
                     data[key]["file"])
        if data["validation_text"] is not None and data["validation_split"]:
            fail("[data] validation_split", "0 when validation_text is given",
                 data["validation_split"])
        return
    for key in ("text", "validation_text"):
        if data[key] is not None:
            fail(f"[data] {key}", 'no value: text files are for kind = "language_model"',
                 data[key])
    for key in ("inputs", "targets"):
        if data[key] is None:
            fail(f"[data] {key}", 'a path to a .npy file, or {file = "data.npz", key = "name"}')
    if data["validation_inputs"] is not None or data["validation_targets"] is not None:
        if data["validation_split"]:
            fail("[data] validation_split", "0 when validation_inputs is given",
                 data["validation_split"])
        for key in ("validation_inputs", "validation_targets"):
            if data[key] is None:
                fail(f"[data] {key}", "a value (validation_inputs and validation_targets "
                                      "go together)")
        if (data["lengths"] is None) != (data["validation_lengths"] is None):
            fail("[data] validation_lengths", "a value exactly when lengths has one")
    elif data["validation_lengths"] is not None:
        fail("[data] validation_lengths", "no value without validation_inputs",
             data["validation_lengths"]["file"])


def _check_task(task, fail):
    if task["loss"] is None:
        task["loss"] = LOSSES[task["kind"]][0]
    elif task["loss"] not in LOSSES[task["kind"]]:
        fail("[task] loss", " or ".join(repr(x) for x in LOSSES[task["kind"]]) +
             f' for kind = "{task["kind"]}"', task["loss"])
    if task["num_classes"] is not None and task["kind"] != "classification":
        fail("[task] num_classes", 'no value: it applies to kind = "classification"',
             task["num_classes"])


def _check_optimizer(optimizer, given, fail):
    name = optimizer["name"]
    for other, keys in OPTIMIZER_KEYS.items():
        if other != name:
            for key in sorted(keys & set(given)):
                fail(f"[optimizer] {key}", f'no value: it applies to name = "{other}"',
                     given[key])
    if optimizer["clip_norm"] is not None and optimizer["clip_value"] is not None:
        fail("[optimizer] clip_value", "no value when clip_norm is given (one clipping)",
             optimizer["clip_value"])
    if name == "sgd" and optimizer.get("nesterov") and not (
            (optimizer.get("momentum") or 0) > 0 and not optimizer.get("dampening")):
        fail("[optimizer] nesterov", "false unless momentum > 0 and dampening = 0", True)
    for key in list(optimizer):        # keep only the keys of this optimizer
        if key in set().union(*OPTIMIZER_KEYS.values()) - OPTIMIZER_KEYS[name]:
            del optimizer[key]


def _check_training(training, task, data, fail):
    if (training["steps"] is None) == (training["epochs"] is None):
        fail("[training] steps", "exactly one of steps and epochs",
             {"steps": training["steps"], "epochs": training["epochs"]})
    if task["kind"] == "language_model" and not training["bptt"]:
        fail("[training] bptt", 'an integer >= 1 (the chunk length) for kind = "language_model"',
             training["bptt"])
    if task["kind"] == "classification" and training["bptt"]:
        fail("[training] bptt", "0: classification backpropagates through the whole sequence",
             training["bptt"])
    if training["bptt"] and data.get("lengths") is not None:
        fail("[training] bptt", "0 when [data] lengths is given (truncated BPTT needs "
                                "sequences of one length)", training["bptt"])


def optimizer_from_config(optimizer):
    """The ``rnnkern.training`` optimizer an ``[optimizer]`` table describes."""
    from ..training import SGD, Adam
    o = optimizer
    if o["name"] == "adam":
        return Adam(lr=o["lr"], betas=tuple(o["betas"] or (0.9, 0.999)),
                    eps=1e-8 if o["eps"] is None else o["eps"], weight_decay=o["weight_decay"])
    return SGD(o["lr"], o["momentum"] or 0.0, dampening=o["dampening"] or 0.0,
               weight_decay=o["weight_decay"], nesterov=bool(o["nesterov"]))
