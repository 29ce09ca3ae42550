"""Conversion between ``torch.nn`` recurrent modules and rnnkern layers.

``from_torch(module)`` builds the rnnkern layer (or single-step cell) that
computes what ``module`` computes, with a copy of its weights;
``to_torch(layer)`` builds the ``torch.nn`` module back.  The two share the
``state_dict`` names and shapes (``weight_ih_l0``, ``bias_hh_l1_reverse``,
``weight_hr_l0`` with ``proj_size``; ``weight_ih`` ... for the cells), so the
weights are copied name by name, unchanged.

The kinds come from the cell registry (``rnnkern.cells.CELLS``): every cell
whose ``torch_oracle`` is true names its ``torch.nn`` layer class
(``Cell.layer``: ``RNN``, ``LSTM``, ``GRU``) and the constructor options that
select it (``Cell.layer_options``: ``nonlinearity``); the single-step cell
classes are ``Cell.layer + "Cell"`` in both libraries.

torch is imported only inside ``to_torch``; ``from_torch`` looks torch up in
``sys.modules`` (an object cannot be a torch module unless torch is loaded).
"""

from __future__ import annotations

import importlib
import sys

import numpy as np

from ..cells import CELLS
from ..parameters import to_device_array
from ..validation import describe

__all__ = ["from_torch", "to_torch"]

#: Constructor options of ``torch.nn.RNN/LSTM/GRU`` copied to rnnkern as they are.
_LAYER_OPTIONS = ("num_layers", "bias", "batch_first", "dropout", "bidirectional")


def _kinds():
    """``torch.nn`` class name -> (rnnkern module, its cells), from the registry.

    ``"LSTM" -> ("rnnkern.recurrent", (lstm,))``,
    ``"RNNCell" -> ("rnnkern.single_step", (rnn_tanh, rnn_relu))``.
    """
    kinds = {}
    for cell in CELLS.values():
        if cell.torch_oracle:
            for name, module in ((cell.layer, "rnnkern.recurrent"),
                                 (cell.layer + "Cell", "rnnkern.single_step")):
                kinds.setdefault(name, (module, []))[1].append(cell)
    return {name: (module, tuple(cells)) for name, (module, cells) in kinds.items()}


def _expected():
    return ", ".join(f"torch.nn.{name}" for name in _kinds())


def _rnnkern_class(module_name, class_name):
    return getattr(importlib.import_module(module_name), class_name)


def _cell_of(obj, cells, argument):
    """The registry cell among ``cells`` whose options ``obj`` has."""
    for cell in cells:
        if all(getattr(obj, k, None) == value for k, value in cell.layer_options.items()):
            return cell
    options = sorted({k for cell in cells for k in cell.layer_options})
    got = ", ".join(f"{k}={getattr(obj, k, None)!r}" for k in options)
    raise ValueError(f"{argument}: no rnnkern cell computes {type(obj).__name__} with {got}")


def _to_numpy(tensor):
    return tensor.detach().to("cpu").numpy()


def from_torch(module, *, device="cpu"):
    """The rnnkern layer or cell equivalent to a ``torch.nn`` recurrent module.

    Parameters
    ----------
    module : torch.nn.RNN, LSTM, GRU, RNNCell, LSTMCell or GRUCell
        Exactly these classes (a subclass may compute something else and is
        refused).  Every constructor option is carried over: ``num_layers``,
        ``nonlinearity``, ``bias``, ``batch_first``, ``dropout``,
        ``bidirectional``, ``proj_size`` and the dtype of the parameters
        (float32 or float64), as is the training/evaluation mode.
    device : {"cpu", "cuda"}
        Where the rnnkern layer's parameters live (NumPy or CuPy arrays),
        wherever the module's are.

    Returns
    -------
    rnnkern.RNN, LSTM, GRU or rnnkern.single_step.RNNCell, LSTMCell, GRUCell
        With a copy of the module's ``state_dict`` (same names and shapes),
        so that ``layer(x, state)`` equals ``module(x, state)``.

    Raises
    ------
    TypeError
        If ``module`` is not one of the classes above.
    """
    torch = sys.modules.get("torch")
    kinds = _kinds()
    name = type(module).__name__
    if torch is None or name not in kinds or type(module) is not getattr(torch.nn, name, None):
        raise TypeError(f"module: expected one of {_expected()} (not a subclass), "
                        f"got {describe(module)}")
    module_name, cells = kinds[name]
    cell = _cell_of(module, cells, "module")
    params = module.state_dict()
    dtype = str(next(iter(params.values())).dtype).removeprefix("torch.")
    options = dict(cell.layer_options, bias=module.bias, dtype=dtype, device="cpu")
    if module_name == "rnnkern.recurrent":
        options.update({key: getattr(module, key) for key in _LAYER_OPTIONS})
        if getattr(module, "proj_size", 0):            # only LSTM has it; rnnkern checks it
            options["proj_size"] = module.proj_size
    layer = _rnnkern_class(module_name, name)(module.input_size, module.hidden_size,
                                                          **options)
    layer.load_state_dict({key: _to_numpy(value) for key, value in params.items()})
    if not module.training and hasattr(layer, "eval"):
        layer.eval()
    return layer.to(device)


def to_torch(layer):
    """The ``torch.nn`` module equivalent to an rnnkern layer or cell.

    Parameters
    ----------
    layer : rnnkern.RNN, LSTM, GRU or rnnkern.single_step.RNNCell, LSTMCell, GRUCell
        Its options, dtype, mode (``train``/``eval``) and a copy of its
        parameters go over; parameters on the GPU are copied to the host.

    Returns
    -------
    torch.nn.Module
        ``torch.nn.<class>`` on the CPU, with the layer's ``state_dict``.

    Raises
    ------
    TypeError
        If ``layer`` is not one of the classes above.
    ImportError
        If torch is not installed.
    """
    kinds = _kinds()
    name = type(layer).__name__
    module_name = kinds.get(name, ("",))[0]
    if module_name not in sys.modules or type(layer) is not getattr(
            sys.modules[module_name], name, None):
        raise TypeError(f"layer: expected an rnnkern layer or cell of the kinds "
                        f"{', '.join(kinds)}, got {describe(layer)}")
    try:
        import torch
    except ImportError as err:
        raise ImportError(f"to_torch needs PyTorch, which could not be imported ({err})") from None
    cell = _cell_of(layer, kinds[name][1], "layer")
    options = dict(cell.layer_options, bias=layer.bias, dtype=getattr(torch, layer.dtype))
    if module_name == "rnnkern.recurrent":
        options.update({key: getattr(layer, key) for key in _LAYER_OPTIONS})
        if getattr(layer, "proj_size", 0):
            options["proj_size"] = layer.proj_size
    module = getattr(torch.nn, name)(layer.input_size, layer.hidden_size, **options)
    module.load_state_dict({key: torch.from_numpy(np.array(to_device_array(value, "cpu", key)))
                            for key, value in layer.state_dict().items()})
    if hasattr(layer, "training"):
        module.train(bool(layer.training))
    return module
