r"""The model of a batch job: input layer, recurrent layers, head; and the task losses.

::

    dense input:      x (T, B, I)  -> RNN/LSTM/GRU -> Dense head
    embedding input:  ids (T, B)   -> Embedding -> RNN/LSTM/GRU -> Dense head

For sequence-to-sequence regression and the language model the head runs on
every step; for sequence classification it runs on the final hidden state of
the last recurrent layer at each sequence's own last step (``h_n``;
forward and backward directions concatenated, as ``torch.cat((h_n[-2],
h_n[-1]), -1)``), so variable lengths are exact.  Parameter names are those of
``Sequential(input, recurrent, head)``: ``"0.weight"``, ``"1.weight_ih_l0"``, ...

Losses (mean over the ``n`` terms, with the gradient of the prediction):

.. math::
    \text{cross entropy: } L = -\frac{1}{n}\sum_i \log \mathrm{softmax}(z_i)_{y_i}, \qquad
    \text{MSE: } L = \frac{1}{n}\sum_{t,b,o} m_{tb}(\hat y_{tbo} - y_{tbo})^2

where :math:`m_{tb} = [t < \ell_b]` masks the padding of a sequence of length
:math:`\ell_b` (and :math:`n = O\sum_{t,b} m_{tb}`).
"""

from __future__ import annotations

import inspect

import array_api_compat

from .. import recurrent
from ..training import Dense, Embedding, Sequential, mean_squared_error, softmax_cross_entropy
from .config import ConfigError

__all__ = ["BatchModel", "model_sizes", "task_loss"]


def model_sizes(config, train):
    """The sizes the data decides: ``input_size``, ``vocab_size``, ``output_size``."""
    model, task = config["model"], config["task"]
    sizes = {}
    if task["kind"] == "language_model":
        sizes["vocab_size"] = len(train.vocabulary)
        sizes["output_size"] = len(train.vocabulary)
        return sizes
    if model["input"] == "embedding":
        sizes["vocab_size"] = model["vocab_size"] or int(train.inputs.max()) + 1
    else:
        sizes["input_size"] = int(train.inputs.shape[2])
    if task["kind"] == "classification":
        sizes["output_size"] = task["num_classes"] or max(int(train.targets.max()) + 1, 2)
    else:
        sizes["output_size"] = int(train.targets.shape[2])
    return sizes


class BatchModel:
    """Input layer, recurrent layer stack and head, built from a checked config.

    Parameters
    ----------
    config : dict
        A checked configuration (``rnnkern.batch.config``).
    sizes : dict
        ``model_sizes(config, data)``.
    """

    def __init__(self, config, sizes):
        m, training = config["model"], config["training"]
        dtype, device, seed = training["dtype"], training["device"], training["seed"]
        layers = []
        if m["input"] == "embedding":
            layers.append(Embedding(sizes["vocab_size"], m["embedding_dim"], dtype=dtype,
                                    device=device, seed=seed))
            features = m["embedding_dim"]
        else:
            features = sizes["input_size"]
        options = {}
        layer_class = getattr(recurrent, m["layer"])
        accepted = inspect.signature(layer_class).parameters
        for key in ("nonlinearity", "proj_size", "dropout"):
            if m[key] and key in accepted:
                options[key] = m[key]
            elif m[key]:
                raise ConfigError(f"[model] {key}: {m['layer']} does not take this option")
        try:
            self.recurrent = layer_class(features, m["hidden_size"], m["num_layers"],
                                         bias=m["bias"], bidirectional=m["bidirectional"],
                                         dtype=dtype, device=device, seed=seed + 1, **options)
        except ValueError as err:
            raise ConfigError(f"[model]: this rnnkern cannot build the layer: {err}") from None
        layers.append(self.recurrent)
        directions = 2 if m["bidirectional"] else 1
        head_in = directions * (m["proj_size"] or m["hidden_size"])
        self.head = Dense(head_in, sizes["output_size"], dtype=dtype, device=device,
                          seed=seed + 2)
        self.final_state = config["task"]["kind"] == "classification"
        self.directions = directions
        self.body = Sequential(*layers) if self.final_state else Sequential(*layers, self.head)
        self.head_prefix = f"{len(layers)}."

    # parameter API (names as Sequential(input, recurrent, head))
    def parameters(self):
        params = self.body.parameters()
        if self.final_state:
            params.update({self.head_prefix + n: p for n, p in self.head.parameters().items()})
        return params

    def state_dict(self):
        state = self.body.state_dict()
        if self.final_state:
            state.update({self.head_prefix + n: p for n, p in self.head.state_dict().items()})
        return state

    def load_state_dict(self, state_dict):
        if not self.final_state:
            return self.body.load_state_dict(state_dict)
        head = {n[len(self.head_prefix):]: a for n, a in state_dict.items()
                if n.startswith(self.head_prefix)}
        body = {n: a for n, a in state_dict.items() if not n.startswith(self.head_prefix)}
        self.body.load_state_dict(body)        # checks its keys before changing anything
        self.head.load_state_dict(head)

    def to(self, device):
        self.body.to(device)
        self.head.to(device)
        return self

    # computation
    def forward(self, x, states=None, lengths=None):
        """``(out, states, tape)``; ``x`` time-major."""
        y, states, tape = self.body.forward(x, states, lengths)
        if not self.final_state:
            return y, states, tape
        xp = array_api_compat.array_namespace(y)
        features = self._final_features(xp, states[-1])
        out, head_tape = self.head.forward(features)
        return out, states, (tape, head_tape, y, states[-1])

    def backward(self, dout, tape):
        """Gradients of all parameters (names as ``parameters()``)."""
        if not self.final_state:
            return self.body.backward(dout, tape)[2]
        body_tape, head_tape, y, state = tape
        xp = array_api_compat.array_namespace(dout)
        dfeatures, head_grads = self.head.backward(dout, head_tape)
        h = state[0] if isinstance(state, tuple) else state
        width = h.shape[-1]
        parts = [xp.zeros((h.shape[0] - self.directions,) + tuple(h.shape[1:]), dtype=h.dtype,
                          device=array_api_compat.device(h))]
        parts += [xp.expand_dims(dfeatures[:, d * width:(d + 1) * width], axis=0)
                  for d in range(self.directions)]
        dh = xp.concat(parts, axis=0)
        dstate = (dh,) + tuple(xp.zeros_like(s) for s in state[1:]) \
            if isinstance(state, tuple) else dh
        grads = self.body.backward(xp.zeros_like(y), body_tape, [dstate])[2]
        grads.update({self.head_prefix + n: g for n, g in head_grads.items()})
        return grads

    def infer(self, x, lengths=None):
        """``forward``'s ``out`` without tapes (inference), ``x`` time-major."""
        y, states = self.body(x, None, lengths)
        if not self.final_state:
            return y
        xp = array_api_compat.array_namespace(y)
        return self.head(self._final_features(xp, states[-1]))

    def _final_features(self, xp, state):
        """``(B, D*H)``: the last layer's final hidden state(s), directions concatenated."""
        h = state[0] if isinstance(state, tuple) else state
        return xp.concat([h[h.shape[0] - self.directions + d, ...]
                          for d in range(self.directions)], axis=-1)


def task_loss(kind, out, targets, mask=None):
    """``(loss, dout, n)``: the mean loss, its gradient, and the number of terms ``n``.

    ``n`` lets data-parallel ranks weight their means into the global mean.
    """
    xp = array_api_compat.array_namespace(out)
    if kind != "regression":
        loss, dout = softmax_cross_entropy(out, targets, mask)
        n = int(xp.sum(xp.astype(mask, xp.int64))) if mask is not None \
            else int(targets.shape[0] * (targets.shape[1] if targets.ndim > 1 else 1))
        return loss, dout, n
    if mask is None:
        loss, dout = mean_squared_error(out, targets)
        return loss, dout, out.shape[0] * out.shape[1] * out.shape[2]
    weights = xp.expand_dims(xp.astype(mask, out.dtype), axis=-1)
    n = int(xp.sum(xp.astype(mask, xp.int64))) * out.shape[2]
    error = (out - targets) * weights
    return xp.sum(error * error) / n, error * (2.0 / n), n
