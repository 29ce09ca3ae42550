r"""Layers around the recurrent ones: ``Embedding``, ``Dense``, ``LastTimestep``, ``Sequential``.

Every layer here has the same three calls::

    y = layer(x)                               # inference: no tape
    y, tape = layer.forward(x)
    dx, grads = layer.backward(dy, tape)       # grads: dict, state_dict names

and the parameter API of the recurrent layers (``parameters()``,
``state_dict()``, ``load_state_dict()``, ``to()``, ``device``, ``dtype``).
``Sequential`` chains them with ``rnnkern.RNN/LSTM/GRU`` layers, carrying the
recurrent states.  Only array-API calls on the arrays' own namespace are used,
so the same code runs on NumPy (``device="cpu"``) and CuPy (``device="cuda"``).
"""

from __future__ import annotations

import math

import array_api_compat
import numpy as np

from .. import validation as v
from ..dispatch import namespace_of
from ..validation import describe
from ..recurrent import RecurrentLayer
from ..devices import check_device
from ..parameters import ParameterLayer, check_state_dict
from ..tape import Tape, check_tape
from .beyond_array_api import scatter_add_rows

__all__ = ["Embedding", "Dense", "LastTimestep", "Sequential"]

class Embedding(ParameterLayer):
    r"""Token ids to vectors, as ``torch.nn.Embedding``.

    .. math:: y[\ldots, :] = W[\mathrm{ids}[\ldots], :], \qquad
              \frac{\partial L}{\partial W_k} = \sum_{n:\ \mathrm{ids}_n = k}
              \frac{\partial L}{\partial y_n}

    The backward pass is a scatter-add: a token that occurs several times
    accumulates all its gradients.

    Parameters
    ----------
    num_embeddings : int
        Vocabulary size ``V``; ids must lie in ``[0, V)``.
    embedding_dim : int
        Vector size ``E``.  ``weight`` is ``(V, E)``, initialised from
        ``N(0, 1)`` as in torch.
    """

    def __init__(self, num_embeddings, embedding_dim, *, dtype="float32", device="cpu",
                 seed=None):
        self.num_embeddings = v.check_positive_int("num_embeddings", num_embeddings)
        self.embedding_dim = v.check_positive_int("embedding_dim", embedding_dim)
        rng = _rng("seed", seed)
        self._init_parameters({"weight": rng.standard_normal((self.num_embeddings, self.embedding_dim))},
                    dtype, device)

    def output_shape(self, input_shape):
        """``input_shape + (E,)``."""
        return tuple(input_shape) + (self.embedding_dim,)

    def __call__(self, ids):
        """Look up ``ids`` (integer array of any shape): inference, no tape."""
        return self._lookup(ids)[0]

    def forward(self, ids):
        """Look up ``ids`` (integer array of any shape); return ``(y, tape)``."""
        y, flat = self._lookup(ids)
        return y, Tape(self, flat)

    def _lookup(self, ids):
        """``(y, the ids flattened)``: the rows of W named by ``ids``."""
        xp = namespace_of(ids, names=["ids"])
        weight = self._parameters_for(xp, "ids")["weight"]
        _check_token_ids("ids", xp, ids, self.num_embeddings)
        flat = xp.reshape(ids, (-1,))
        y = xp.take(weight, flat, axis=0)
        return xp.reshape(y, tuple(ids.shape) + (self.embedding_dim,)), flat

    def backward(self, dy, tape):
        """Return ``(None, {"weight": dW})``: ids have no gradient."""
        check_tape(tape, self)
        flat = tape.saved
        xp = namespace_of(dy, flat, names=["dy", "the tape's ids"])
        v.check_array("dy", dy, dy.ndim, self.dtype,
                      (None,) * (dy.ndim - 1) + (self.embedding_dim,))
        if math.prod(dy.shape[:-1]) != flat.shape[0]:
            raise ValueError(f"dy: expected {flat.shape[0]} vectors (one per id), "
                             f"got {describe(dy)}")
        weight = self._parameters_for(xp, "dy")["weight"]
        dweight = scatter_add_rows(xp.zeros_like(weight), flat,
                                   xp.reshape(dy, (-1, self.embedding_dim)))
        return None, {"weight": dweight}

    def __repr__(self):
        return (f"Embedding({self.num_embeddings}, {self.embedding_dim}, dtype={self.dtype!r}, "
                f"device={self.device!r})")


class Dense(ParameterLayer):
    r"""Affine map on the last axis, as ``torch.nn.Linear``.

    .. math:: y_t = V s_t + b, \qquad
              \frac{\partial L}{\partial V} = \sum_t \delta_t s_t^T,\quad
              \frac{\partial L}{\partial b} = \sum_t \delta_t,\quad
              \frac{\partial L}{\partial s_t} = V^T \delta_t

    with :math:`\delta_t = \partial L / \partial y_t`.  ``weight`` ``V`` is
    ``(out_features, in_features)``, ``bias`` ``b`` is ``(out_features,)``,
    both initialised from ``U(-1/sqrt(in_features), 1/sqrt(in_features))`` as
    in torch.
    """

    def __init__(self, in_features, out_features, *, bias=True, dtype="float32", device="cpu",
                 seed=None):
        self.in_features = v.check_positive_int("in_features", in_features)
        self.out_features = v.check_positive_int("out_features", out_features)
        self.bias = v.check_bool("bias", bias)
        rng = _rng("seed", seed)
        bound = 1.0 / math.sqrt(self.in_features)
        params = {"weight": rng.uniform(-bound, bound, (self.out_features, self.in_features))}
        if self.bias:
            params["bias"] = rng.uniform(-bound, bound, (self.out_features,))
        self._init_parameters(params, dtype, device)

    def output_shape(self, input_shape):
        """``input_shape[:-1] + (out_features,)``."""
        return tuple(input_shape)[:-1] + (self.out_features,)

    def __call__(self, x):
        """``y = x V^T + b`` on the last axis of ``x`` (``(..., in_features)``): inference,
        no tape."""
        return self._affine(x, for_tape=False)[0]

    def forward(self, x):
        """``y = x V^T + b`` on the last axis of ``x`` (``(..., in_features)``); return
        ``(y, tape)``."""
        y, params = self._affine(x, for_tape=True)      # the tape keeps V for the backward's dx
        return y, Tape(self, (x, params))

    def _affine(self, x, *, for_tape):
        """``(y, the parameters it ran with)``."""
        xp = namespace_of(x, names=["x"])
        params = self._parameters_for(xp, "x", for_tape=for_tape)
        v.check_array("x", x, x.ndim, self.dtype, (None,) * (x.ndim - 1) + (self.in_features,))
        rows = xp.reshape(x, (-1, self.in_features))        # one 2-D GEMM (BLAS) for all rows
        y = xp.matmul(rows, xp.permute_dims(params["weight"], (1, 0)))
        if self.bias:
            y = y + params["bias"]
        return xp.reshape(y, tuple(x.shape)[:-1] + (self.out_features,)), params

    def backward(self, dy, tape):
        """Return ``(dx, {"weight": dV, "bias": db})``."""
        check_tape(tape, self)
        x, params = tape.saved
        xp = namespace_of(dy, x, names=["dy", "the tape's x"])
        self._parameters_for(xp, "dy")      # the TypeError if dy is of another library
        v.check_array("dy", dy, x.ndim, self.dtype, tuple(x.shape)[:-1] + (self.out_features,))
        dy_flat = xp.reshape(dy, (-1, self.out_features))
        x_flat = xp.reshape(x, (-1, self.in_features))
        grads = {"weight": xp.matmul(xp.permute_dims(dy_flat, (1, 0)), x_flat)}
        if self.bias:
            grads["bias"] = xp.sum(dy_flat, axis=0)
        dx = xp.matmul(dy_flat, params["weight"])
        return xp.reshape(dx, tuple(x.shape)), grads

    def __repr__(self):
        return (f"Dense({self.in_features}, {self.out_features}, bias={self.bias}, "
                f"dtype={self.dtype!r}, device={self.device!r})")


class LastTimestep:
    r"""Keep only the last timestep of a sequence: many-to-one.

    ``(T, B, F) -> (B, F)`` (``(B, T, F) -> (B, F)`` with ``batch_first``);
    the backward pass puts ``dy`` at the last step and zeros elsewhere.  It
    plays the part of Keras' ``return_sequences=False``.  For sequences of
    different lengths use the recurrent layer's ``h_n`` instead.

    ``bidirectional=True``: each direction's own last step, for the output of
    a bidirectional layer (``F = 2P``, the forward direction's ``P`` features
    first).  The forward direction ends at ``t = T-1``, the backward one at
    ``t = 0``:

    .. math:: y = [\, x_{T-1}[:P] \,;\, x_0[P:] \,]

    that is ``h_n`` of both directions joined, as Keras's
    ``Bidirectional(..., return_sequences=False)`` and torch's
    ``cat((h_n[-2], h_n[-1]), 1)`` give it.
    """

    def __init__(self, *, batch_first=False, bidirectional=False):
        self.batch_first = v.check_bool("batch_first", batch_first)
        self.bidirectional = v.check_bool("bidirectional", bidirectional)

    def parameters(self):
        return {}

    def state_dict(self):
        return {}

    def load_state_dict(self, state_dict):
        check_state_dict({}, state_dict)

    def to(self, device):
        check_device(device)
        return self

    def output_shape(self, input_shape):
        shape = tuple(input_shape)
        return shape[:1] + shape[2:] if self.batch_first else shape[1:]

    def __call__(self, x):
        """The last step of ``x`` (of each direction's half): inference, no tape."""
        xp = namespace_of(x, names=["x"])
        if x.ndim != 3:
            raise ValueError(f"x: expected a 3-D sequence array, got {describe(x)}")
        if self.bidirectional and x.shape[-1] % 2:
            raise ValueError(f"x: expected an even number of features (two directions' "
                             f"outputs side by side), got {describe(x)}")
        last = x[:, -1, :] if self.batch_first else x[-1, ...]
        if not self.bidirectional:
            return last
        first = x[:, 0, :] if self.batch_first else x[0, ...]
        half = x.shape[-1] // 2
        return xp.concat([last[:, :half], first[:, half:]], axis=-1)

    def forward(self, x):
        return self(x), Tape(self, tuple(x.shape))

    def backward(self, dy, tape):
        check_tape(tape, self)
        input_shape = tape.saved
        xp = namespace_of(dy, names=["dy"])
        expected = self.output_shape(input_shape)
        if tuple(dy.shape) != expected:
            raise ValueError(f"dy: expected shape {expected}, got {describe(dy)}")
        axis = 1 if self.batch_first else 0
        device = array_api_compat.device(dy)

        def at_end(d, last):
            """``d`` (B, W) at the last step (else the first) of zeros of the input's length."""
            zeros_shape = list(input_shape[:2]) + [d.shape[-1]]
            zeros_shape[axis] -= 1
            zeros = xp.zeros(tuple(zeros_shape), dtype=dy.dtype, device=device)
            step = xp.expand_dims(d, axis=axis)
            return xp.concat([zeros, step] if last else [step, zeros], axis=axis)

        if not self.bidirectional:
            return at_end(dy, last=True), {}
        half = dy.shape[-1] // 2
        return xp.concat([at_end(dy[:, :half], last=True), at_end(dy[:, half:], last=False)],
                         axis=-1), {}

    def __repr__(self):
        extra = ", bidirectional=True" if self.bidirectional else ""
        return f"LastTimestep(batch_first={self.batch_first}{extra})"


class Sequential:
    """A chain of layers: the output of each is the input of the next.

    Layers are ``rnnkern.RNN/LSTM/GRU`` and the layers of this module.
    Parameters are named ``"{index}.{name}"`` as in ``torch.nn.Sequential``
    (``"0.weight"``, ``"1.weight_ih_l0"``, ...).

    Recurrent layers take and return a state: ``states`` is a list with one
    entry per recurrent layer, in order (``None`` for zeros), and
    ``forward`` returns the final states in the same form.  Truncated BPTT
    feeds the states returned by one chunk as the ``states`` of the next; no
    gradient crosses the chunk boundary because ``backward`` is called per
    chunk.

    >>> import numpy as np, rnnkern as rk
    >>> from rnnkern.training import Sequential, Embedding, Dense
    >>> model = Sequential(Embedding(50, 8, seed=0), rk.LSTM(8, 16, seed=1), Dense(16, 50, seed=2))
    >>> logits, states, tape = model.forward(np.zeros((7, 2), np.int64))
    >>> dx, dstates0, grads = model.backward(np.ones_like(logits), tape)
    """

    def __init__(self, *layers):
        if not layers:
            raise ValueError("layers: expected at least one layer, got none")
        for k, layer in enumerate(layers):
            if not (isinstance(layer, RecurrentLayer) or
                    all(hasattr(layer, m) for m in ("forward", "backward", "parameters",
                                                    "load_state_dict", "output_shape"))):
                raise TypeError(f"layers[{k}]: expected an rnnkern layer, got {describe(layer)}")
        self.layers = list(layers)

    @property
    def num_recurrent(self):
        """How many recurrent layers (entries of ``states``) the chain has."""
        return sum(isinstance(layer, RecurrentLayer) for layer in self.layers)

    def parameters(self):
        """Flat dict ``"{index}.{name}" -> array`` of the layers' own arrays.

        An optimizer updating these arrays in place updates the layers.
        """
        return {f"{k}.{name}": p for k, layer in enumerate(self.layers)
                for name, p in layer.parameters().items()}

    def state_dict(self):
        """Copies of all parameters, named as in ``parameters()``."""
        return {f"{k}.{name}": p for k, layer in enumerate(self.layers)
                for name, p in layer.state_dict().items()}

    def load_state_dict(self, state_dict):
        """Load all parameters; every key and shape is checked before any layer changes."""
        check_state_dict(self.parameters(), state_dict)
        for k, layer in enumerate(self.layers):
            prefix = f"{k}."
            layer.load_state_dict({name[len(prefix):]: value for name, value in state_dict.items()
                                   if name.startswith(prefix)})

    def train(self, mode=True):
        """Training mode for every layer that has one (dropout between recurrent layers); returns self."""
        for layer in self.layers:
            if hasattr(layer, "train"):
                layer.train(mode)
        return self

    def eval(self):
        """Evaluation mode for every layer that has one; returns self."""
        return self.train(False)

    def to(self, device):
        """Move every layer to ``device``; returns self."""
        check_device(device)
        for layer in self.layers:
            layer.to(device)
        return self

    def __call__(self, x, states=None, lengths=None):
        """Run the chain for inference (no tapes): return ``(y, states)``.

        As ``forward`` without the tape, as ``y, state = layer(x, state)`` is for a
        recurrent layer (dropout still follows ``train()``/``eval()``, as in torch);
        what a generation loop calls once a step.  A layer of the user's own without
        ``__call__`` runs its ``forward`` and drops the tape.
        """
        states = self._checked_states(states, "states")
        new_states = []
        for layer in self.layers:
            if isinstance(layer, RecurrentLayer):
                x, state = layer(x, states[len(new_states)], lengths)
                new_states.append(state)
            else:
                x = layer(x) if callable(layer) else layer.forward(x)[0]
        return x, new_states

    def forward(self, x, states=None, lengths=None):
        """Run the chain; return ``(y, states, tape)``.

        Parameters
        ----------
        x : array
            Input of the first layer.
        states : list or None
            One initial state per recurrent layer (``None`` entries or
            ``states=None`` for zeros).
        lengths : sequence of int or integer array, optional
            Passed to every recurrent layer (packed-sequence semantics).
        """
        states = self._checked_states(states, "states")
        new_states, tapes = [], []
        k_state = 0
        for layer in self.layers:
            if isinstance(layer, RecurrentLayer):
                x, state, tape = layer.forward(x, states[k_state], lengths)
                new_states.append(state)
                k_state += 1
            else:
                x, tape = layer.forward(x)
            tapes.append(tape)
        return x, new_states, Tape(self, tapes)

    def backward(self, dy, tape, dstates=None):
        """Backpropagate through the chain.

        Returns
        -------
        dx : array or None
            Gradient with respect to ``x`` (None if the first layer takes ids).
        dstates0 : list
            Gradient with respect to each recurrent layer's initial state.
        grads : dict
            One gradient per parameter, named as in ``parameters()``.
        """
        check_tape(tape, self)
        dstates = self._checked_states(dstates, "dstates")
        grads, dstates0 = {}, []
        k_state = self.num_recurrent
        for k in reversed(range(len(self.layers))):
            layer = self.layers[k]
            if isinstance(layer, RecurrentLayer):
                k_state -= 1
                dy, dstate0, layer_grads = layer.backward(dy, tape.saved[k], dstates[k_state])
                dstates0.append(dstate0)
            else:
                dy, layer_grads = layer.backward(dy, tape.saved[k])
            grads.update({f"{k}.{name}": g for name, g in layer_grads.items()})
        order = self.parameters()
        return dy, dstates0[::-1], {name: grads[name] for name in order}

    def _checked_states(self, states, name):
        n = self.num_recurrent
        if states is None:
            return [None] * n
        if not isinstance(states, (list, tuple)) or len(states) != n:
            raise TypeError(f"{name}: expected a list of {n} states (one per recurrent layer) "
                            f"or None, got {describe(states)}")
        return list(states)

    def summary(self, input_shape, print_fn=print):
        """Print a Keras-style table of each layer's output shape and parameter count.

        Parameters
        ----------
        input_shape : tuple
            Shape of ``x``; ``None`` marks a free axis (the batch, say).
        print_fn : callable
            Called with the table text (default ``print``).

        Returns
        -------
        str
            The table.
        """
        rows, shape = [], tuple(input_shape)
        for k, layer in enumerate(self.layers):
            shape = (_recurrent_output_shape(layer, shape) if isinstance(layer, RecurrentLayer)
                     else layer.output_shape(shape))
            count = sum(math.prod(p.shape) for p in layer.parameters().values())
            rows.append((f"{k} ({type(layer).__name__})", _format_shape(shape), f"{count:,}"))
        total = sum(math.prod(p.shape) for p in self.parameters().values())
        notes = (["Recurrent layers keep torch's two biases (bias_ih, bias_hh); Keras's "
                  "SimpleRNN and LSTM keep one, G*H fewer per layer-direction."]
                 if any(isinstance(layer, RecurrentLayer) and layer.bias for layer in self.layers)
                 else [])
        width = (28, 26, 12)
        line = lambda cells: "".join(str(c).ljust(w) for c, w in zip(cells, width)).rstrip()
        rule = "=" * sum(width)
        text = "\n".join(["Model: Sequential", "_" * sum(width),
                          line(("Layer (type)", "Output Shape", "Param #")), rule,
                          *(line(r) for r in rows), rule,
                          f"Total params: {total:,}", f"Trainable params: {total:,}",
                          "Non-trainable params: 0", "_" * sum(width), *notes])
        print_fn(text)
        return text

    def __repr__(self):
        inner = "".join(f"\n  ({k}): {layer!r}" for k, layer in enumerate(self.layers))
        return f"Sequential({inner}\n)"


def _recurrent_output_shape(layer, input_shape):
    """``y``'s shape for a recurrent layer: the last axis becomes ``D * H``."""
    if len(input_shape) not in (2, 3) or input_shape[-1] not in (None, layer.input_size):
        raise ValueError(f"input_shape: {type(layer).__name__} expects (..., {layer.input_size}), "
                         f"got {input_shape}")
    return tuple(input_shape)[:-1] + (layer.output_size,)


def _format_shape(shape):
    return "(" + ", ".join("None" if s is None else str(s) for s in shape) + \
        ("," if len(shape) == 1 else "") + ")"


def _rng(name, seed):
    return np.random.default_rng(v.check_seed(name, seed))


def _check_token_ids(name, xp, ids, vocabulary_size):
    """Integer dtype and every id in ``[0, vocabulary_size)``."""
    if "int" not in v.dtype_name(ids.dtype):
        raise TypeError(f"{name}: expected an integer array of token ids, got {describe(ids)}")
    if ids.ndim == 0 or any(s == 0 for s in ids.shape):
        raise ValueError(f"{name}: expected a non-empty array with at least one axis, "
                         f"got {describe(ids)}")
    low, high = int(xp.min(ids)), int(xp.max(ids))
    if low < 0 or high >= vocabulary_size:
        raise ValueError(f"{name}: expected ids in [0, {vocabulary_size}), "
                         f"got values from {low} to {high}")
