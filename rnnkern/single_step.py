"""Single-step cells with PyTorch's semantics: ``RNNCell``, ``LSTMCell``, ``GRUCell``.

A cell advances one time step: ``h' = cell(x, h)`` (``(h', c') = cell(x, (h,
c))`` for the ``LSTMCell``), as ``torch.nn.RNNCell/LSTMCell/GRUCell``.  It runs
on the very kernels of the layers: one step is a layer-direction with
``T = 1``, handed to the backend the arrays select (``rnnkern.backends``)::

    forward   state', saved = step(cell, x, params, state, keep=...)
              forward_direction's for x[None] (state' is the answer, y[0] = h'), with
              what the calls share prepared once by the backend where it pays
    backward  dx, dstate, grads = backward_direction(cell, 0, dstate', saved)
              the gradient of h' comes in as the final state's gradient, so
              dy (the same h' seen as the output) is zero

Shapes::

    x          (B, I)   or (I,) unbatched
    h, c       (B, H)   or (H,) unbatched; zeros when the state is None

Parameters are named and shaped as in ``torch.nn``'s cells (no layer suffix):
``weight_ih`` ``(G*H, I)``, ``weight_hh`` ``(G*H, H)``, ``bias_ih``,
``bias_hh`` ``(G*H,)``, initialised from U(-1/sqrt(H), 1/sqrt(H)); a cell's
``state_dict`` loads into ``torch.nn.<Layer>Cell`` and back unchanged.

Which registry entry a class computes follows from the registry alone: the
entry whose ``Cell.layer`` is the class's ``layer`` and whose
``Cell.layer_options`` are the constructor's options (``nonlinearity``).
"""

from __future__ import annotations


import array_api_compat
import numpy as np

from . import validation as v
from .backends import backend_for
from .cells import cells_of_layer
from .devices import check_device, on_device_of_arguments
from .dispatch import namespace_of
from .parameters import ParameterLayer
from .recurrent import RegistryCellMixin
from .tape import Tape, check_tape
from .validation import describe

__all__ = ["RecurrentCell", "RNNCell", "LSTMCell", "GRUCell"]


#: The kinds of arguments whose checks a cell remembers (``RecurrentCell._remembered``).
_CHECKED_CALLS_KEPT = 16


def _registry_cell(layer, options):
    """The registry entry of ``layer`` whose ``layer_options`` equal ``options``."""
    cells = cells_of_layer(layer)
    for cell in cells:
        if cell.layer_options == options:
            return cell
    for key, value in options.items():
        allowed = sorted({c.layer_options[key] for c in cells if key in c.layer_options})
        if value not in allowed:
            raise ValueError(f"{key}: expected one of {allowed}, got {value!r}")
    raise ValueError(f"no {layer} cell in the registry has the options {options!r}")


class RecurrentCell(RegistryCellMixin, ParameterLayer):
    """One step of any registry cell: the shared code of ``RNNCell``, ``LSTMCell``, ``GRUCell``.

    Subclasses set ``layer`` (the registry's ``Cell.layer``) and pass the
    options that pick the entry (``nonlinearity`` for ``RNNCell``).

    Attributes
    ----------
    cell : rnnkern.cells.Cell
        The registry entry computed.
    input_size, hidden_size : int
    bias : bool
    dtype : str
    device : str
    """

    layer = None

    proj_size = 0               # torch's cells have no projection

    def __init__(self, input_size, hidden_size, bias=True, *, dtype="float32", device="cpu",
                 seed=None, **layer_options):
        self.cell = _registry_cell(self.layer, layer_options)
        self.input_size = v.check_positive_int("input_size", input_size)
        self.hidden_size = v.check_positive_int("hidden_size", hidden_size)
        self.bias = v.check_bool("bias", bias)
        dtype = v.check_float_dtype("dtype", dtype)
        check_device(device)
        v.check_seed("seed", seed)
        self._init_parameters(self._initial_parameters(np.random.default_rng(seed)), dtype, device)
        self._checked_calls = {}    # what _remembered keeps: checks by the arguments' kinds

    def __getstate__(self):
        state = super().__getstate__()
        del state["_checked_calls"]         # holds modules (the namespaces): not pickled
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._checked_calls = {}

    def _parameter_shapes(self):
        return self.cell.parameter_shapes(self.input_size, self.hidden_size, self.bias)

    # ------------------------------------------------------------------ forward

    def __call__(self, x, state=None):
        """``state' = cell(x, state)`` as with ``torch.nn``: inference, no tape is kept."""
        return self._step(x, state, keep=False)[0]

    def forward(self, x, state=None):
        """Run one step; return ``(state', tape)``.

        Parameters
        ----------
        x : array
            ``(B, I)``, or ``(I,)`` unbatched.
        state : array or (array, array) or None
            ``h`` (``(h, c)`` for the ``LSTMCell``), ``(B, H)`` or ``(H,)``
            unbatched; zeros if None.

        Returns
        -------
        state' : array or (array, array)
            ``h'`` (``(h', c')``), shaped as ``state``.
        tape : Tape
            For ``backward``.  It keeps the parameter values it ran with, so
            an optimizer may update ``parameters()`` in place before
            ``backward``; the arrays are read-only while a tape holds them and
            ``parameters()`` has not been called since (see
            ``rnnkern.parameters.TapeParameters``: shared, not copied).
        """
        return self._step(x, state, keep=True)

    @on_device_of_arguments      # CuPy: allocate on the arrays' device
    def _step(self, x, state, keep):
        states = self._split_state(state, "state")
        xp, batch, unbatched = self._checked_call(x, states)
        backend = backend_for(xp)
        params = self._parameters_for(xp, for_tape=keep)
        states = tuple(self._batched_state(xp, s, batch, unbatched, x) for s in states)
        if unbatched:
            x = xp.reshape(x, (1, self.input_size))
        state_n, saved = backend.step(self.cell, x, self._direction_parameters(xp, params, "", x),
                                      states, keep=keep)
        tape = Tape(self, saved, self._version, backend=backend, xp=xp, batch=batch,
                    unbatched=unbatched, x_shape=(self.input_size,) if unbatched else
                    (batch, self.input_size),
                    parameters=params) if keep else None        # params: alive with the tape
        return self._user_state(xp, state_n, unbatched), tape

    def _checked_call(self, x, states):
        """``(xp, batch, unbatched)`` of a call with ``x`` and ``states`` (None
        entries: zeros), or the error naming the argument."""
        def check():
            names = self._state_argument_names("state")
            xp = namespace_of(x, *states, names=["x", *names])
            v.check_array("x", x, (1, 2), self.dtype,
                          (None,) * (x.ndim - 1) + (self.input_size,))
            unbatched = x.ndim == 1
            batch = 1 if unbatched else x.shape[0]
            self._check_states(states, names, batch, unbatched)
            return xp, batch, unbatched
        return self._remembered("call", (x, *states), check)

    def _checked_gradients(self, dstate, context):
        """``(xp, dy)`` of a backward with ``dstate`` (None entries: zeros) through a tape of
        ``context``, ``dy`` the zero gradient of the step's output; or the error naming
        the argument."""
        batch, unbatched, backend = context["batch"], context["unbatched"], context["backend"]

        def check():
            names = self._state_argument_names("dstate")
            given = [(name, d) for name, d in zip(names, dstate) if d is not None]
            xp = context["xp"]
            if given:
                xp = namespace_of(*(d for _, d in given), names=[name for name, _ in given])
                if backend_for(xp) is not backend:
                    raise TypeError(f"{given[0][0]}: expected an array of the library the tape "
                                    f"was recorded with ({backend.__name__.rsplit('.', 1)[-1]}), "
                                    f"got {describe(given[0][1])}")
            self._check_states(dstate, names, batch, unbatched)
            device = (array_api_compat.device(given[0][1]) if given
                      else self._device_of(xp))
            return xp, xp.zeros((1, batch, self.hidden_size), dtype=getattr(xp, self.dtype),
                                device=device)
        return self._remembered(("backward", context["xp"], backend, batch, unbatched), dstate,
                                check)

    def _remembered(self, kind, arrays, check):
        """``check()``'s answer for a call of ``kind`` with ``arrays``, remembered.

        The checks follow from the arrays' types, shapes, dtypes and devices and
        the cell's dtype and device, so their answers are kept by those: a cell
        called once a time step checks each kind of arguments once.
        """
        try:
            signature = (kind, self.dtype, self.device) + tuple(
                None if a is None else (type(a), a.shape, a.dtype, a.device) for a in arrays)
            answer = self._checked_calls.get(signature)
        except (AttributeError, TypeError):     # not arrays, or nothing hashable to key by
            signature, answer = None, None
        if answer is None:
            answer = check()
            if signature is not None:
                if len(self._checked_calls) >= _CHECKED_CALLS_KEPT:
                    self._checked_calls.clear()
                self._checked_calls[signature] = answer
        return answer

    # ------------------------------------------------------------------ states

    def _check_states(self, states, names, batch, unbatched):
        """Each state argument given (None: zeros) is ``(B, H)``, or ``(H,)`` unbatched."""
        shape = (self.hidden_size,) if unbatched else (batch, self.hidden_size)
        for s, name in zip(states, names):
            if s is not None:
                v.check_array(name, s, len(shape), self.dtype, shape)

    def _batched_state(self, xp, s, batch, unbatched, like):
        """A checked state argument as ``(B, H)``; for None zeros on the device of ``like``."""
        if s is None:
            return xp.zeros((batch, self.hidden_size), dtype=getattr(xp, self.dtype),
                            device=array_api_compat.device(like))
        return xp.reshape(s, (1, self.hidden_size)) if unbatched else s

    def _user_state(self, xp, states, unbatched):
        """``(B, H)`` states -> the user's form (``(H,)`` unbatched; ``h`` or the tuple)."""
        return self._join_state([xp.reshape(s, (self.hidden_size,)) if unbatched else s
                                 for s in states])

    # ------------------------------------------------------------------ backward

    @on_device_of_arguments      # CuPy: allocate on the arrays' device
    def backward(self, dstate, tape):
        """Backpropagate through the step.

        Parameters
        ----------
        dstate : array or (array, array) or None
            Gradient of the loss with respect to the returned state: ``dh``,
            or the pair ``(dh, dc)`` for the ``LSTMCell``; None means zeros.
        tape : Tape
            What ``forward`` returned with that state.

        Returns
        -------
        dx : array
            Gradient with respect to ``x`` (same shape as ``x``).
        dstate0 : array or (array, array)
            Gradient with respect to the state entering the step.
        grads : dict
            One gradient per parameter, under its ``state_dict`` name.
        """
        check_tape(tape, self)
        context = tape.context
        dstate = self._split_state(dstate, "dstate")
        # dy: the zero gradient of h' seen as the step's output (backends never write inputs)
        xp, dy = self._checked_gradients(dstate, context)
        batch, unbatched, backend = context["batch"], context["unbatched"], context["backend"]
        dstate = tuple(self._batched_state(xp, d, batch, unbatched, dy) for d in dstate)
        dx, dstate0, grads = backend.backward_direction(self.cell, dy, dstate, tape.saved)
        grads = {name: grads[name] for name in self._params}    # none for biases without bias
        return (xp.reshape(dx, context["x_shape"]), self._user_state(xp, dstate0, unbatched),
                grads)

    def to_torch(self):
        """The equivalent ``torch.nn`` module, weights copied (see ``rnnkern.to_torch``)."""
        from .interop import to_torch
        return to_torch(self)

    def __repr__(self):
        options = "".join(f", {k}={v!r}" for k, v in self.cell.layer_options.items())
        return (f"{type(self).__name__}({self.input_size}, {self.hidden_size}, bias={self.bias}"
                f"{options}, dtype={self.dtype!r}, device={self.device!r})")


class RNNCell(RecurrentCell):
    r"""One step of an Elman RNN, as ``torch.nn.RNNCell``.

    .. math:: h' = \phi(x W_{ih}^T + b_{ih} + h W_{hh}^T + b_{hh}),
              \quad \phi = \tanh \text{ or } \mathrm{relu}

    Parameters
    ----------
    input_size, hidden_size : int
    bias : bool, default True
        Without bias, ``bias_ih`` and ``bias_hh`` do not exist.
    nonlinearity : {"tanh", "relu"}
    dtype : {"float32", "float64"}
    device : {"cpu", "cuda"}
    seed : int, optional
        Seed of the U(-1/sqrt(H), 1/sqrt(H)) initialisation.

    ``h = cell(x, h)``; ``h, tape = cell.forward(x, h)``;
    ``dx, dh0, grads = cell.backward(dh, tape)``.
    """

    layer = "RNN"

    def __init__(self, input_size, hidden_size, bias=True, nonlinearity="tanh", *,
                 dtype="float32", device="cpu", seed=None):
        super().__init__(input_size, hidden_size, bias, dtype=dtype, device=device, seed=seed,
                         nonlinearity=nonlinearity)
        self.nonlinearity = nonlinearity


class LSTMCell(RecurrentCell):
    r"""One step of a long short-term memory, as ``torch.nn.LSTMCell`` (gates i, f, g, o).

    .. math::
        i, f, o = \sigma(\cdot),\ g = \tanh(\cdot)
            \text{ of } x W_{ih}^T + b_{ih} + h W_{hh}^T + b_{hh} \\
        c' = f \odot c + i \odot g, \qquad h' = o \odot \tanh(c')

    Parameters as for :class:`RNNCell`, without ``nonlinearity``.

    ``(h, c) = cell(x, (h, c))``; ``(h, c), tape = cell.forward(x, (h, c))``;
    ``dx, (dh0, dc0), grads = cell.backward((dh, dc), tape)``.
    """

    layer = "LSTM"

    def __init__(self, input_size, hidden_size, bias=True, *, dtype="float32", device="cpu",
                 seed=None):
        super().__init__(input_size, hidden_size, bias, dtype=dtype, device=device, seed=seed)


class GRUCell(RecurrentCell):
    r"""One step of a gated recurrent unit, as ``torch.nn.GRUCell`` (gates r, z, n; cuDNN form).

    .. math::
        r = \sigma(x W_{ir}^T + b_{ir} + h W_{hr}^T + b_{hr}), \quad
        z = \sigma(x W_{iz}^T + b_{iz} + h W_{hz}^T + b_{hz}) \\
        n = \tanh(x W_{in}^T + b_{in} + r \odot (h W_{hn}^T + b_{hn})), \quad
        h' = (1 - z) \odot n + z \odot h

    Parameters as for :class:`RNNCell`, without ``nonlinearity``.

    ``h = cell(x, h)``; ``h, tape = cell.forward(x, h)``;
    ``dx, dh0, grads = cell.backward(dh, tape)``.
    """

    layer = "GRU"

    def __init__(self, input_size, hidden_size, bias=True, *, dtype="float32", device="cpu",
                 seed=None):
        super().__init__(input_size, hidden_size, bias, dtype=dtype, device=device, seed=seed)
