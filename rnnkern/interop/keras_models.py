r"""Conversion between Keras 3 models and rnnkern layers.

``from_keras(layer_or_model)`` takes a Keras ``SimpleRNN``, ``LSTM``, ``GRU``,
``Bidirectional`` of one of those, ``Dense``, ``Embedding``, or a
``keras.Sequential`` of them, and returns the rnnkern layer or
``rnnkern.training.Sequential`` that computes what Keras's ``predict``
computes; ``to_keras`` goes the other way.

How the weights map (``G`` gates, hidden size ``H``, Keras's column blocks
listed in rnnkern's gate names)::

    Keras                                  rnnkern (torch.nn)
    kernel            (I, G*H)      ->     weight_ih  (G*H, I)   transposed, blocks reordered
    recurrent_kernel  (H, G*H)      ->     weight_hh  (G*H, H)   transposed, blocks reordered
    bias              (G*H,)        ->     bias_ih = bias, bias_hh = 0
    bias (GRU)        (2, G*H)      ->     bias_ih = bias[0], bias_hh = bias[1]

    SimpleRNN  h                                      RNN   h
    LSTM       i, f, c, o  (c is rnnkern's g)          LSTM  i, f, g, o
    GRU        z, r, h     (h is rnnkern's n)          GRU   r, z, n

Keras's GRU with ``reset_after=True`` (its default) is exactly torch's GRU:
:math:`n = \tanh(x W_n + b_{in} + r \odot (h U_n + b_{hn}))`.  With
``reset_after=False`` Keras computes :math:`\tanh(x W_n + b_n + (r \odot h)
U_n)`, which rnnkern does not, and is refused.  The way back, ``to_keras``
writes ``bias_ih + bias_hh`` into a one-row Keras bias (the same sum that
enters every step, up to rounding).

Parameter counts therefore differ for ``SimpleRNN`` and ``LSTM``: rnnkern,
like torch, keeps two bias vectors, Keras one, so ``Sequential.summary()``
counts ``G*H`` more parameters per layer-direction than Keras does (10,600
against 10,400 for ``LSTM(50)`` on one input feature), and the extra
``bias_hh`` is zero after ``from_keras``.  GRU counts agree.

Keras recurrent layers take batch-first input ``(B, T, I)``: ``from_keras``
builds layers with ``batch_first=True``, and Keras's ``return_sequences=False``
becomes ``rnnkern.training.LastTimestep(batch_first=True)`` after the layer.
``Bidirectional`` (``merge_mode="concat"``) is rnnkern's ``bidirectional=True``;
with ``return_sequences=False`` Keras joins each direction's final output (the
backward direction's comes at the first step), which is
``LastTimestep(batch_first=True, bidirectional=True)`` after the layer.
``Embedding`` is ``rnnkern.training.Embedding`` (the same ``(V, E)`` table).
Refused with a clear error, because rnnkern would compute something else:
``go_backwards=True``, ``return_state``, ``stateful``, Keras's input
``dropout``/``recurrent_dropout``, activations other than Keras's defaults
(``SimpleRNN`` takes ``"tanh"`` or ``"relu"``, rnnkern's ``nonlinearity``),
``reset_after=False``, ``Bidirectional`` with another merge mode,
``Embedding`` with ``mask_zero=True``, mixed precision, and every other Keras
layer.

Keras 3 on its JAX and torch backends computes a float64 layer's products
in float32 (its type promotion maps float64 to float32) and ``predict`` casts
its input to ``floatx``: rnnkern's float64 answer is the exact one, and equals
Keras's to 1e-10 only where Keras is made to compute in float64 (the tests do).

Keras is never imported by ``import rnnkern``: ``from_keras`` finds it in
``sys.modules`` (its argument is a Keras object), ``to_keras`` imports it.
Keras picks its backend from ``KERAS_BACKEND`` at import time; the tests use
``KERAS_BACKEND=torch``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import numpy as np

from ..cells import cells_of_layer
from ..parameters import to_device_array
from ..validation import describe

__all__ = ["from_keras", "to_keras"]


@dataclass(frozen=True)
class _KerasRecurrent:
    """What Keras 3's own recurrent class computes, in rnnkern's terms.

    ``layer``: the rnnkern (and torch.nn) class computing it; ``gates``:
    Keras's column blocks of ``kernel`` in rnnkern's gate names; ``required``:
    the config values under which it equals rnnkern (Keras's defaults);
    ``option``: a Keras config key that selects the cell through the rnnkern
    constructor option of the same values (``activation`` -> ``nonlinearity``).
    """

    layer: str
    gates: tuple
    required: dict = field(default_factory=dict)
    option: tuple = ()


#: Keras 3's recurrent layer classes (facts about Keras, keyed by its class names).
_KERAS_RECURRENT = {
    "SimpleRNN": _KerasRecurrent("RNN", ("h",), option=("activation", "nonlinearity")),
    "LSTM": _KerasRecurrent("LSTM", ("i", "f", "g", "o"),
                            {"activation": "tanh", "recurrent_activation": "sigmoid"}),
    "GRU": _KerasRecurrent("GRU", ("z", "r", "n"),
                           {"activation": "tanh", "recurrent_activation": "sigmoid",
                            "reset_after": True}),
}

#: Keras options rnnkern has no equivalent for, with the value that is harmless.
_REFUSED = {"go_backwards": False, "return_state": False, "stateful": False,
            "dropout": 0.0, "recurrent_dropout": 0.0}

_SUPPORTED = "keras.layers.SimpleRNN, LSTM, GRU, Bidirectional (of those), Dense, Embedding"


def _keras_module():
    keras = sys.modules.get("keras")
    return keras if keras is not None and hasattr(keras, "Sequential") else None


def _numpy(variable):
    return np.array(sys.modules["keras"].ops.convert_to_numpy(variable))


def _blocks(a, axis, order_from, order_to):
    """Reorder the gate blocks of ``a`` along ``axis`` from one gate order to another."""
    pieces = np.split(a, len(order_from), axis=axis)
    return np.concatenate([pieces[order_from.index(g)] for g in order_to], axis=axis)


def _dtype(layer, name):
    policy = layer.dtype_policy
    if policy.compute_dtype != policy.variable_dtype or policy.compute_dtype not in (
            "float32", "float64"):
        raise ValueError(f"{name}: expected dtype policy 'float32' or 'float64', got "
                         f"{policy.name!r} (mixed precision has no rnnkern equivalent)")
    return policy.compute_dtype


def _check_built(layer, name):
    if not layer.built:
        raise ValueError(f"{name}: the Keras layer has no weights yet; build it first (give the "
                         f"model an input shape or call it once)")


# --------------------------------------------------------------------------
# Keras -> rnnkern
# --------------------------------------------------------------------------

def _recurrent_from_keras(rnns, name):
    """One rnnkern layer from Keras recurrent layers: ``[forward]`` or ``[forward, backward]``."""
    import rnnkern

    keras_class = type(rnns[0]).__name__
    form = _KERAS_RECURRENT[keras_class]
    config = rnns[0].get_config()
    options = {}
    for key, wanted in form.required.items():
        if config.get(key) != wanted:
            raise ValueError(f"{name}: {keras_class} with {key}={config.get(key)!r} has no "
                             f"rnnkern equivalent; expected {key}={wanted!r}")
    if form.option:
        key, rk_option = form.option
        choices = [c.layer_options[rk_option] for c in cells_of_layer(form.layer)]
        if config.get(key) not in choices:
            raise ValueError(f"{name}: {keras_class} with {key}={config.get(key)!r} has no "
                             f"rnnkern equivalent; expected {key} in {choices}")
        options[rk_option] = config[key]
    for layer_index, rnn in enumerate(rnns):
        layer_config = rnn.get_config()
        for key, harmless in _REFUSED.items():
            if key == "go_backwards" and layer_index == 1:
                harmless = True                      # Bidirectional's backward layer
            if layer_config.get(key, harmless) != harmless:
                raise ValueError(f"{name}: {keras_class} with {key}="
                                 f"{layer_config.get(key)!r} has no rnnkern equivalent; "
                                 f"expected {key}={harmless!r}")
        _check_built(rnn, name)
    dtype = _dtype(rnns[0], name)
    cell_weights = rnns[0].cell
    input_size, hidden_size = _numpy(cell_weights.kernel).shape[0], config["units"]
    layer = getattr(rnnkern, form.layer)(
        input_size, hidden_size, bias=bool(config["use_bias"]), batch_first=True,
        bidirectional=len(rnns) == 2, dtype=dtype, **options)
    cell = layer.cell
    params = {}
    for rnn, suffix in zip(rnns, ("_l0", "_l0_reverse")):
        kernels = {"weight_ih": rnn.cell.kernel, "weight_hh": rnn.cell.recurrent_kernel}
        for key, variable in kernels.items():
            params[key + suffix] = _blocks(_numpy(variable).T, 0, form.gates, cell.gate_names)
        if config["use_bias"]:
            bias = _numpy(rnn.cell.bias).reshape(-1, cell.num_gates * hidden_size)
            ih = _blocks(bias[0], 0, form.gates, cell.gate_names)
            hh = (_blocks(bias[1], 0, form.gates, cell.gate_names) if len(bias) == 2
                  else np.zeros_like(ih))
            params["bias_ih" + suffix], params["bias_hh" + suffix] = ih, hh
    layer.load_state_dict(params)
    return layer


def _from_keras_layer(keras_layer, name):
    """The rnnkern layers computing one Keras layer (a LastTimestep may follow)."""
    from ..training import Dense, Embedding, LastTimestep

    keras = sys.modules["keras"]
    kind = type(keras_layer).__name__
    if isinstance(keras_layer, keras.layers.Bidirectional):
        rnns = [keras_layer.forward_layer, keras_layer.backward_layer]
        inner = type(rnns[0]).__name__
        if (inner not in _KERAS_RECURRENT or type(rnns[0]) is not getattr(keras.layers, inner)
                or type(rnns[1]) is not type(rnns[0])):
            raise TypeError(f"{name}: expected Bidirectional of SimpleRNN, LSTM or GRU, got "
                            f"Bidirectional of {inner} and {type(rnns[1]).__name__}")
        if keras_layer.merge_mode != "concat":
            raise ValueError(f"{name}: Bidirectional with merge_mode={keras_layer.merge_mode!r} "
                             f"has no rnnkern equivalent; expected merge_mode='concat'")
        forward_config, backward_config = (r.get_config() for r in rnns)
        if not backward_config.get("go_backwards") or any(
                forward_config.get(k) != backward_config.get(k)
                for k in ("units", "use_bias", "activation", "recurrent_activation",
                          "reset_after")):
            raise ValueError(f"{name}: Bidirectional with a backward_layer unlike its forward "
                             f"layer has no rnnkern equivalent")
        layer = _recurrent_from_keras(rnns, name)
        return [layer] if keras_layer.return_sequences else [
            layer, LastTimestep(batch_first=True, bidirectional=True)]
    if kind in _KERAS_RECURRENT and type(keras_layer) is getattr(keras.layers, kind):
        layer = _recurrent_from_keras([keras_layer], name)
        return [layer] if keras_layer.return_sequences else [layer, LastTimestep(batch_first=True)]
    if type(keras_layer) is keras.layers.Dense:
        config = keras_layer.get_config()
        if config["activation"] != "linear":
            raise ValueError(f"{name}: Dense with activation={config['activation']!r} has no "
                             f"rnnkern equivalent; expected activation='linear'")
        _check_built(keras_layer, name)
        kernel = _numpy(keras_layer.kernel)
        dense = Dense(kernel.shape[0], kernel.shape[1], bias=bool(config["use_bias"]),
                      dtype=_dtype(keras_layer, name))
        params = {"weight": kernel.T}
        if config["use_bias"]:
            params["bias"] = _numpy(keras_layer.bias)
        dense.load_state_dict(params)
        return [dense]
    if type(keras_layer) is keras.layers.Embedding:
        config = keras_layer.get_config()
        if config.get("mask_zero"):
            raise ValueError(f"{name}: Embedding with mask_zero=True has no rnnkern equivalent "
                             f"(Keras then skips the masked steps); expected mask_zero=False, "
                             f"and the sequences' lengths given to the recurrent layer")
        if config.get("quantization_config") is not None:
            raise ValueError(f"{name}: a quantized Embedding has no rnnkern equivalent")
        _check_built(keras_layer, name)
        embedding = Embedding(config["input_dim"], config["output_dim"],
                              dtype=_dtype(keras_layer, name))
        embedding.load_state_dict({"weight": _numpy(keras_layer.embeddings)})
        return [embedding]
    raise TypeError(f"{name}: expected one of {_SUPPORTED}, got {describe(keras_layer)}")


def from_keras(layer_or_model):
    """The rnnkern equivalent of a Keras 3 layer or ``keras.Sequential`` model.

    Parameters
    ----------
    layer_or_model : keras.layers.Layer or keras.Sequential
        ``SimpleRNN``, ``LSTM``, ``GRU``, ``Bidirectional`` of one of them, or
        ``Dense``, ``Embedding`` (``mask_zero=False``), built (with weights),
        or a ``keras.Sequential`` of those.

    Returns
    -------
    rnnkern layer or rnnkern.training.Sequential
        For a model, a ``Sequential`` with one rnnkern layer per Keras layer
        and a ``LastTimestep(batch_first=True)`` after each recurrent layer
        with ``return_sequences=False`` (``bidirectional=True`` after a
        ``Bidirectional``).  For a single layer, the rnnkern
        layer (``RNN``/``LSTM``/``GRU`` with ``batch_first=True``, or
        ``training.Dense``), or ``Sequential(layer, LastTimestep(...))`` for a
        recurrent layer with ``return_sequences=False``.  Its ``forward(x)``
        equals Keras's ``predict(x)`` for ``x`` of shape ``(B, T, I)``.

    Raises
    ------
    TypeError
        For an object that is not one of these Keras layers or models.
    ValueError
        For a Keras option rnnkern does not compute exactly (see the module
        docstring), or a layer without weights.
    """
    from ..training import Sequential

    keras = _keras_module()
    if keras is None or not isinstance(layer_or_model, keras.layers.Layer):
        raise TypeError(f"layer_or_model: expected a Keras 3 layer ({_SUPPORTED}) or "
                        f"keras.Sequential, got {describe(layer_or_model)}")
    if isinstance(layer_or_model, keras.Sequential):
        if not layer_or_model.layers:
            raise ValueError("layer_or_model: the keras.Sequential model has no layers")
        layers = [rk for k, keras_layer in enumerate(layer_or_model.layers)
                  for rk in _from_keras_layer(keras_layer, f"layer_or_model.layers[{k}]")]
        return Sequential(*layers)
    if isinstance(layer_or_model, keras.Model):
        raise TypeError(f"layer_or_model: only keras.Sequential models are converted, got "
                        f"{describe(layer_or_model)}")
    layers = _from_keras_layer(layer_or_model, "layer_or_model")
    return layers[0] if len(layers) == 1 else Sequential(*layers)


# --------------------------------------------------------------------------
# rnnkern -> Keras
# --------------------------------------------------------------------------

def _host(value, name):
    return np.asarray(to_device_array(value, "cpu", name))


def _keras_recurrent_form(layer):
    """(Keras class name, _KerasRecurrent) of an rnnkern recurrent layer, or None."""
    return next(((keras_class, form) for keras_class, form in _KERAS_RECURRENT.items()
                 if form.layer == type(layer).__name__), None)


def _recurrent_to_keras(keras, layer, last_returns_sequences, name):
    """Keras layers (one per rnnkern layer of ``layer``) and the functions that load them."""
    if getattr(layer, "proj_size", 0):
        raise ValueError(f"{name}: LSTM with proj_size={layer.proj_size} has no Keras "
                         f"equivalent; expected proj_size=0")
    keras_class, form = _keras_recurrent_form(layer)
    cell = layer.cell
    options = dict(form.required, units=layer.hidden_size, use_bias=layer.bias,
                   dtype=layer.dtype)
    if form.option:
        key, rk_option = form.option
        options[key] = cell.layer_options[rk_option]
    params = {k: _host(p, f"{name} {k}") for k, p in layer.state_dict().items()}
    dropout = getattr(layer, "dropout", 0.0)
    out, loaders = [], []
    for k in range(layer.num_layers):
        sequences = last_returns_sequences or k < layer.num_layers - 1
        rnn = getattr(keras.layers, keras_class)(return_sequences=sequences, **options)
        suffixes = [f"_l{k}"]
        if layer.bidirectional:
            rnn = keras.layers.Bidirectional(rnn, merge_mode="concat", dtype=layer.dtype)
            suffixes.append(f"_l{k}_reverse")
        out.append(rnn)
        loaders.append(_loader(rnn, suffixes, params, form, cell, layer.hidden_size))
        if dropout and k < layer.num_layers - 1:   # torch's dropout between layers
            out.append(keras.layers.Dropout(dropout, dtype=layer.dtype))
            loaders.append(None)
    return out, loaders


def _loader(rnn, suffixes, params, form, cell, hidden_size):
    def load():
        rnns = ([rnn.forward_layer, rnn.backward_layer] if len(suffixes) == 2 else [rnn])
        for direction, suffix in zip(rnns, suffixes):
            c = direction.cell
            c.kernel.assign(_blocks(params["weight_ih" + suffix], 0, cell.gate_names,
                                    form.gates).T)
            c.recurrent_kernel.assign(_blocks(params["weight_hh" + suffix], 0, cell.gate_names,
                                              form.gates).T)
            if c.bias is not None:
                ih, hh = (_blocks(params[b + suffix], 0, cell.gate_names, form.gates)
                          for b in ("bias_ih", "bias_hh"))
                two_rows = len(c.bias.shape) == 2
                c.bias.assign(np.stack([ih, hh]) if two_rows else ih + hh)
    return load


def _dense_to_keras(keras, dense, name):
    params = {k: _host(p, f"{name} {k}") for k, p in dense.state_dict().items()}
    keras_dense = keras.layers.Dense(dense.out_features, use_bias=dense.bias, dtype=dense.dtype)

    def load():
        keras_dense.kernel.assign(params["weight"].T)
        if dense.bias:
            keras_dense.bias.assign(params["bias"])
    return keras_dense, load


def _embedding_to_keras(keras, embedding, name):
    weight = _host(embedding.state_dict()["weight"], f"{name} weight")
    keras_embedding = keras.layers.Embedding(embedding.num_embeddings, embedding.embedding_dim,
                                             dtype=embedding.dtype)

    def load():
        keras_embedding.embeddings.assign(weight)
    return keras_embedding, load


def _keras_input_shape(layer, sequences):
    """(shape without the batch, dtype) of what the Keras model of ``layer`` first takes."""
    from ..training import Embedding

    if isinstance(layer, Embedding):
        return ((None,) if sequences else ()), "int32"         # token ids
    size = getattr(layer, "input_size", None) or layer.in_features
    return ((None, size) if sequences else (size,)), layer.dtype


def to_keras(layer_or_sequential):
    """The Keras 3 equivalent of an rnnkern layer or ``training.Sequential``.

    Parameters
    ----------
    layer_or_sequential : rnnkern.RNN, LSTM, GRU, training.Dense, Embedding or Sequential
        A ``Sequential`` may hold those and ``LastTimestep`` right after a
        recurrent layer (Keras's ``return_sequences=False``;
        ``LastTimestep(bidirectional=True)`` after a bidirectional one).

    Returns
    -------
    keras.layers.Layer or keras.Sequential
        Built, with the weights.  A recurrent layer with ``num_layers=1``
        becomes one Keras layer (``Bidirectional(..., merge_mode="concat")``
        if bidirectional) with ``return_sequences=True``; with more layers, a
        ``keras.Sequential`` of one Keras layer per rnnkern layer (and a
        ``keras.layers.Dropout`` between them where ``dropout > 0``, torch's
        inter-layer dropout).  A ``Sequential`` becomes a ``keras.Sequential``
        with a ``keras.Input`` of shape ``(None, input_size)`` (sequences) or
        ``(in_features,)``, or of int32 token ids, ``(None,)`` (``()`` without
        a recurrent layer), where it starts with an ``Embedding``.  Keras
        layers take batch-first input whatever ``batch_first`` the rnnkern
        layer has.  ``SimpleRNN`` and ``LSTM`` get one bias, ``bias_ih +
        bias_hh``.

    Raises
    ------
    TypeError
        For a layer with no Keras counterpart.
    ValueError
        For ``proj_size > 0``, or a ``LastTimestep`` that is not right after
        a recurrent layer of its ``bidirectional``.
    ImportError
        If Keras 3 is not installed.
    """
    from ..recurrent import RecurrentLayer
    from ..training import Dense, Embedding, LastTimestep, Sequential

    def refuse():
        return TypeError(f"layer_or_sequential: expected rnnkern.RNN, LSTM, GRU, "
                         f"training.Dense, training.Embedding or training.Sequential, got "
                         f"{describe(layer_or_sequential)}")

    if not isinstance(layer_or_sequential, (RecurrentLayer, Dense, Embedding, Sequential)):
        raise refuse()
    try:
        import keras
    except ImportError as err:
        raise ImportError(f"to_keras needs Keras 3, which could not be imported ({err})") from None

    if isinstance(layer_or_sequential, Sequential):
        layers = layer_or_sequential.layers
        names = [f"layer_or_sequential.layers[{k}]" for k in range(len(layers))]
    else:
        layers, names = [layer_or_sequential], ["layer_or_sequential"]
    keras_layers, loaders = [], []
    for k, (layer, name) in enumerate(zip(layers, names)):
        if isinstance(layer, LastTimestep):
            before = layers[k - 1] if k else None
            if not isinstance(before, RecurrentLayer):
                raise ValueError(f"{name}: LastTimestep converts to Keras only right after an "
                                 f"RNN/LSTM/GRU (return_sequences=False), got it after "
                                 f"{describe(before) if k else 'nothing'}")
            if before.bidirectional != layer.bidirectional:
                raise ValueError(f"{name}: LastTimestep(bidirectional={layer.bidirectional}) "
                                 f"after a layer with bidirectional={before.bidirectional} has "
                                 f"no Keras equivalent; expected bidirectional="
                                 f"{before.bidirectional} (Keras's return_sequences=False takes "
                                 f"each direction's own last step)")
            continue
        if isinstance(layer, RecurrentLayer) and _keras_recurrent_form(layer):
            following = layers[k + 1] if k + 1 < len(layers) else None
            out, load = _recurrent_to_keras(keras, layer,
                                            not isinstance(following, LastTimestep), name)
            keras_layers += out
            loaders += load
        elif isinstance(layer, (Dense, Embedding)):
            convert = _dense_to_keras if isinstance(layer, Dense) else _embedding_to_keras
            out, load = convert(keras, layer, name)
            keras_layers.append(out)
            loaders.append(load)
        else:
            raise TypeError(f"{name}: no Keras counterpart is known for {describe(layer)}; "
                            f"expected rnnkern.RNN, LSTM, GRU, training.Dense, Embedding or "
                            f"LastTimestep")

    sequences = any(isinstance(layer, RecurrentLayer) for layer in layers)
    shape, input_dtype = _keras_input_shape(layers[0], sequences)
    if len(keras_layers) == 1 and not isinstance(layer_or_sequential, Sequential):
        result = keras_layers[0]
        result.build((None,) + (shape or (None,)))    # a lone Embedding: (batch, steps) ids
    else:
        result = keras.Sequential([keras.Input(shape=shape, dtype=input_dtype), *keras_layers])
    for load in loaders:
        if load is not None:
            load()
    return result
