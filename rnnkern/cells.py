"""The cell registry: ONE entry per recurrent cell says everything about it.

Every other part of rnnkern knows a cell only through its :class:`Cell`
entry in ``CELLS``: the layers (state tuple, parameter shapes), the backends
(what BPTT saves, which kernels to run), the benchmarks and the tests (the
public layer class, the torch oracle).  No other table is keyed by cell name.

Notation for one step at time ``t`` (batch ``B``, hidden size ``H``, ``G``
gates, PyTorch gate order; ``W_ih`` is ``(G*H, I)``, ``W_hh`` is ``(G*H, H)``)::

    gx = x_t @ W_ih.T + b_ih                  (B, G*H)   one GEMM for all t
    gh = h_{t-1} @ W_hh.T                     (B, G*H)   one GEMM per step
    -- the fused pointwise step adds b_hh and does everything below --

    RNN   h_t = act(gx + gh + b_hh)                         act = tanh | relu
    LSTM  i, f, g, o = sig, sig, tanh, sig of (gx + gh + b_hh)
          c_t = f * c_{t-1} + i * g ;  h_t = o * tanh(c_t)
    GRU   r = sig(gx_r + gh_r + b_hr) ;  z = sig(gx_z + gh_z + b_hz)
          n = tanh(gx_n + r * (gh_n + b_hn))                (PyTorch/cuDNN form)
          h_t = (1 - z) * n + z * h_{t-1}

The state is a tuple of ``(B, H)`` arrays named by ``Cell.state_names``, ``h``
first (``y_t = h_t``).  Variable lengths follow packed-sequence semantics: a
batch row ``b`` is *active* at time ``t`` iff ``t < lengths[b]``.  An inactive
step keeps the state unchanged and writes zeros to ``y_t``.  Because of that
rule the same mask serves both directions: running backwards from ``t = T-1``
a short sequence holds its initial state until its own last element, then
starts there.  The backends apply the mask; a cell's steps never see it.

What BPTT keeps per step: the states entering it (always, one array per state
name) and the cell's ``saved`` arrays, which its forward step writes.

The backward step receives the gradients ``dstate`` reaching the state after
step ``t`` (``dh`` already includes ``dy_t``) and returns the gradients of the
pre-activations, split in two because the GRU's ``n`` gate sees ``gh_n`` only
through ``r``, and the gradient of the state before the step, except for
the part through ``W_hh``::

    dgx  gradient of gx (and of b_ih)             (B, G*H)
    dgh  gradient of gh (and of b_hh)             (B, G*H)   is dgx unless
                                                             "dgh" in Cell.step_gradients
    dstate_prev  gradients of the state entering the step, with the part of
                 dh_{t-1} that passes through W_hh left out

and the caller finishes ``dh_{t-1} = dstate_prev[0] + dgh @ W_hh``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

from . import reference

__all__ = ["Cell", "Parameter", "Saved", "CELLS", "STANDARD_PARAMETERS", "PROJECTION", "cell_for",
           "cells_of_layer"]


def _sigmoid(xp, a):
    # 1 / (1 + exp(-a)) overflows harmlessly to 0 for very negative a.
    return 1.0 / (1.0 + xp.exp(-a))


def _gate(a, k, H):
    """Gate ``k``'s block of columns of a ``(B, G*H)`` array."""
    return a[:, k * H:(k + 1) * H]


# --------------------------------------------------------------------------
# Pointwise steps in array-API form: the specification the fused kernels
# implement, and the generic backend's implementation.
#
#   forward_step(xp, gx, gh, b_hh, state) -> (new_state, saved)
#   backward_step(xp, dstate, saved, state_prev) -> (dgx, dgh, dstate_prev)
#
# ``state``/``state_prev`` is the tuple of states entering the step,
# ``saved`` the tuple of arrays named by ``Cell.saved``.
# --------------------------------------------------------------------------

def _rnn_tanh_forward(xp, gx, gh, b_hh, state):
    h = xp.tanh(gx + gh + b_hh)
    return (h,), (h,)


def _rnn_relu_forward(xp, gx, gh, b_hh, state):
    h = xp.maximum(gx + gh + b_hh, xp.zeros_like(gx))
    return (h,), (h,)


def _rnn_tanh_backward(xp, dstate, saved, state_prev):
    (dh,), (h,) = dstate, saved
    da = dh * (1.0 - h * h)                          # tanh' = 1 - h^2
    return da, da, (xp.zeros_like(dh),)


def _rnn_relu_backward(xp, dstate, saved, state_prev):
    (dh,), (h,) = dstate, saved
    da = xp.where(h > 0, dh, xp.zeros_like(dh))      # relu' = [h > 0]
    return da, da, (xp.zeros_like(dh),)


def _lstm_forward(xp, gx, gh, b_hh, state):
    _, c_prev = state
    H = c_prev.shape[-1]                 # h_prev is proj_size wide with a projection
    a = gx + gh + b_hh
    i, f = _sigmoid(xp, _gate(a, 0, H)), _sigmoid(xp, _gate(a, 1, H))
    g, o = xp.tanh(_gate(a, 2, H)), _sigmoid(xp, _gate(a, 3, H))
    c = f * c_prev + i * g
    h = o * xp.tanh(c)
    return (h, c), (xp.concat([i, f, g, o], axis=-1),)


def _lstm_backward(xp, dstate, saved, state_prev):
    (dh, dc), (gates,), (_, c_prev) = dstate, saved, state_prev
    H = dh.shape[-1]
    i, f, g, o = (_gate(gates, k, H) for k in range(4))
    tanh_c = xp.tanh(f * c_prev + i * g)            # c_t recomputed, not kept
    dc = dc + dh * o * (1.0 - tanh_c * tanh_c)      # h = o tanh(c)
    da = xp.concat([
        dc * g * i * (1.0 - i),                      # di * sig'
        dc * c_prev * f * (1.0 - f),                 # df * sig'
        dc * i * (1.0 - g * g),                      # dg * tanh'
        dh * tanh_c * o * (1.0 - o),                 # do * sig'
    ], axis=-1)
    return da, da, (xp.zeros_like(dh), dc * f)


def _gru_forward(xp, gx, gh, b_hh, state):
    (h_prev,) = state
    H = h_prev.shape[-1]
    gh = gh + b_hh
    r = _sigmoid(xp, _gate(gx, 0, H) + _gate(gh, 0, H))
    z = _sigmoid(xp, _gate(gx, 1, H) + _gate(gh, 1, H))
    gh_n = _gate(gh, 2, H)
    n = xp.tanh(_gate(gx, 2, H) + r * gh_n)
    h = (1.0 - z) * n + z * h_prev        # = n + z * (h_prev - n)
    return (h,), (xp.concat([r, z, n], axis=-1), gh_n)


def _gru_backward(xp, dstate, saved, state_prev):
    (dh,), (gates, gh_n), (h_prev,) = dstate, saved, state_prev
    H = dh.shape[-1]
    r, z, n = (_gate(gates, k, H) for k in range(3))
    dn = dh * (1.0 - z) * (1.0 - n * n)             # through tanh
    dz = dh * (h_prev - n) * z * (1.0 - z)          # h = n + z (h_prev - n)
    dr = dn * gh_n * r * (1.0 - r)                  # n = tanh(gx_n + r gh_n)
    dgx = xp.concat([dr, dz, dn], axis=-1)
    dgh = xp.concat([dr, dz, dn * r], axis=-1)
    return dgx, dgh, (dh * z,)


# --------------------------------------------------------------------------
# The description
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class Parameter:
    """One parameter of a layer-direction.

    ``shape`` is symbolic: each entry a product of sizes (``"G*H"``, ``"I"``)
    over ``G`` (gates), ``H`` (hidden size), ``I`` (input size) and ``P``
    (the width of ``h``: ``proj_size`` with a projection, else ``H``).  Its
    ``state_dict`` name is ``name`` plus the layer suffix (``_l0``,
    ``_l1_reverse``, ...).  A bias is left out with ``bias=False``; a
    projection parameter exists only with ``proj_size > 0``.
    """

    name: str
    shape: tuple
    is_bias: bool = False
    is_projection: bool = False

    def shape_for(self, sizes: dict) -> tuple:
        """The concrete shape, for ``sizes`` such as ``{"G": 4, "H": 16, "I": 8}``."""
        return tuple(math.prod(sizes[s] for s in entry.split("*")) for entry in self.shape)


@dataclass(frozen=True)
class Saved:
    """A per-step array the forward step writes for BPTT: ``(T, B, width * H)``."""

    name: str
    width: int


#: The parameters of PyTorch's RNN, LSTM and GRU.
STANDARD_PARAMETERS = (
    Parameter("weight_ih", ("G*H", "I")),
    Parameter("weight_hh", ("G*H", "P")),
    Parameter("bias_ih", ("G*H",), is_bias=True),
    Parameter("bias_hh", ("G*H",), is_bias=True),
)

#: PyTorch's LSTM projection (``proj_size``): ``h_t = W_hr (o * tanh(c_t))``.
PROJECTION = Parameter("weight_hr", ("P", "H"), is_projection=True)


@dataclass(frozen=True, eq=False)     # entries are singletons: identity is equality
class Cell:
    """Everything rnnkern knows about one recurrent cell.

    Attributes
    ----------
    name : str
        Registry key: ``"rnn_tanh"``, ``"rnn_relu"``, ``"lstm"``, ``"gru"``.
    gate_names : tuple of str
        The gates in PyTorch order (the row blocks of ``W_ih``/``W_hh``);
        ``num_gates`` is their count ``G``.
    state_names : tuple of str
        The state tuple, ``h`` first: ``("h",)`` or ``("h", "c")``.
    state_sizes : tuple of str
        The width of each state: ``"P"`` (``h``: ``proj_size`` with a
        projection, else ``H``) or ``"H"``.
    saved : tuple of Saved
        Per-step arrays the forward step writes for BPTT, besides the states
        entering each step (which are always kept).
    step_gradients : tuple of str
        The pre-activation gradients a backward step writes: ``("dgx",)``
        when the gradient of ``gh`` equals that of ``gx`` (one array serves
        both), ``("dgx", "dgh")`` when they differ.
    forward_step, backward_step : callable
        The pointwise steps in array-API form (see the module docstring).
    reference_steps : (callable, callable)
        The plain NumPy step pair of ``rnnkern.reference``.
    kernels : dict
        The cell's kernels per backend: ``"numba"``, the row functions
        ``"<module>.<prefix>"`` of ``rnnkern.kernels.numba`` (``prefix +
        "_forward_row"``, ``"_backward_row"``); ``"cuda"``, the C++ type of
        its pointwise steps in ``kernels/cuda/cells/`` (the template argument
        of the step driver).
    layer : str
        The public layer class (``rnnkern.<layer>``), also the ``torch.nn``
        class that is its oracle when ``torch_oracle`` is true.
    layer_options : dict
        Constructor options that select this cell in ``layer``
        (``{"nonlinearity": "relu"}``), the same for torch's class.
    torch_oracle : bool
        Whether ``torch.nn.<layer>`` computes this cell (else the tests use
        the plain reference only).
    parameters : tuple of Parameter
        The parameters of one layer-direction, in ``state_dict`` order.  A
        cell with a projection parameter accepts ``proj_size``: the backends
        then project the output of each step, ``h_t = m_t W_hr^T`` with ``m_t``
        what the cell's step computes as ``h``.  That is only right for a cell
        whose ``h_{t-1}`` enters the step through ``W_hh`` alone (the LSTM).
    """

    name: str
    gate_names: tuple
    state_names: tuple
    saved: tuple
    step_gradients: tuple
    forward_step: Callable[..., Any]
    backward_step: Callable[..., Any]
    reference_steps: tuple
    kernels: dict
    layer: str
    layer_options: dict = field(default_factory=dict)
    torch_oracle: bool = True
    parameters: tuple = STANDARD_PARAMETERS
    state_sizes: tuple = ("P",)

    @property
    def num_gates(self) -> int:
        return len(self.gate_names)

    @property
    def num_states(self) -> int:
        return len(self.state_names)

    @property
    def has_projection(self) -> bool:
        """Whether the cell accepts ``proj_size`` (it has a projection parameter)."""
        return any(p.is_projection for p in self.parameters)

    def sizes(self, input_size: int, hidden_size: int, proj_size: int = 0) -> dict:
        """The values of the shape symbols: ``G``, ``H``, ``I`` and ``P``."""
        return {"G": self.num_gates, "H": hidden_size, "I": input_size,
                "P": proj_size or hidden_size}

    def parameter_shapes(self, input_size: int, hidden_size: int, bias: bool = True,
                         proj_size: int = 0) -> dict:
        """Shapes of one layer-direction's parameters, by name (no layer suffix)."""
        sizes = self.sizes(input_size, hidden_size, proj_size)
        return {p.name: p.shape_for(sizes) for p in self.parameters
                if (bias or not p.is_bias) and (proj_size or not p.is_projection)}

    def state_shapes(self, hidden_size: int, proj_size: int = 0) -> tuple:
        """The width of each state, in ``state_names`` order."""
        sizes = self.sizes(0, hidden_size, proj_size)
        return tuple(sizes[s] for s in self.state_sizes)


def _elman(nonlinearity, forward_step, backward_step, reference_steps, cuda_activation):
    """The Elman RNN with ``act = nonlinearity``: ``h_t = act(gx + gh + b_hh)``."""
    return Cell(f"rnn_{nonlinearity}", gate_names=("h",), state_names=("h",),
                saved=(Saved("gates", 1),), step_gradients=("dgx",), forward_step=forward_step,
                backward_step=backward_step, reference_steps=reference_steps,
                kernels={"numba": f"elman.{nonlinearity}",
                         "cuda": f"ElmanCell<{cuda_activation}>"},
                layer="RNN", layer_options={"nonlinearity": nonlinearity})


CELLS = {cell.name: cell for cell in (
    _elman("tanh", _rnn_tanh_forward, _rnn_tanh_backward,
           (reference.rnn_tanh_step, reference.rnn_tanh_step_backward), "TanhActivation"),
    _elman("relu", _rnn_relu_forward, _rnn_relu_backward,
           (reference.rnn_relu_step, reference.rnn_relu_step_backward), "ReluActivation"),
    Cell("lstm", gate_names=("i", "f", "g", "o"), state_names=("h", "c"),
         saved=(Saved("gates", 4),), step_gradients=("dgx",),
         forward_step=_lstm_forward, backward_step=_lstm_backward,
         reference_steps=(reference.lstm_step, reference.lstm_step_backward),
         kernels={"numba": "lstm.lstm", "cuda": "LstmCell"}, layer="LSTM",
         parameters=STANDARD_PARAMETERS + (PROJECTION,), state_sizes=("P", "H")),
    Cell("gru", gate_names=("r", "z", "n"), state_names=("h",),
         saved=(Saved("gates", 3), Saved("gh_n", 1)), step_gradients=("dgx", "dgh"),
         forward_step=_gru_forward, backward_step=_gru_backward,
         reference_steps=(reference.gru_step, reference.gru_step_backward),
         kernels={"numba": "gru.gru", "cuda": "GruCell"}, layer="GRU"),
)}


def cell_for(name: str) -> Cell:
    """Return the :class:`Cell` called ``name`` (see ``CELLS``)."""
    try:
        return CELLS[name]
    except KeyError:
        raise ValueError(
            f"cell: expected one of {sorted(CELLS)}, got {name!r}") from None


def cells_of_layer(layer: str) -> tuple:
    """The cells a public layer class computes, e.g. ``RNN`` -> rnn_tanh, rnn_relu."""
    return tuple(cell for cell in CELLS.values() if cell.layer == layer)
