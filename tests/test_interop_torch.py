"""rnnkern.interop.from_torch / to_torch: torch.nn modules in and out.

The oracle is the torch module itself: the converted layer must compute what
the module computes (float64 1e-10, float32 1e-5) and carry its options, and
the way back must give the same ``state_dict``, bit for bit.
"""

import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st

import rnnkern as rk
from conftest import ALL_CELLS, CELL_IDS, TOLERANCE
from rnnkern.interop import from_torch, to_torch
from rnnkern.training import Dense

TORCH_CELLS = [c for c in ALL_CELLS if c.torch_oracle]
TORCH_IDS = [name for c, name in zip(ALL_CELLS, CELL_IDS) if c.torch_oracle]


def torch_module(cell, *args, **kwargs):
    """``torch.nn.<cell.layer>`` with the cell's options."""
    return getattr(torch.nn, cell.layer)(*args, **cell.layer_options, **kwargs)


def as_numpy(t):
    return t.detach().numpy()


def assert_same_state_dict(a, b):
    assert list(a) == list(b)
    for name in a:
        np.testing.assert_array_equal(np.asarray(a[name]), np.asarray(b[name]), err_msg=name)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("cell", TORCH_CELLS, ids=TORCH_IDS)
@given(data=st.data())
def test_from_torch_computes_what_the_module_computes(cell, dtype, data):
    I, H, T, B = (data.draw(st.integers(1, 5), label=n) for n in "IHTB")
    options = dict(num_layers=data.draw(st.integers(1, 3), label="num_layers"),
                   bias=data.draw(st.booleans(), label="bias"),
                   batch_first=data.draw(st.booleans(), label="batch_first"),
                   bidirectional=data.draw(st.booleans(), label="bidirectional"))
    torch.manual_seed(data.draw(st.integers(0, 2**16), label="seed"))
    module = torch_module(cell, I, H, dtype=getattr(torch, dtype), **options)
    before = {k: v.clone() for k, v in module.state_dict().items()}

    layer = from_torch(module)

    assert type(layer) is getattr(rk, cell.layer) and layer.cell is cell
    assert (layer.input_size, layer.hidden_size, layer.dtype) == (I, H, dtype)
    assert {k: getattr(layer, k) for k in options} == options
    assert_same_state_dict(layer.state_dict(), module.state_dict())
    x = np.random.default_rng(0).standard_normal((B, T, I) if options["batch_first"]
                                                 else (T, B, I)).astype(dtype)
    y, state = layer(x)
    y_torch, state_torch = module(torch.from_numpy(x))
    np.testing.assert_allclose(y, as_numpy(y_torch), **TOLERANCE[dtype])
    states = state if cell.num_states > 1 else (state,)
    states_torch = state_torch if cell.num_states > 1 else (state_torch,)
    for s, s_torch in zip(states, states_torch):
        np.testing.assert_allclose(s, as_numpy(s_torch), **TOLERANCE[dtype])

    back = to_torch(layer)
    assert type(back) is type(module) and back.training == module.training
    assert repr(back) == repr(module)                  # every constructor option
    assert_same_state_dict(back.state_dict(), module.state_dict())
    assert_same_state_dict(module.state_dict(), before)   # the module is untouched


def test_the_weights_are_copied_not_shared():
    module = torch.nn.LSTM(3, 4)
    layer = from_torch(module)
    layer.parameters()["weight_ih_l0"][...] = 7.0
    assert not torch.any(module.weight_ih_l0 == 7.0)
    back = to_torch(layer)
    layer.parameters()["weight_hh_l0"][...] = 5.0
    assert not torch.any(back.weight_hh_l0 == 5.0)


def test_float64_state_dicts_round_trip_to_the_bit():
    module = torch.nn.GRU(2, 3, num_layers=2, bidirectional=True, dtype=torch.float64)
    assert_same_state_dict(to_torch(from_torch(module)).state_dict(), module.state_dict())


def test_the_mode_goes_both_ways():
    module = torch.nn.GRU(2, 3, num_layers=2).eval()
    layer = from_torch(module)
    assert layer.training is False
    assert to_torch(layer).training is False
    layer.train()
    assert to_torch(layer).training is True


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_proj_size_and_dropout_come_across(dtype):
    torch.manual_seed(0)
    module = torch.nn.LSTM(3, 4, num_layers=2, proj_size=2, dropout=0.5, bidirectional=True,
                           dtype=getattr(torch, dtype)).eval()   # eval: no dropout masks
    layer = from_torch(module)
    assert (layer.proj_size, layer.dropout) == (2, 0.5)
    x = np.random.default_rng(1).standard_normal((5, 2, 3)).astype(dtype)
    y, (h, c) = layer(x)
    y_torch, (h_torch, c_torch) = module(torch.from_numpy(x))
    for ours, theirs in ((y, y_torch), (h, h_torch), (c, c_torch)):
        np.testing.assert_allclose(ours, as_numpy(theirs), **TOLERANCE[dtype])
    back = to_torch(layer)
    assert repr(back) == repr(module)
    assert_same_state_dict(back.state_dict(), module.state_dict())


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("cell", TORCH_CELLS, ids=TORCH_IDS)
def test_single_step_cells_come_across(cell, dtype, bias):
    torch.manual_seed(3)
    module = getattr(torch.nn, cell.layer + "Cell")(3, 5, bias=bias, dtype=getattr(torch, dtype),
                                                    **cell.layer_options)
    ours = from_torch(module)
    assert type(ours) is getattr(rk, cell.layer + "Cell") and ours.cell is cell
    assert_same_state_dict(ours.state_dict(), module.state_dict())
    rng = np.random.default_rng(2)
    for shape in ((4, 3), (3,)):                                # batched and unbatched
        x = rng.standard_normal(shape).astype(dtype)
        states = tuple(rng.standard_normal(shape[:-1] + (5,)).astype(dtype)
                       for _ in cell.state_names)
        state = states if cell.num_states > 1 else states[0]
        out = ours(x, state)
        expected = module(torch.from_numpy(x),
                          tuple(map(torch.from_numpy, states)) if cell.num_states > 1
                          else torch.from_numpy(states[0]))
        pairs = zip(out, expected) if cell.num_states > 1 else [(out, expected)]
        for a, b in pairs:
            np.testing.assert_allclose(a, as_numpy(b), **TOLERANCE[dtype])
    back = to_torch(ours)
    assert type(back) is type(module) and repr(back) == repr(module)
    assert_same_state_dict(back.state_dict(), module.state_dict())


class MyLSTM(torch.nn.LSTM):
    pass


@pytest.mark.parametrize("module, got", [
    (torch.nn.Linear(2, 3), "torch.nn.modules.linear.Linear"),
    (torch.nn.Conv1d(2, 3, 1), "Conv1d"),
    (MyLSTM(2, 3), "MyLSTM"),
    (np.zeros((2, 3)), "numpy.ndarray"),
    ("LSTM", "str"),
], ids=["Linear", "Conv1d", "subclass", "array", "string"])
def test_a_module_of_another_kind_is_a_type_error(module, got):
    with pytest.raises(TypeError, match=rf"module: expected one of torch\.nn\.RNN.*got .*{got}"):
        from_torch(module)


def test_a_dtype_rnnkern_does_not_compute_is_named():
    with pytest.raises(TypeError, match="dtype: expected.*float16"):
        from_torch(torch.nn.GRU(2, 3, dtype=torch.float16))


@pytest.mark.parametrize("layer", [Dense(2, 3), torch.nn.LSTM(2, 3), None],
                         ids=["Dense", "torch module", "None"])
def test_to_torch_of_another_kind_is_a_type_error(layer):
    with pytest.raises(TypeError, match="layer: expected an rnnkern layer or cell"):
        to_torch(layer)


def test_importing_the_interop_imports_neither_torch_nor_keras():
    code = ("import sys, numpy, rnnkern, rnnkern.interop as interop\n"
            "for bad in (numpy.zeros(2), 'x'):\n"
            "    try: interop.from_torch(bad)\n"
            "    except TypeError: pass\n"
            "    try: interop.from_keras(bad)\n"
            "    except TypeError: pass\n"
            "loaded = [m for m in ('torch', 'keras') if m in sys.modules]\n"
            "assert not loaded, loaded\n")
    subprocess.run([sys.executable, "-c", code], check=True)
