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
import warnings

import array_api_compat
import numpy as np

from . import validation as v
from .backends import backend_for
from .cells import cell_for, cells_of_layer
from .devices import check_device, on_device_of_arguments
from .dispatch import namespace_of
from .parameters import ParameterLayer
from .tape import Tape, check_tape
from .validation import describe

__all__ = ["RegistryCellMixin", "RecurrentLayer", "RNN", "LSTM", "GRU"]


def _spoken(names):
    """("h", "c") -> "h and c"."""
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


class RegistryCellMixin:
    """What the layers and the single-step cells share about their registry cell.

    The meaning of the state arguments (one array per ``Cell.state_names``)
    and the parameters of one layer-direction.  Needs ``self.cell``,
    ``self.hidden_size``, ``self.proj_size`` and ``self._parameter_shapes()``.
    """

    def _initial_parameters(self, rng):
        """torch's initialisation: every parameter from U(-1/sqrt(H), 1/sqrt(H))."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        return {name: rng.uniform(-bound, bound, size=shape)
                for name, shape in self._parameter_shapes().items()}

    def _direction_parameters(self, xp, params, suffix, like):
        """One layer-direction's parameters by registry name; zero biases without bias.

        Built once per :class:`~rnnkern.parameters.TapeParameters` (its
        ``directions``), so that its copy on write reaches the dicts tapes hold.
        """
        directions = getattr(params, "directions", None)
        if directions is not None and suffix in directions:
            return directions[suffix]
        out = {}
        for p in self.cell.parameters:
            key = p.name + suffix
            if key in params:
                out[p.name] = params[key]
            elif p.is_bias:        # bias=False: the kernels add a zero bias
                sizes = self.cell.sizes(0, self.hidden_size, self.proj_size)
                out[p.name] = xp.zeros(p.shape_for(sizes), dtype=like.dtype,
                                       device=array_api_compat.device(like))
        if directions is not None:
            directions[suffix] = out
        return out

    def _state_argument_names(self, prefix, index=""):
        """Names of the state arguments in messages: "state" or "state h0", "state c0"."""
        names = self.cell.state_names
        return [prefix] if len(names) == 1 else [f"{prefix} {n}{index}" for n in names]

    def _split_state(self, state, name):
        """The user's state argument as a tuple with one entry per state (None: zeros)."""
        names = self.cell.state_names
        if len(names) == 1:
            if isinstance(state, (tuple, list)):
                raise TypeError(f"{name}: expected one array h for {type(self).__name__}, "
                                f"got a {type(state).__name__}")
            return (state,)
        if state is None:
            return (None,) * len(names)
        if not isinstance(state, (tuple, list)) or len(state) != len(names):
            kind = "a pair" if len(names) == 2 else f"a tuple of {len(names)}"
            raise TypeError(f"{name}: expected {kind} ({', '.join(names)}) for "
                            f"{type(self).__name__}, got {describe(state)}")
        if any(s is None for s in state) and not all(s is None for s in state):
            raise ValueError(f"{name}: give {'both' if len(names) == 2 else 'all of'} "
                             f"{_spoken(names)}, or {'neither' if len(names) == 2 else 'none'}")
        return tuple(state)

    def _join_state(self, states):
        """The tuple of states in the user's form: ``h`` alone, or the tuple."""
        return states[0] if len(states) == 1 else tuple(states)


class RecurrentLayer(RegistryCellMixin, ParameterLayer):
    """Shared implementation of ``RNN``, ``LSTM`` and ``GRU``: any registry cell."""

    def __init__(self, cell_name, input_size, hidden_size, num_layers, *, bias,
                 batch_first, dropout, bidirectional, proj_size, dtype, device, seed):
        self.cell = cell_for(cell_name)
        self.input_size = v.check_positive_int("input_size", input_size)
        self.hidden_size = v.check_positive_int("hidden_size", hidden_size)
        self.num_layers = v.check_positive_int("num_layers", num_layers)
        self.bias = v.check_bool("bias", bias)
        self.batch_first = v.check_bool("batch_first", batch_first)
        self.bidirectional = v.check_bool("bidirectional", bidirectional)
        self.proj_size = self._checked_proj_size(proj_size)
        self.dropout = v.check_probability("dropout", dropout)
        if self.dropout > 0 and self.num_layers == 1:
            warnings.warn(f"dropout: {self.dropout} applies between layers, and this "
                          f"{type(self).__name__} has num_layers=1 (as torch warns too)",
                          UserWarning, stacklevel=3)
        self.training = True          # torch's default mode; see train() and eval()
        dtype = v.check_float_dtype("dtype", dtype)
        check_device(device)
        v.check_seed("seed", seed)
        self.num_directions = 2 if self.bidirectional else 1
        # The dropout masks come from a stream of their own, so that a seeded
        # layer draws the same masks whatever the initialisation consumed.
        self._dropout_rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0])
        self._init_parameters(self._initial_parameters(np.random.default_rng(seed)), dtype, device)

    def _checked_proj_size(self, proj_size):
        if isinstance(proj_size, bool) or not isinstance(proj_size, (int, np.integer)):
            raise TypeError(f"proj_size: expected an integer >= 0, got {proj_size!r}")
        if proj_size == 0:
            return 0
        if not self.cell.has_projection:
            raise ValueError(f"proj_size: only a cell with a projection (LSTM) takes one; "
                             f"{type(self).__name__} got proj_size={proj_size}")
        if not 0 < proj_size < self.hidden_size:
            raise ValueError(f"proj_size: expected 0 (none) or an integer in [1, hidden_size) = "
                             f"[1, {self.hidden_size}), got {proj_size}")
        return int(proj_size)

    @property
    def output_size(self):
        """Width of ``y``'s last axis: ``D * P`` (``P`` = ``proj_size`` or ``hidden_size``)."""
        return self.num_directions * (self.proj_size or self.hidden_size)

    # ------------------------------------------------------------------ mode

    def train(self, mode=True):
        """Training mode (torch's default): dropout between layers is applied; returns self."""
        self.training = v.check_bool("mode", mode)
        return self

    def eval(self):
        """Evaluation mode: no dropout; returns self."""
        return self.train(False)

    # ------------------------------------------------------------------ parameters

    def _directions(self):
        """(index k, layer, reverse, name suffix) for every layer-direction."""
        for layer in range(self.num_layers):
            for d in range(self.num_directions):
                suffix = f"_l{layer}" + ("_reverse" if d else "")
                yield layer * self.num_directions + d, layer, bool(d), suffix

    def _directions_of(self, layer):
        return [entry for entry in self._directions() if entry[1] == layer]

    def _parameter_shapes(self):
        shapes = {}
        for _, layer, _, suffix in self._directions():
            in_size = self.input_size if layer == 0 else self.output_size
            for name, shape in self.cell.parameter_shapes(in_size, self.hidden_size, self.bias,
                                                          self.proj_size).items():
                shapes[name + suffix] = shape
        return shapes

    # ------------------------------------------------------------------ forward

    def __call__(self, x, state=None, lengths=None):
        """``y, state = layer(x, state)`` as with ``torch.nn``: inference, no tape is kept."""
        y, state, _ = self._run(x, state, lengths, keep=False)
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

        The tape keeps the parameter values it ran with, so its gradients stay
        right even if an optimizer updates ``parameters()`` in place before
        ``backward``.  They are shared, not copied: the arrays are read-only
        while a tape holds them and ``parameters()`` has not been called since
        (``rnnkern.parameters.TapeParameters``).
        """
        return self._run(x, state, lengths, keep=True)

    @on_device_of_arguments      # CuPy: allocate on the arrays' device
    def _run(self, x, state, lengths, keep):
        state0 = self._split_state(state, "state")
        xp = namespace_of(x, *state0, names=["x", *self._state_argument_names("state", "0")])
        backend = backend_for(xp)
        params = self._parameters_for(xp, for_tape=keep)
        v.check_array("x", x, (2, 3), self.dtype, (None,) * (x.ndim - 1) + (self.input_size,))
        unbatched = x.ndim == 2
        if unbatched:
            x = xp.reshape(x, (x.shape[0], 1, x.shape[1]))
        elif self.batch_first:
            x = xp.permute_dims(x, (1, 0, 2))
        T, B, _ = x.shape
        state0 = tuple(self._initial_state(xp, s, name, width, B, unbatched)
                       for s, name, width in zip(state0, self._state_argument_names("state", "0"),
                                                 self._state_widths()))
        if lengths is not None:
            if unbatched:
                raise ValueError("lengths: not accepted with unbatched (2-D) input")
            lengths = xp.asarray(v.host_lengths(lengths, B, T, xp), dtype=xp.int32,
                                 device=array_api_compat.device(x))

        saved, state_n, masks = {}, [], {}
        inputs = x
        for layer in range(self.num_layers):
            outputs = []
            for k, _, reverse, suffix in self._directions_of(layer):
                y, state_k, saved[k] = backend.forward_direction(
                    self.cell, inputs, self._direction_parameters(xp, params, suffix, x),
                    tuple(s[k, ...] for s in state0), lengths, reverse, keep=keep)
                outputs.append(y)
                state_n.append(state_k)
            inputs = outputs[0] if len(outputs) == 1 else xp.concat(outputs, axis=-1)
            if self.training and self.dropout > 0 and layer < self.num_layers - 1:
                masks[layer] = self._dropout_mask(xp, inputs)
                inputs = inputs * masks[layer]

        y = self._to_user_layout(xp, inputs, unbatched)
        state = self._state_out(xp, state_n, unbatched)
        tape = Tape(self, saved, self._version, backend=backend, y_shape=tuple(y.shape),
                    batch=B, unbatched=unbatched, dropout_masks=masks,
                    parameters=params) if keep else None       # alive while the tape is
        return y, state, tape

    def _dropout_mask(self, xp, like):
        r"""Inverted dropout, as torch: each element kept with probability ``1 - p``.

        .. math:: \mathrm{mask} = \frac{[u \geq p]}{1 - p}, \quad u \sim U[0, 1)

        drawn on the host from the layer's own seeded generator (the same
        masks on every backend), then moved to the arrays' device.
        """
        keep = self._dropout_rng.random(tuple(like.shape)) >= self.dropout
        mask = keep.astype(self.dtype) / np.asarray(1.0 - self.dropout, dtype=self.dtype)
        return xp.asarray(mask, device=array_api_compat.device(like))

    # ------------------------------------------------------------------ states

    def _state_widths(self):
        """Width of each state (``h``: ``proj_size`` or ``H``; ``c``: ``H``)."""
        return self.cell.state_shapes(self.hidden_size, self.proj_size)

    def _initial_state(self, xp, h, name, width, batch, unbatched):
        """A state argument as ``(L*D, B, width)`` (zeros for None), checked."""
        lead = self.num_layers * self.num_directions
        shape = (lead, width) if unbatched else (lead, batch, width)
        if h is None:
            return xp.zeros((lead, batch, width), dtype=getattr(xp, self.dtype),
                            device=self._device_of(xp))
        v.check_array(name, h, len(shape), self.dtype, shape)
        return xp.reshape(h, (lead, batch, width))

    def _state_out(self, xp, per_direction, unbatched):
        """Stack per-direction state tuples into the user's ``(L*D, B, H)`` form."""
        stacked = []
        for k in range(self.cell.num_states):
            s = xp.stack([states[k] for states in per_direction], axis=0)
            stacked.append(s[:, 0, :] if unbatched else s)
        return self._join_state(stacked)

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

    @on_device_of_arguments      # CuPy: allocate on the arrays' device
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
        check_tape(tape, self)
        context = tape.context
        dstate_n = self._split_state(dstate, "dstate")
        names = self._state_argument_names("dstate")
        xp = namespace_of(dy, *dstate_n, names=["dy", *names])
        if backend_for(xp) is not context["backend"]:
            raise TypeError(f"dy: expected an array of the library the tape was recorded with "
                            f"({context['backend'].__name__.rsplit('.', 1)[-1]}), "
                            f"got {describe(dy)}")
        v.check_array("dy", dy, len(context["y_shape"]), self.dtype, context["y_shape"])
        B, unbatched = context["batch"], context["unbatched"]
        dstate_n = tuple(self._initial_state(xp, d, name, width, B, unbatched)
                         for d, name, width in zip(dstate_n, names, self._state_widths()))

        P = self.proj_size or self.hidden_size
        dy = self._from_user_layout(xp, dy, unbatched)
        grads, dstate0 = {}, {}
        masks = context["dropout_masks"]
        for layer in reversed(range(self.num_layers)):
            if layer in masks:                 # y = y_layer * mask
                dy = dy * masks[layer]
            dinputs = None
            for k, _, _, suffix in self._directions_of(layer):
                d = k - layer * self.num_directions
                dy_d = dy if self.num_directions == 1 else dy[..., d * P:(d + 1) * P]
                dx, dstate0[k], direction_grads = context["backend"].backward_direction(
                    self.cell, dy_d, tuple(s[k, ...] for s in dstate_n), tape.saved[k])
                for name, grad in direction_grads.items():
                    if name + suffix in self._params:      # no bias gradients without bias
                        grads[name + suffix] = grad
                dinputs = dx if dinputs is None else dinputs + dx
            dy = dinputs

        dstate0 = self._state_out(xp, [dstate0[k] for k in sorted(dstate0)], unbatched)
        grads = {name: grads[name] for name in self._params}     # state_dict order
        return self._to_user_layout(xp, dy, unbatched), dstate0, grads

    def to_torch(self):
        """The equivalent ``torch.nn`` module, weights copied (see ``rnnkern.to_torch``)."""
        from .interop import to_torch
        return to_torch(self)

    def __repr__(self):
        options = "".join(f", {k}={v!r}" for k, v in self.cell.layer_options.items())
        extra = "".join(f", {k}={getattr(self, k)!r}" for k in ("dropout", "proj_size")
                        if getattr(self, k))
        return (f"{type(self).__name__}({self.input_size}, {self.hidden_size}, "
                f"num_layers={self.num_layers}{options}, bias={self.bias}, "
                f"batch_first={self.batch_first}{extra}, bidirectional={self.bidirectional}, "
                f"dtype={self.dtype!r}, device={self.device!r})")


class RNN(RecurrentLayer):
    r"""Elman RNN, as ``torch.nn.RNN``.

    .. math:: h_t = \phi(x_t W_{ih}^T + b_{ih} + h_{t-1} W_{hh}^T + b_{hh}),
              \quad \phi = \tanh \text{ or } \mathrm{relu}
    """

    def __init__(self, input_size, hidden_size, num_layers=1, *, nonlinearity="tanh",
                 bias=True, batch_first=False, dropout=0.0, bidirectional=False, proj_size=0,
                 dtype="float32", device="cpu", seed=None):
        cells = {cell.layer_options["nonlinearity"]: cell.name for cell in cells_of_layer("RNN")}
        if nonlinearity not in cells:
            raise ValueError(f"nonlinearity: expected one of {sorted(cells)}, got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        super().__init__(cells[nonlinearity], input_size, hidden_size, num_layers, bias=bias,
                         batch_first=batch_first, dropout=dropout, bidirectional=bidirectional,
                         proj_size=proj_size, dtype=dtype, device=device, seed=seed)


class LSTM(RecurrentLayer):
    r"""Long short-term memory, as ``torch.nn.LSTM`` (gate order i, f, g, o).

    .. math::
        i, f, o = \sigma(\cdot),\ g = \tanh(\cdot)
            \text{ of } x_t W_{ih}^T + b_{ih} + h_{t-1} W_{hh}^T + b_{hh} \\
        c_t = f \odot c_{t-1} + i \odot g, \qquad h_t = o \odot \tanh(c_t)

    With ``proj_size = P > 0`` the output is projected, as in torch:
    :math:`h_t = W_{hr} (o \odot \tanh(c_t))` with ``weight_hr_l{k}`` of shape
    ``(P, H)``; ``h`` and ``y`` are then ``P`` wide (``c`` stays ``H``) and
    ``weight_hh_l{k}`` is ``(4H, P)``.
    """

    def __init__(self, input_size, hidden_size, num_layers=1, *, bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, proj_size=0,
                 dtype="float32", device="cpu", seed=None):
        super().__init__("lstm", input_size, hidden_size, num_layers, bias=bias,
                         batch_first=batch_first, dropout=dropout, bidirectional=bidirectional,
                         proj_size=proj_size, dtype=dtype, device=device, seed=seed)


class GRU(RecurrentLayer):
    r"""Gated recurrent unit, as ``torch.nn.GRU`` (gate order r, z, n; cuDNN form).

    .. math::
        r = \sigma(x W_{ir}^T + b_{ir} + h W_{hr}^T + b_{hr}), \quad
        z = \sigma(x W_{iz}^T + b_{iz} + h W_{hz}^T + b_{hz}) \\
        n = \tanh(x W_{in}^T + b_{in} + r \odot (h W_{hn}^T + b_{hn})), \quad
        h_t = (1 - z) \odot n + z \odot h_{t-1}
    """

    def __init__(self, input_size, hidden_size, num_layers=1, *, bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, proj_size=0,
                 dtype="float32", device="cpu", seed=None):
        super().__init__("gru", input_size, hidden_size, num_layers, bias=bias,
                         batch_first=batch_first, dropout=dropout, bidirectional=bidirectional,
                         proj_size=proj_size, dtype=dtype, device=device, seed=seed)

