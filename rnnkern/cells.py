"""The cell interface: one description per recurrent cell.

Everything above the kernels (layers, the generic array-API backend, the
tests) knows a cell only through its :class:`Cell` description: how many gates
it has, the PyTorch gate order, which arrays the backward pass keeps, and the
pointwise forward and backward step written with array-API calls.  The fast
backends (Numba, CUDA) implement the very same two pointwise steps as fused
kernels, looked up by ``cell.name``; the array-API versions here are their
specification and the generic backend's implementation.

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

Variable lengths follow packed-sequence semantics: a batch row ``b`` is
*active* at time ``t`` iff ``t < lengths[b]``.  An inactive step keeps the state
unchanged and writes zeros to ``y_t``.  Because of that rule the same mask
serves both directions: running backwards from ``t = T-1`` a short sequence
holds its initial state until its own last element, then starts there.

The backward step receives ``dh`` (the gradient reaching ``h_t``: ``dy_t`` plus
what flows back from step ``t+1``) and returns the gradients of the
pre-activations, split in two because the GRU's ``n`` gate sees ``gh_n`` only
through ``r``::

    dgx  gradient of gx (and of b_ih)             (B, G*H)
    dgh  gradient of gh (and of b_hh)             (B, G*H)   == dgx but for GRU
    dh_direct   the part of dh_{t-1} that does not pass through W_hh
    dc_prev     gradient of c_{t-1} (LSTM)

and the caller finishes ``dh_{t-1} = dh_direct + dgh @ W_hh``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["Cell", "CELLS", "cell_for"]


def _sigmoid(xp, a):
    # 1 / (1 + exp(-a)) overflows harmlessly to 0 for very negative a.
    return 1.0 / (1.0 + xp.exp(-a))


# --------------------------------------------------------------------------
# Pointwise forward steps: (xp, gx, gh, b_hh, h_prev, c_prev)
#   -> (h_new, c_new, gates, gh_n)
# ``gates`` holds the activated gates the backward pass needs; ``gh_n`` is the
# GRU's W_hn h + b_hn (None for the other cells).
# --------------------------------------------------------------------------

def _rnn_tanh_forward(xp, gx, gh, b_hh, h_prev, c_prev):
    h = xp.tanh(gx + gh + b_hh)
    return h, None, h, None


def _rnn_relu_forward(xp, gx, gh, b_hh, h_prev, c_prev):
    h = xp.maximum(gx + gh + b_hh, xp.zeros_like(gx))
    return h, None, h, None


def _lstm_forward(xp, gx, gh, b_hh, h_prev, c_prev):
    H = h_prev.shape[-1]
    a = gx + gh + b_hh
    i = _sigmoid(xp, a[:, 0 * H:1 * H])
    f = _sigmoid(xp, a[:, 1 * H:2 * H])
    g = xp.tanh(a[:, 2 * H:3 * H])
    o = _sigmoid(xp, a[:, 3 * H:4 * H])
    c = f * c_prev + i * g
    h = o * xp.tanh(c)
    return h, c, xp.concat([i, f, g, o], axis=-1), None


def _gru_forward(xp, gx, gh, b_hh, h_prev, c_prev):
    H = h_prev.shape[-1]
    gh = gh + b_hh
    r = _sigmoid(xp, gx[:, 0:H] + gh[:, 0:H])
    z = _sigmoid(xp, gx[:, H:2 * H] + gh[:, H:2 * H])
    gh_n = gh[:, 2 * H:3 * H]
    n = xp.tanh(gx[:, 2 * H:3 * H] + r * gh_n)
    h = (1.0 - z) * n + z * h_prev        # = n + z * (h_prev - n)
    return h, None, xp.concat([r, z, n], axis=-1), gh_n


# --------------------------------------------------------------------------
# Pointwise backward steps:
#   (xp, dh, dc, gates, gh_n, h_prev, c_prev) -> (dgx, dgh, dh_direct, dc_prev)
# All inputs are for one active step; the caller applies the length mask.
# --------------------------------------------------------------------------

def _rnn_tanh_backward(xp, dh, dc, gates, gh_n, h_prev, c_prev):
    da = dh * (1.0 - gates * gates)                 # tanh' = 1 - h^2
    return da, da, xp.zeros_like(dh), None


def _rnn_relu_backward(xp, dh, dc, gates, gh_n, h_prev, c_prev):
    da = xp.where(gates > 0, dh, xp.zeros_like(dh))  # relu' = [h > 0]
    return da, da, xp.zeros_like(dh), None


def _lstm_backward(xp, dh, dc, gates, gh_n, h_prev, c_prev):
    H = dh.shape[-1]
    i, f = gates[:, 0:H], gates[:, H:2 * H]
    g, o = gates[:, 2 * H:3 * H], gates[:, 3 * H:4 * H]
    tanh_c = xp.tanh(f * c_prev + i * g)            # c_t recomputed, not kept
    dc = dc + dh * o * (1.0 - tanh_c * tanh_c)      # h = o tanh(c)
    da = xp.concat([
        dc * g * i * (1.0 - i),                      # di * sig'
        dc * c_prev * f * (1.0 - f),                 # df * sig'
        dc * i * (1.0 - g * g),                      # dg * tanh'
        dh * tanh_c * o * (1.0 - o),                 # do * sig'
    ], axis=-1)
    return da, da, xp.zeros_like(dh), dc * f


def _gru_backward(xp, dh, dc, gates, gh_n, h_prev, c_prev):
    H = dh.shape[-1]
    r, z, n = gates[:, 0:H], gates[:, H:2 * H], gates[:, 2 * H:3 * H]
    dn = dh * (1.0 - z) * (1.0 - n * n)             # through tanh
    dz = dh * (h_prev - n) * z * (1.0 - z)          # h = n + z (h_prev - n)
    dr = dn * gh_n * r * (1.0 - r)                  # n = tanh(gx_n + r gh_n)
    dgx = xp.concat([dr, dz, dn], axis=-1)
    dgh = xp.concat([dr, dz, dn * r], axis=-1)
    return dgx, dgh, dh * z, None


@dataclass(frozen=True)
class Cell:
    """Description of one recurrent cell.

    Attributes
    ----------
    name : str
        Kernel family name: ``"rnn_tanh"``, ``"rnn_relu"``, ``"lstm"``, ``"gru"``.
    num_gates : int
        ``G``: the weight matrices are ``(G*H, I)`` and ``(G*H, H)``.
    gate_names : tuple of str
        The gates in PyTorch order (the row blocks of ``W_ih``/``W_hh``).
    has_cell_state : bool
        True for the LSTM (state is ``(h, c)``).
    keeps_gh_n : bool
        True for the GRU: the backward pass needs ``W_hn h + b_hn``.
    forward_step, backward_step : callable
        The pointwise steps in array-API form (see the module docstring).
    """

    name: str
    num_gates: int
    gate_names: tuple
    has_cell_state: bool
    keeps_gh_n: bool
    forward_step: Callable[..., Any]
    backward_step: Callable[..., Any]

    @property
    def saved(self) -> tuple:
        """Names of the per-timestep arrays the backward pass keeps."""
        names = ["h_prev", "gates"]
        if self.has_cell_state:
            names.append("c_prev")
        if self.keeps_gh_n:
            names.append("gh_n")
        return tuple(names)

    def parameter_shapes(self, input_size: int, hidden_size: int) -> dict:
        """Shapes of one layer-direction's parameters, by PyTorch suffix."""
        gh = self.num_gates * hidden_size
        return {"weight_ih": (gh, input_size), "weight_hh": (gh, hidden_size),
                "bias_ih": (gh,), "bias_hh": (gh,)}


CELLS = {
    "rnn_tanh": Cell("rnn_tanh", 1, ("h",), False, False,
                     _rnn_tanh_forward, _rnn_tanh_backward),
    "rnn_relu": Cell("rnn_relu", 1, ("h",), False, False,
                     _rnn_relu_forward, _rnn_relu_backward),
    "lstm": Cell("lstm", 4, ("i", "f", "g", "o"), True, False,
                 _lstm_forward, _lstm_backward),
    "gru": Cell("gru", 3, ("r", "z", "n"), False, True,
                _gru_forward, _gru_backward),
}


def cell_for(name: str) -> Cell:
    """Return the :class:`Cell` called ``name`` (see ``CELLS``)."""
    try:
        return CELLS[name]
    except KeyError:
        raise ValueError(
            f"cell: expected one of {sorted(CELLS)}, got {name!r}") from None
