"""The oracles: torch.nn on the same weights, or the plain NumPy reference.

``oracle_run(layer, ...)`` returns outputs, final states and every gradient
for the loss ``sum(y * dy) + sum over states of sum(s_n * ds_n)``, the
quantities ``rnnkern``'s ``backward(dy, tape, dstate)`` must reproduce.  It
asks ``torch.nn.<cell.layer>`` where the registry says torch computes the
cell (``Cell.torch_oracle``), else ``rnnkern.reference``.  ``torch_run`` and
``reference_run`` are the two oracles themselves, with the same results.

States go in and come out in the layer's own form: ``h`` alone, or the tuple
``(h, c)``; the result's ``"state_n"`` and ``"dstate0"`` are lists with one
array per state, ``"h_n"``/``"c_n"`` name the first two.
"""

import numpy as np
import torch

from rnnkern.reference import reference_backward, reference_forward


def _as_list(layer, state):
    """The layer's state argument as a list with one entry per state (or [])."""
    if state is None:
        return []
    return list(state) if layer.cell.num_states > 1 else [state]


def _named(out, state_n):
    out["state_n"] = state_n
    out["h_n"] = state_n[0]
    out["c_n"] = state_n[1] if len(state_n) > 1 else None
    return out


def torch_layer(layer):
    """The torch.nn module equivalent to an rnnkern layer, same weights."""
    cell = layer.cell
    module = getattr(torch.nn, cell.layer)(
        layer.input_size, layer.hidden_size, num_layers=layer.num_layers, bias=layer.bias,
        batch_first=layer.batch_first, bidirectional=layer.bidirectional,
        dtype=getattr(torch, layer.dtype), **cell.layer_options,
        **({"proj_size": layer.proj_size} if layer.proj_size else {}))
    module.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in layer.state_dict().items()})
    return module


def torch_run(layer, x, state=None, lengths=None, dy=None, dstate=None):
    """Forward and backward in torch; returns a dict of NumPy arrays."""
    module = torch_layer(layer)
    xt = torch.tensor(x, requires_grad=True)
    states = [torch.tensor(s, requires_grad=True) for s in _as_list(layer, state)]
    arg = None if not states else (tuple(states) if len(states) > 1 else states[0])
    inp = xt
    if lengths is not None:
        inp = torch.nn.utils.rnn.pack_padded_sequence(
            xt, torch.as_tensor(np.asarray(lengths), dtype=torch.int64),
            batch_first=layer.batch_first, enforce_sorted=False)
    y, st = module(inp, arg)
    if lengths is not None:
        y, _ = torch.nn.utils.rnn.pad_packed_sequence(
            y, batch_first=layer.batch_first, total_length=x.shape[1 if layer.batch_first else 0])
    state_n = list(st) if isinstance(st, tuple) else [st]
    out = _named({"y": y.detach().numpy()}, [s.detach().numpy() for s in state_n])
    if dy is None:
        return out
    loss = (y * torch.from_numpy(dy)).sum()
    for s_n, ds in zip(state_n, _as_list(layer, dstate)):
        if ds is not None:
            loss = loss + (s_n * torch.from_numpy(ds)).sum()
    loss.backward()
    out["dx"] = xt.grad.numpy()
    out["dstate0"] = [s.grad.numpy() if s.grad is not None else np.zeros(s.shape, x.dtype)
                      for s in states]
    out["grads"] = {k: p.grad.numpy() for k, p in module.named_parameters()}
    return out


def reference_run(layer, x, state=None, lengths=None, dy=None, dstate=None):
    """``torch_run``'s results from ``rnnkern.reference`` (float64, then cast)."""
    unbatched = x.ndim == 2
    to_time_major = ((lambda a: a[:, None, :]) if unbatched else
                     (lambda a: np.swapaxes(a, 0, 1)) if layer.batch_first else (lambda a: a))
    from_time_major = ((lambda a: a[:, 0, :]) if unbatched else
                       (lambda a: np.swapaxes(a, 0, 1)) if layer.batch_first else (lambda a: a))
    batched_state = (lambda s: s[:, None, :]) if unbatched else (lambda s: s)
    user_state = (lambda s: s[:, 0, :]) if unbatched else (lambda s: s)
    wide = lambda a: np.asarray(a, np.float64)      # noqa: E731
    params = {k: wide(v) for k, v in layer.state_dict().items()}
    state0 = [batched_state(wide(s)) for s in _as_list(layer, state)] or None
    y, state_n, cache = reference_forward(
        layer.cell, params, to_time_major(wide(x)), state0, lengths, layer.num_layers,
        layer.bidirectional)
    dtype = x.dtype
    out = _named({"y": from_time_major(y).astype(dtype)},
                 [user_state(s).astype(dtype) for s in state_n])
    if dy is None:
        return out
    dstate_n = [None if d is None else batched_state(wide(d)) for d in _as_list(layer, dstate)]
    dx, dstate0, grads = reference_backward(to_time_major(wide(dy)), dstate_n or None, cache)
    out["dx"] = from_time_major(dx).astype(dtype)
    out["dstate0"] = [user_state(d).astype(dtype) for d in dstate0][:len(_as_list(layer, state))]
    out["grads"] = {k: g.astype(dtype) for k, g in grads.items()}
    return out


def oracle_run(layer, x, state=None, lengths=None, dy=None, dstate=None):
    """torch where it computes the cell (``Cell.torch_oracle``), else the reference."""
    run = torch_run if layer.cell.torch_oracle else reference_run
    return run(layer, x, state, lengths, dy, dstate)
