"""PyTorch as the oracle: run torch.nn.RNN/LSTM/GRU on the same weights.

``torch_run`` returns outputs, final states and every gradient for a loss
``sum(y * dy) + sum(h_n * dh_n) + sum(c_n * dc_n)``, the quantities
``rnnkern``'s ``backward(dy, tape, (dh_n, dc_n))`` must reproduce.
"""

import numpy as np
import torch


def torch_layer(layer):
    """The torch.nn module equivalent to an rnnkern layer, same weights."""
    kwargs = dict(num_layers=layer.num_layers, bias=layer.bias, batch_first=layer.batch_first,
                  bidirectional=layer.bidirectional, dtype=getattr(torch, layer.dtype))
    name = type(layer).__name__
    if name == "RNN":
        module = torch.nn.RNN(layer.input_size, layer.hidden_size, nonlinearity=layer.nonlinearity, **kwargs)
    else:
        module = getattr(torch.nn, name)(layer.input_size, layer.hidden_size, **kwargs)
    module.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in layer.state_dict().items()})
    return module


def torch_run(layer, x, state=None, lengths=None, dy=None, dstate=None):
    """Forward and backward in torch; returns a dict of NumPy arrays."""
    module = torch_layer(layer)
    lstm = type(layer).__name__ == "LSTM"
    xt = torch.tensor(x, requires_grad=True)
    states = [] if state is None else ([state[0], state[1]] if lstm else [state])
    states = [torch.tensor(s, requires_grad=True) for s in states]
    arg = None if not states else (tuple(states) if lstm else states[0])
    inp = xt
    if lengths is not None:
        inp = torch.nn.utils.rnn.pack_padded_sequence(
            xt, torch.as_tensor(np.asarray(lengths), dtype=torch.int64),
            batch_first=layer.batch_first, enforce_sorted=False)
    y, st = module(inp, arg)
    if lengths is not None:
        y, _ = torch.nn.utils.rnn.pad_packed_sequence(
            y, batch_first=layer.batch_first, total_length=x.shape[1 if layer.batch_first else 0])
    h_n, c_n = st if lstm else (st, None)
    out = {"y": y.detach().numpy(), "h_n": h_n.detach().numpy(),
           "c_n": None if c_n is None else c_n.detach().numpy()}
    if dy is None:
        return out
    loss = (y * torch.from_numpy(dy)).sum()
    dh, dc = (dstate if lstm else (dstate, None)) if dstate is not None else (None, None)
    if dh is not None:
        loss = loss + (h_n * torch.from_numpy(dh)).sum()
    if dc is not None:
        loss = loss + (c_n * torch.from_numpy(dc)).sum()
    loss.backward()
    out["dx"] = xt.grad.numpy()
    out["dstate0"] = [s.grad.numpy() if s.grad is not None else np.zeros(s.shape, x.dtype) for s in states]
    out["grads"] = {k: p.grad.numpy() for k, p in module.named_parameters()}
    return out
