"""The timed workloads: one layer-direction of rnnkern, torch or the reference.

The asv benchmarks and the worker processes of ``python -m rnnkern bench``
(:mod:`rnnkern.bench.workers`) time these same classes, so both measure the
same calls on the same seeded inputs.  A cell is named as in the registry
(:data:`rnnkern.cells.CELLS`); its entry says which layer class computes it
(``Cell.layer`` with ``Cell.layer_options``, in rnnkern and in ``torch.nn``)
and what its state is (``Cell.state_names``).

Each class has the methods named in its ``PASSES`` (``forward()``,
``forward_backward()``; rnnkern and torch also ``forward_no_grad()``: inference), which return only
once the device is idle (a device-wide synchronize on the GPU: every stream),
and ``checksums()``.
"""

from __future__ import annotations

import numpy as np

import rnnkern

from ..cells import cell_for

__all__ = ["make_layer", "seeded_case", "RnnkernWorkload", "TorchWorkload",
           "ReferenceWorkload", "synchronize_nothing"]


def make_layer(cell, shape, dtype, device, seed, **options):
    """The rnnkern layer for ``cell`` (a registry name) with input and hidden size from ``shape``;
    ``options`` are further layer options (``num_layers``, ``bidirectional``, ...).

    Raises
    ------
    ValueError
        If ``cell`` is not in the registry.
    """
    entry = cell_for(cell)
    return getattr(rnnkern, entry.layer)(shape.I, shape.H, **entry.layer_options, **options,
                                         dtype=dtype, device=device, seed=seed)


def single_step_class_name(cell):
    """``"LSTMCell"`` for ``"lstm"``: the single-step class computing ``cell``, in rnnkern and
    in ``torch.nn`` alike (``Cell.layer`` + ``"Cell"``)."""
    return cell_for(cell).layer + "Cell"


def _check_single_step(shape):
    if shape.T != 1:
        raise ValueError(f"shape: a single-step cell runs one step, so T must be 1, got {shape}")


def _layer_suffixed(params):
    """A cell's ``state_dict`` names as the layer's (``weight_ih`` -> ``weight_ih_l0``)."""
    return {f"{name}_l0": value for name, value in params.items()}


def seeded_case(cell, shape, dtype, seed):
    """Parameters (by torch name), ``x (T, B, I)`` and ``dy (T, B, H)`` as NumPy arrays.

    Every library gets these same values: the parameters are those of
    ``make_layer(cell, shape, dtype, "cpu", seed)``; ``x`` and ``dy`` are
    standard normal draws from ``seed``.
    """
    params = make_layer(cell, shape, dtype, "cpu", seed).state_dict()
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((shape.T, shape.B, shape.I)).astype(dtype)
    dy = rng.standard_normal((shape.T, shape.B, shape.H)).astype(dtype)
    return params, x, dy


def synchronize_nothing():
    """Synchronize on the CPU: every call has finished when it returns."""


def _absolute_sum(array):
    """Sum of |array| in float64, on the host, for any of the three libraries."""
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    elif hasattr(array, "get"):
        array = array.get()
    return float(np.abs(np.asarray(array, dtype=np.float64)).sum())


class RnnkernWorkload:
    """One rnnkern layer (one layer, one direction) and its seeded inputs.

    Parameters
    ----------
    cell : str
        A registry name: ``"lstm"``, ``"gru"``, ``"rnn_tanh"``, ``"rnn_relu"``, ...
    shape : BenchShape
    dtype : str
        ``"float32"`` or ``"float64"``.
    device : str
        ``"cpu"`` (NumPy arrays, Numba kernels) or ``"cuda"`` (CuPy arrays).
    seed : int
    single_step : bool
        Time the single-step cell (``rnnkern.LSTMCell``, ...) on ``x[0]``
        instead of the layer; ``shape.T`` must be 1.  Its parameters are
        the layer's, and its step the layer's one step.
    """

    PASSES = ("forward", "forward_no_grad", "forward_backward")

    def __init__(self, cell, shape, dtype, device, seed=0, single_step=False):
        _, x, dy = seeded_case(cell, shape, dtype, seed)   # its parameters: those of the layer
        layer = make_layer(cell, shape, dtype, device, seed)
        if single_step:
            _check_single_step(shape)
            entry = cell_for(cell)
            step = getattr(rnnkern, single_step_class_name(cell))(
                shape.I, shape.H, **entry.layer_options, dtype=dtype, device=device)
            step.load_state_dict({name: layer.state_dict()[f"{name}_l0"]
                                  for name in step.state_dict()})
            layer, x, dy = _SingleStepLayer(step), x[0], dy[0]
        self.layer = layer
        if device == "cuda":
            import cupy

            self.x, self.dy = cupy.asarray(x), cupy.asarray(dy)
            self._synchronize = cupy.cuda.Device().synchronize
        else:
            self.x, self.dy = x, dy
            self._synchronize = synchronize_nothing

    def forward(self):
        """``layer.forward(x)``: returns ``(y, state, tape)``."""
        result = self.layer.forward(self.x)
        self._synchronize()
        return result

    def forward_no_grad(self):
        """``layer(x)``: inference, no tape (what torch runs under ``no_grad``)."""
        result = self.layer(self.x)
        self._synchronize()
        return result

    def forward_backward(self):
        """``layer.forward(x)`` then ``layer.backward(dy, tape)``: returns ``(dx, dstate0, grads)``."""
        _, _, tape = self.layer.forward(self.x)
        result = self.layer.backward(self.dy, tape)
        self._synchronize()
        return result

    def checksums(self):
        """Sums of ``|y|``, ``|dx|`` and ``|dW_hh|``, to check that libraries agree."""
        y, _, _ = self.forward()
        dx, _, grads = self.forward_backward()
        return {"y": _absolute_sum(y), "dx": _absolute_sum(dx),
                "dweight_hh": _absolute_sum(grads["weight_hh_l0"])}


class _SingleStepLayer:
    """A single-step cell seen as a one-step layer: ``y`` is ``h'``, the gradient ``dy``
    comes in as the gradient of ``h'``, and the gradients carry the layer's names."""

    def __init__(self, step):
        self.step = step
        self._zeros = None                      # the other states' zero gradient, made once

    def __call__(self, x):
        state = self.step(x)
        return _first_state(state), state

    def forward(self, x):
        state, tape = self.step.forward(x)
        return _first_state(state), state, tape

    def backward(self, dy, tape):
        others = self.step.cell.num_states - 1          # c of the LSTMCell: no gradient
        if others and (self._zeros is None or self._zeros.shape != dy.shape):
            self._zeros = dy * 0
        dstate = (dy,) + (self._zeros,) * others if others else dy
        dx, dstate0, grads = self.step.backward(dstate, tape)
        return dx, dstate0, _layer_suffixed(grads)


def _first_state(state):
    """``h'`` of what a cell returns (``h'``, or ``(h', c')`` for the ``LSTMCell``)."""
    return state[0] if isinstance(state, tuple) else state


class TorchWorkload:
    """The same layer as ``torch.nn.<Cell.layer>``, with the same parameters and inputs.

    ``forward`` is a training forward (autograd on, as rnnkern's forward also
    keeps its tape); ``forward_no_grad`` runs under ``torch.no_grad()``, the
    inference a torch user gets; ``forward_backward`` asks for the gradients
    rnnkern returns: input, initial state and parameters.  On CUDA, TF32 is
    off so cuDNN computes in full float32 as rnnkern does.

    Raises
    ------
    ValueError
        If torch has no layer for ``cell`` (``Cell.torch_oracle`` is false).
    """

    PASSES = ("forward", "forward_no_grad", "forward_backward")

    def __init__(self, cell, shape, dtype, device, seed=0, threads=None, single_step=False):
        import torch

        entry = cell_for(cell)
        if not entry.torch_oracle:
            raise ValueError(f"cell: torch.nn has no layer computing {cell!r}")
        if device == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
            self._synchronize = torch.cuda.synchronize
        else:
            self._synchronize = synchronize_nothing
        if threads is not None:
            torch.set_num_threads(threads)
        params, x, dy = seeded_case(cell, shape, dtype, seed)
        options = {"dtype": getattr(torch, dtype), "device": device}
        state_shape = (1, shape.B, shape.H)
        if single_step:                         # torch.nn.LSTMCell on x[0], h (B, H)
            _check_single_step(shape)
            module = getattr(torch.nn, single_step_class_name(cell))(
                shape.I, shape.H, **entry.layer_options, **options)
            params = {name.removesuffix("_l0"): p for name, p in params.items()}
            x, dy, state_shape = x[0], dy[0], state_shape[1:]
        else:
            module = getattr(torch.nn, entry.layer)(shape.I, shape.H, **entry.layer_options,
                                                    **options)
        module.load_state_dict({name: torch.from_numpy(p) for name, p in params.items()})
        self.module = module
        self.single_step = single_step
        self._no_grad = torch.no_grad
        self.x = torch.from_numpy(x).to(device).requires_grad_()
        self.dy = torch.from_numpy(dy).to(device)
        zeros = [torch.zeros(state_shape, **options).requires_grad_()
                 for _ in entry.state_names]
        # torch's convention: a tuple of states ((h, c) for LSTM), a lone h as a tensor.
        self.state = tuple(zeros) if len(zeros) > 1 else zeros[0]
        self._leaves = [self.x, *zeros, *module.parameters()]

    def _call(self):
        """``(y, state)``: the layer's, or a cell's ``(h', state')``."""
        result = self.module(self.x, self.state)
        if self.single_step:
            return _first_state(result), result
        return result

    def forward(self):
        """``module(x, state)``: returns ``(y, state)``."""
        result = self._call()
        self._synchronize()
        return result

    def forward_no_grad(self):
        """``module(x, state)`` under ``torch.no_grad()``: returns ``(y, state)``."""
        with self._no_grad():
            result = self._call()
        self._synchronize()
        return result

    def forward_backward(self):
        """``module(x, state)`` then ``y.backward(dy)``: returns ``dx``.

        Gradients are cleared first (set to None, free) so autograd writes
        fresh ones, as rnnkern's backward returns fresh arrays, rather than
        adding into old ones.
        """
        for leaf in self._leaves:
            leaf.grad = None
        y, _ = self._call()
        y.backward(self.dy)
        self._synchronize()
        return self.x.grad

    def checksums(self):
        """Sums of ``|y|``, ``|dx|`` and ``|dW_hh|`` (see :class:`RnnkernWorkload`)."""
        y, _ = self.forward()
        dx = self.forward_backward()
        weight_hh = self.module.weight_hh if self.single_step else self.module.weight_hh_l0
        return {"y": _absolute_sum(y), "dx": _absolute_sum(dx),
                "dweight_hh": _absolute_sum(weight_hh.grad)}


class ReferenceWorkload:
    """The plain NumPy reference (:mod:`rnnkern.reference`) on the same inputs. CPU only."""

    PASSES = ("forward", "forward_backward")

    def __init__(self, cell, shape, dtype, device="cpu", seed=0):
        if device != "cpu":
            raise ValueError(f"device: the NumPy reference runs on 'cpu' only, got {device!r}")
        self.cell = cell_for(cell)
        self.params, self.x, self.dy = seeded_case(cell, shape, dtype, seed)
        zeros = np.zeros((1, shape.B, shape.H), dtype)
        self.dstate_n = tuple(zeros for _ in self.cell.state_names)

    def forward(self):
        """``reference_forward``: returns ``(y, state_n, cache)``."""
        from ..reference import reference_forward

        return reference_forward(self.cell, self.params, self.x)

    def forward_backward(self):
        """``reference_forward`` then ``reference_backward``: returns ``(dx, dstate0, grads)``."""
        from ..reference import reference_backward, reference_forward

        _, _, cache = reference_forward(self.cell, self.params, self.x)
        return reference_backward(self.dy, self.dstate_n, cache)

    def checksums(self):
        """Sums of ``|y|``, ``|dx|`` and ``|dW_hh|`` (see :class:`RnnkernWorkload`)."""
        y, _, _ = self.forward()
        dx, _, grads = self.forward_backward()
        return {"y": _absolute_sum(y), "dx": _absolute_sum(dx),
                "dweight_hh": _absolute_sum(grads["weight_hh_l0"])}
