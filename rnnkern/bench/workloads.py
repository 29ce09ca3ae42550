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


def make_layer(cell, shape, dtype, device, seed):
    """The rnnkern layer for ``cell`` (a registry name) with input and hidden size from ``shape``.

    Raises
    ------
    ValueError
        If ``cell`` is not in the registry.
    """
    entry = cell_for(cell)
    return getattr(rnnkern, entry.layer)(shape.I, shape.H, **entry.layer_options,
                                         dtype=dtype, device=device, seed=seed)


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
    """

    PASSES = ("forward", "forward_no_grad", "forward_backward")

    def __init__(self, cell, shape, dtype, device, seed=0):
        _, x, dy = seeded_case(cell, shape, dtype, seed)   # its parameters: those of the layer
        self.layer = make_layer(cell, shape, dtype, device, seed)
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

    def __init__(self, cell, shape, dtype, device, seed=0, threads=None):
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
        module = getattr(torch.nn, entry.layer)(shape.I, shape.H, **entry.layer_options,
                                                **options)
        module.load_state_dict({name: torch.from_numpy(p) for name, p in params.items()})
        self.module = module
        self._no_grad = torch.no_grad
        self.x = torch.from_numpy(x).to(device).requires_grad_()
        self.dy = torch.from_numpy(dy).to(device)
        zeros = [torch.zeros((1, shape.B, shape.H), **options).requires_grad_()
                 for _ in entry.state_names]
        # torch's convention: a tuple of states ((h, c) for LSTM), a lone h as a tensor.
        self.state = tuple(zeros) if len(zeros) > 1 else zeros[0]
        self._leaves = [self.x, *zeros, *module.parameters()]

    def forward(self):
        """``module(x, state)``: returns ``(y, state)``."""
        result = self.module(self.x, self.state)
        self._synchronize()
        return result

    def forward_no_grad(self):
        """``module(x, state)`` under ``torch.no_grad()``: returns ``(y, state)``."""
        with self._no_grad():
            result = self.module(self.x, self.state)
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
        y, _ = self.module(self.x, self.state)
        y.backward(self.dy)
        self._synchronize()
        return self.x.grad

    def checksums(self):
        """Sums of ``|y|``, ``|dx|`` and ``|dW_hh|`` (see :class:`RnnkernWorkload`)."""
        y, _ = self.forward()
        dx = self.forward_backward()
        return {"y": _absolute_sum(y), "dx": _absolute_sum(dx),
                "dweight_hh": _absolute_sum(self.module.weight_hh_l0.grad)}


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
