"""Recurrent layers with PyTorch's semantics: ``RNN``, ``LSTM``, ``GRU``.

Model code only: the layers stack directions and layers, handle
``batch_first``, unbatched input, initial states and ``lengths`` with
array-API calls, and hand every (layer, direction) to the backend chosen by
the array types (``rnnkern.backends``).  They never name a backend.

Shapes (``D = 2`` if bidirectional else 1, ``L = num_layers``)::

    x       (T, B, I)      or (B, T, I) with batch_first, or (T, I) unbatched
    h0, c0  (L*D, B, H)    or (L*D, H) unbatched
    y       (T, B, D*H)    the last layer's outputs, [forward, backward] on the last axis
    h_n     (L*D, B, H)    state after each sequence's own last element

Parameters are named and shaped as in ``torch.nn``: ``weight_ih_l{k}``
``(G*H, I_k)``, ``weight_hh_l{k}`` ``(G*H, H)``, ``bias_ih_l{k}``,
``bias_hh_l{k}`` ``(G*H,)``, with the suffix ``_reverse`` for the backward
direction, and initialised from U(-1/sqrt(H), 1/sqrt(H)).
"""

from __future__ import annotations

import math

import array_api_compat
import numpy as np

from . import validation as v
from .backends import backend_for
from .cells import cell_for
from .dispatch import describe, namespace_of
from .parameters import ParameterLayer, check_device

__all__ = ["RNN", "LSTM", "GRU", "Tape"]


class Tape:
    """What ``forward`` keeps for ``backward``: opaque to users.

    A tape belongs to the layer that recorded it and to the parameter values
    of that moment; ``backward`` refuses any other.
    """

    __slots__ = ("owner", "version", "backend", "saved", "y_shape", "dtype",
                 "batch", "unbatched")

    def __init__(self, owner, version, backend, saved, y_shape, dtype, batch, unbatched):
        self.owner, self.version, self.backend = owner, version, backend
        self.saved, self.y_shape, self.dtype = saved, y_shape, dtype
        self.batch, self.unbatched = batch, unbatched

    def __repr__(self):
        return f"<rnnkern.Tape of {type(self.owner).__name__}, y {self.y_shape} {self.dtype}>"


class _RecurrentLayer(ParameterLayer):
    """Shared implementation of ``RNN``, ``LSTM`` and ``GRU``."""

    def __init__(self, cell_name, input_size, hidden_size, num_layers, *, bias,
                 batch_first, dropout, bidirectional, dtype, device, seed):
        self.cell = cell_for(cell_name)
        self.input_size = v.check_positive_int("input_size", input_size)
        self.hidden_size = v.check_positive_int("hidden_size", hidden_size)
        self.num_layers = v.check_positive_int("num_layers", num_layers)
        self.bias = v.check_bool("bias", bias)
        self.batch_first = v.check_bool("batch_first", batch_first)
        self.bidirectional = v.check_bool("bidirectional", bidirectional)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or dropout != 0:
            raise ValueError(f"dropout: only 0 is supported (no dropout between layers), "
                             f"got {dropout!r}")
        self.dropout = 0.0
        dtype = v.check_float_dtype("dtype", dtype)
        check_device(device)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise TypeError(f"seed: expected an integer or None, got {seed!r}")
        self.num_directions = 2 if self.bidirectional else 1
        self._init_parameters(self._initial_parameters(np.random.default_rng(seed)), dtype, device)

    # ------------------------------------------------------------------ parameters

    def _directions(self):
        """(index k, layer, reverse, name suffix) for every layer-direction."""
        for layer in range(self.num_layers):
            for d in range(self.num_directions):
                suffix = f"_l{layer}" + ("_reverse" if d else "")
                yield layer * self.num_directions + d, layer, bool(d), suffix

    def _parameter_shapes(self):
        shapes = {}
        for _, layer, _, suffix in self._directions():
            in_size = self.input_size if layer == 0 else self.hidden_size * self.num_directions
            for kind, shape in self.cell.parameter_shapes(in_size, self.hidden_size).items():
                if self.bias or kind.startswith("weight"):
                    shapes[kind + suffix] = shape
        return shapes

    def _initial_parameters(self, rng):
        """torch's initialisation: every parameter from U(-1/sqrt(H), 1/sqrt(H))."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        return {name: rng.uniform(-bound, bound, size=shape)
                for name, shape in self._parameter_shapes().items()}

    def __call__(self, x, state=None, lengths=None):
        """``y, state = layer(x, state)`` as with ``torch.nn``."""
        y, state, _ = self._run(x, state, lengths, keep_parameters=False)
        return y, state

    def forward(self, x, state=None, lengths=None):
        """Run the layer; return ``(y, state, tape)``.

        Parameters
        ----------
        x : array
            ``(T, B, I)``, ``(B, T, I)`` if ``batch_first``, or ``(T, I)``.
        state : array or (array, array) or None
            ``h0`` (``(h0, c0)`` for the LSTM), ``(L*D, B, H)``; zeros if None.
        lengths : sequence of int or integer array, optional
            Length of each sequence, ``1 <= lengths[b] <= T``: packed-sequence
            semantics (zeros in ``y`` past each length, states from each
            sequence's own last element).

        The tape keeps copies of the parameters it ran with, so its gradients
        stay right even if an optimizer updates the parameters in place
        before ``backward``.
        """
        return self._run(x, state, lengths, keep_parameters=True)

    def _run(self, x, state, lengths, keep_parameters):
        h0, c0 = self._split_state(state, "state")
        xp = namespace_of(x, h0, c0, names=["x", "state h0", "state c0"])
        backend = backend_for(xp)
        params = self._parameters_for(xp)
        if keep_parameters:
            params = {name: xp.asarray(p, copy=True) for name, p in params.items()}
        v.check_array("x", x, (2, 3), self.dtype, (None,) * (x.ndim - 1) + (self.input_size,))
        unbatched = x.ndim == 2
        if unbatched:
            x = xp.reshape(x, (x.shape[0], 1, x.shape[1]))
        elif self.batch_first:
            x = xp.permute_dims(x, (1, 0, 2))
        T, B, _ = x.shape
        h0 = self._initial_state(xp, h0, "state h0" if self.cell.has_cell_state else "state", B, unbatched)
        c0 = (self._initial_state(xp, c0, "state c0", B, unbatched)
              if self.cell.has_cell_state else None)
        if lengths is not None:
            if unbatched:
                raise ValueError("lengths: not accepted with unbatched (2-D) input")
            lengths = xp.asarray(v.host_lengths(lengths, B, T, xp), dtype=xp.int32,
                                 device=array_api_compat.device(x))

        zeros = None if self.bias else xp.zeros((self.cell.num_gates * self.hidden_size,),
                                                dtype=x.dtype, device=array_api_compat.device(x))
        saved, h_n, c_n = {}, [], []
        inputs = x
        for layer in range(self.num_layers):
            outputs = []
            for k, _, reverse, suffix in self._directions_of(layer):
                y, h, c, saved[k] = backend.forward_direction(
                    self.cell, inputs, params["weight_ih" + suffix], params["weight_hh" + suffix],
                    params.get("bias_ih" + suffix, zeros), params.get("bias_hh" + suffix, zeros),
                    h0[k, ...], None if c0 is None else c0[k, ...], lengths, reverse)
                outputs.append(y)
                h_n.append(h)
                c_n.append(c)
            inputs = outputs[0] if len(outputs) == 1 else xp.concat(outputs, axis=-1)

        y = self._to_user_layout(xp, inputs, unbatched)
        h_n = self._state_out(xp, h_n, unbatched)
        state = (h_n, self._state_out(xp, c_n, unbatched)) if self.cell.has_cell_state else h_n
        tape = Tape(self, self._version, backend, saved, tuple(y.shape), self.dtype, B, unbatched)
        return y, state, tape

    def _directions_of(self, layer):
        return [entry for entry in self._directions() if entry[1] == layer]

    def _split_state(self, state, name):
        if not self.cell.has_cell_state:
            if isinstance(state, (tuple, list)):
                raise TypeError(f"{name}: expected one array h for {type(self).__name__}, got a {type(state).__name__}")
            return state, None
        if state is None:
            return None, None
        if not isinstance(state, (tuple, list)) or len(state) != 2:
            raise TypeError(f"{name}: expected a pair (h, c) for LSTM, got {describe(state)}")
        if (state[0] is None) != (state[1] is None):
            raise ValueError(f"{name}: give both h and c, or neither")
        return state[0], state[1]

    def _state_shape(self, batch, unbatched):
        lead = self.num_layers * self.num_directions
        return (lead, self.hidden_size) if unbatched else (lead, batch, self.hidden_size)

    def _initial_state(self, xp, h, name, batch, unbatched):
        shape = self._state_shape(batch, unbatched)
        if h is None:
            return xp.zeros((shape[0], batch, self.hidden_size), dtype=getattr(xp, self.dtype),
                            device=self._device_of(xp))
        v.check_array(name, h, len(shape), self.dtype, shape)
        return xp.reshape(h, (shape[0], batch, self.hidden_size))

    def _state_out(self, xp, states, unbatched):
        s = xp.stack(states, axis=0)
        return s[:, 0, :] if unbatched else s

    def _to_user_layout(self, xp, y, unbatched):
        """(T, B, F) -> the layout of the user's x."""
        if unbatched:
            return y[:, 0, :]
        return xp.permute_dims(y, (1, 0, 2)) if self.batch_first else y

    def _from_user_layout(self, xp, y, unbatched):
        if unbatched:
            return xp.reshape(y, (y.shape[0], 1, y.shape[1]))
        return xp.permute_dims(y, (1, 0, 2)) if self.batch_first else y

    # ------------------------------------------------------------------ backward

    def backward(self, dy, tape, dstate=None):
        """Backpropagate through time.

        Parameters
        ----------
        dy : array
            Gradient of the loss with respect to ``y`` (same shape as ``y``).
        tape : Tape
            What ``forward`` returned with that ``y``.
        dstate : array or (array, array) or None
            Gradient with respect to the returned state (``dh_n`` or
            ``(dh_n, dc_n)``); None means zeros.

        Returns
        -------
        dx : array
            Gradient with respect to ``x`` (same shape as ``x``).
        dstate0 : array or (array, array)
            Gradient with respect to the initial state.
        grads : dict
            One gradient per parameter, under its ``state_dict`` name.
        """
        if not isinstance(tape, Tape):
            raise TypeError(f"tape: expected the Tape returned by this layer's forward, got {describe(tape)}")
        if tape.owner is not self:
            raise ValueError("tape: it was recorded by another layer; pass the tape from this layer's forward")
        if tape.version != self._version:
            raise ValueError("tape: the parameters changed (load_state_dict or to) since it was "
                             "recorded; run forward again")
        dh_n, dc_n = self._split_state(dstate, "dstate")
        xp = namespace_of(dy, dh_n, dc_n, names=["dy", "dstate h", "dstate c"])
        if backend_for(xp) is not tape.backend:
            raise TypeError(f"dy: expected an array of the library the tape was recorded with "
                            f"({tape.backend.__name__.rsplit('.', 1)[-1]}), got {describe(dy)}")
        v.check_array("dy", dy, len(tape.y_shape), self.dtype, tape.y_shape)
        B, unbatched = tape.batch, tape.unbatched
        dh_n = self._initial_state(xp, dh_n, "dstate h" if self.cell.has_cell_state else "dstate",
                                   B, unbatched)
        dc_n = (self._initial_state(xp, dc_n, "dstate c", B, unbatched)
                if self.cell.has_cell_state else None)

        H = self.hidden_size
        dy = self._from_user_layout(xp, dy, unbatched)
        grads, dh0, dc0 = {}, {}, {}
        for layer in reversed(range(self.num_layers)):
            dinputs = None
            for k, _, _, suffix in self._directions_of(layer):
                d = k - layer * self.num_directions
                dy_d = dy if self.num_directions == 1 else dy[..., d * H:(d + 1) * H]
                dx, dh0[k], dc0[k], dw_ih, dw_hh, db_ih, db_hh = tape.backend.backward_direction(
                    self.cell, dy_d, dh_n[k, ...], None if dc_n is None else dc_n[k, ...],
                    tape.saved[k])
                grads["weight_ih" + suffix], grads["weight_hh" + suffix] = dw_ih, dw_hh
                if self.bias:
                    grads["bias_ih" + suffix], grads["bias_hh" + suffix] = db_ih, db_hh
                dinputs = dx if dinputs is None else dinputs + dx
            dy = dinputs

        order = sorted(dh0)
        dh0 = self._state_out(xp, [dh0[k] for k in order], unbatched)
        dstate0 = ((dh0, self._state_out(xp, [dc0[k] for k in order], unbatched))
                   if self.cell.has_cell_state else dh0)
        grads = {name: grads[name] for name in self._params}     # state_dict order
        return self._to_user_layout(xp, dy, unbatched), dstate0, grads

    def __repr__(self):
        extra = "" if self.cell.name not in ("rnn_tanh", "rnn_relu") else \
            f", nonlinearity={self.cell.name[4:]!r}"
        return (f"{type(self).__name__}({self.input_size}, {self.hidden_size}, "
                f"num_layers={self.num_layers}{extra}, bias={self.bias}, "
                f"batch_first={self.batch_first}, bidirectional={self.bidirectional}, "
                f"dtype={self.dtype!r}, device={self.device!r})")


class RNN(_RecurrentLayer):
    r"""Elman RNN, as ``torch.nn.RNN``.

    .. math:: h_t = \phi(x_t W_{ih}^T + b_{ih} + h_{t-1} W_{hh}^T + b_{hh}),
              \quad \phi = \tanh \text{ or } \mathrm{relu}
    """

    def __init__(self, input_size, hidden_size, num_layers=1, *, nonlinearity="tanh",
                 bias=True, batch_first=False, dropout=0.0, bidirectional=False,
                 dtype="float32", device="cpu", seed=None):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity: expected 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        super().__init__(f"rnn_{nonlinearity}", input_size, hidden_size, num_layers, bias=bias,
                         batch_first=batch_first, dropout=dropout, bidirectional=bidirectional,
                         dtype=dtype, device=device, seed=seed)


class LSTM(_RecurrentLayer):
    r"""Long short-term memory, as ``torch.nn.LSTM`` (gate order i, f, g, o).

    .. math::
        i, f, o = \sigma(\cdot),\ g = \tanh(\cdot)
            \text{ of } x_t W_{ih}^T + b_{ih} + h_{t-1} W_{hh}^T + b_{hh} \\
        c_t = f \odot c_{t-1} + i \odot g, \qquad h_t = o \odot \tanh(c_t)
    """

    def __init__(self, input_size, hidden_size, num_layers=1, *, bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, proj_size=0,
                 dtype="float32", device="cpu", seed=None):
        if proj_size != 0:
            raise ValueError(f"proj_size: only 0 is supported (no projection), got {proj_size!r}")
        super().__init__("lstm", input_size, hidden_size, num_layers, bias=bias,
                         batch_first=batch_first, dropout=dropout, bidirectional=bidirectional,
                         dtype=dtype, device=device, seed=seed)


class GRU(_RecurrentLayer):
    r"""Gated recurrent unit, as ``torch.nn.GRU`` (gate order r, z, n; cuDNN form).

    .. math::
        r = \sigma(x W_{ir}^T + b_{ir} + h W_{hr}^T + b_{hr}), \quad
        z = \sigma(x W_{iz}^T + b_{iz} + h W_{hz}^T + b_{hz}) \\
        n = \tanh(x W_{in}^T + b_{in} + r \odot (h W_{hn}^T + b_{hn})), \quad
        h_t = (1 - z) \odot n + z \odot h_{t-1}
    """

    def __init__(self, input_size, hidden_size, num_layers=1, *, bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False,
                 dtype="float32", device="cpu", seed=None):
        super().__init__("gru", input_size, hidden_size, num_layers, bias=bias,
                         batch_first=batch_first, dropout=dropout, bidirectional=bidirectional,
                         dtype=dtype, device=device, seed=seed)
