"""LSTM ``proj_size`` and inter-layer ``dropout``, with torch's semantics, on every backend.

``proj_size``: parity with torch.nn.LSTM (values and every gradient, among
them ``weight_hr_l{k}``) on the Numba path over hypothesis configurations, and
the generic and emulated CUDA paths against the Numba path.

``dropout``: torch's masks cannot be reproduced, so the masks are taken from
the tape and torch recomputes the layer from per-layer modules with the same
masks applied between them (forward and autograd backward); the masks'
statistics (keep rate, scaling), the modes and the seeding are tested apart.
"""

import array_api_strict as xps
import numpy as np
import pytest
import torch
from hypothesis import given

import rnnkern as rk
import rnnkern.recurrent
from conftest import TOLERANCE
from rnnkern.backends.cuda.emulation import emulated_backend
from rnnkern.cells import CELLS
from test_parity_torch import check_against_torch, configurations, make_case
from torch_oracle import torch_layer

LSTM = CELLS["lstm"]


@given(configurations(projected=True))
def test_projection_matches_torch(cfg):
    check_against_torch(cfg)


def test_projection_parameters_are_torchs():
    ours = rk.LSTM(3, 6, 2, proj_size=4, bidirectional=True).state_dict()
    theirs = torch.nn.LSTM(3, 6, 2, proj_size=4, bidirectional=True).state_dict()
    assert list(ours) == list(theirs)
    assert all(ours[k].shape == tuple(theirs[k].shape) for k in ours)
    layer = rk.LSTM(3, 6, 2, proj_size=4, bidirectional=True)
    assert layer.output_size == 8 and "proj_size=4" in repr(layer)


def _projected_case(dtype, seed=3):
    return make_case(dict(cell=LSTM, T=6, B=3, I=4, H=7, proj_size=3, num_layers=2,
                          bidirectional=True, batch_first=False, bias=True, dtype=dtype,
                          with_state=True, with_dstate=True, seed=seed))


def _run(layer, x, state, dy, dstate, to=np.asarray, like=np.asarray):
    y, state_n, tape = layer.forward(like(x), tuple(like(s) for s in state), lengths=[6, 2, 4])
    dx, dstate0, grads = layer.backward(like(dy), tape, tuple(like(s) for s in dstate))
    return {"y": to(y), "h_n": to(state_n[0]), "c_n": to(state_n[1]), "dx": to(dx),
            "dh0": to(dstate0[0]), "dc0": to(dstate0[1]),
            **{name: to(g) for name, g in grads.items()}}


def _assert_same(ours, theirs, dtype):
    assert list(ours) == list(theirs)
    for key in theirs:
        np.testing.assert_allclose(ours[key], theirs[key], **TOLERANCE[dtype], err_msg=key)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_projection_on_the_generic_backend_matches_numba(dtype):
    layer, x, state, dy, dstate = _projected_case(dtype)
    _assert_same(_run(layer, x, state, dy, dstate, to=np.asarray, like=xps.asarray),
                 _run(layer, x, state, dy, dstate), dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_projection_on_the_emulated_cuda_path_matches_numba(dtype, monkeypatch):
    layer, x, state, dy, dstate = _projected_case(dtype)
    expected = _run(layer, x, state, dy, dstate)
    monkeypatch.setattr(rnnkern.recurrent, "backend_for", lambda xp: emulated_backend())
    _assert_same(_run(layer, x, state, dy, dstate), expected, dtype)
    y, _ = layer(x, state, lengths=[6, 2, 4])          # inference: no tape, same y
    np.testing.assert_allclose(y, expected["y"], **TOLERANCE[dtype])


# ---------------------------------------------------------------- dropout

def _torch_with_masks(layer, x, dy, masks):
    """torch's answer with ``masks`` between the layers: one torch module per layer."""
    full = torch_layer(layer.eval())
    layer.train()
    xt = torch.tensor(x, requires_grad=True)
    inputs, modules = xt, []
    for k in range(layer.num_layers):
        module = getattr(torch.nn, layer.cell.layer)(
            inputs.shape[-1], layer.hidden_size, bidirectional=layer.bidirectional,
            dtype=getattr(torch, layer.dtype), **layer.cell.layer_options)
        suffixes = ["", "_reverse"][:layer.num_directions]
        module.load_state_dict({name.replace(f"_l{k}", "_l0"): value
                                for name, value in full.state_dict().items()
                                if any(name.endswith(f"_l{k}{s}") for s in suffixes)})
        modules.append(module)
        inputs, _ = module(inputs)
        if k in masks:
            inputs = inputs * torch.from_numpy(masks[k])
    (inputs * torch.from_numpy(dy)).sum().backward()
    grads = {}
    for k, module in enumerate(modules):
        grads.update({name.replace("_l0", f"_l{k}"): p.grad.numpy()
                      for name, p in module.named_parameters()})
    return inputs.detach().numpy(), xt.grad.numpy(), grads


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_dropout_forward_and_backward_with_the_tapes_masks(cell, dtype, rng):
    layer = getattr(rk, cell.layer)(4, 5, 3, dropout=0.4, bidirectional=True, dtype=dtype,
                                    seed=2, **cell.layer_options)
    x = rng.standard_normal((6, 2, 4)).astype(dtype)
    y, _, tape = layer.forward(x)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx, _, grads = layer.backward(dy, tape)
    masks = {k: np.asarray(m) for k, m in tape.context["dropout_masks"].items()}
    assert sorted(masks) == [0, 1]                     # between layers, not after the last
    y_ref, dx_ref, grads_ref = _torch_with_masks(layer, x, dy, masks)
    tol = TOLERANCE[dtype]
    np.testing.assert_allclose(y, y_ref, **tol)
    np.testing.assert_allclose(dx, dx_ref, **tol)
    for name in grads:
        np.testing.assert_allclose(grads[name], grads_ref[name], **tol, err_msg=name)


def test_dropout_masks_keep_one_minus_p_and_scale_by_its_inverse():
    p = 0.3
    layer = rk.GRU(3, 64, 3, dropout=p, seed=0, dtype="float64")
    _, _, tape = layer.forward(np.ones((50, 40, 3)))
    for mask in tape.context["dropout_masks"].values():
        values = np.unique(mask)
        np.testing.assert_allclose(values, [0.0, 1.0 / (1.0 - p)])
        kept = np.mean(mask > 0)
        n = mask.size                                   # 128,000 draws: 5 sigma is 0.0064
        assert abs(kept - (1 - p)) < 5 * np.sqrt(p * (1 - p) / n)


def test_dropout_modes_and_seeding(rng):
    x = rng.standard_normal((5, 2, 3)).astype("float32")
    a, b = (rk.LSTM(3, 4, 2, dropout=0.5, seed=7) for _ in range(2))
    assert a.training                                   # torch's default mode
    y_a, y_b = a(x)[0], b(x)[0]
    np.testing.assert_array_equal(y_a, y_b)             # same seed, same masks
    assert not np.array_equal(a(x)[0], y_a)             # fresh masks on every call
    a.eval()
    assert not a.training
    np.testing.assert_array_equal(a(x)[0], a(x)[0])      # no dropout in eval mode
    reference = rk.LSTM(3, 4, 2, seed=7)                 # the same weights, no dropout
    np.testing.assert_allclose(a(x)[0], reference(x)[0], rtol=1e-6)
    assert a.forward(x)[2].context["dropout_masks"] == {}
    assert a.train() is a and a.training


def test_dropout_matches_torch_in_eval_mode(rng):
    layer = rk.LSTM(3, 4, 3, dropout=0.5, dtype="float64", seed=1).eval()
    module = torch_layer(layer)
    module.dropout = 0.5
    module.eval()
    x = rng.standard_normal((5, 2, 3))
    np.testing.assert_allclose(layer(x)[0], module(torch.from_numpy(x))[0].detach().numpy(),
                               **TOLERANCE["float64"])


def test_dropout_with_one_layer_warns_like_torch():
    with pytest.warns(UserWarning, match="dropout"):
        rk.GRU(3, 4, 1, dropout=0.2)


def test_sequential_switches_the_mode_of_its_layers():
    from rnnkern.training import Dense, Sequential
    model = Sequential(rk.LSTM(3, 4, 2, dropout=0.1), Dense(4, 2))
    model.eval()
    assert not model.layers[0].training
    model.train()
    assert model.layers[0].training
