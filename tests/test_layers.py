"""Layer mechanics: names, initialisation, state_dict interchange, the parameters tapes
share, import hygiene."""

import copy
import inspect
import pickle
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
import torch

import rnnkern as rk
from conftest import TOLERANCE, make_layer
from rnnkern.devices import cuda_device_count
from torch_oracle import torch_layer


@pytest.mark.parametrize("bias", [True, False])
def test_parameter_names_shapes_and_order_match_torch(cell, bias):
    if not cell.torch_oracle:
        pytest.skip(f"torch.nn has no {cell.name}")
    ours = make_layer(cell, 3, 5, 3, bias=bias, bidirectional=True).state_dict()
    theirs = getattr(torch.nn, cell.layer)(3, 5, 3, bias=bias, bidirectional=True,
                                           **cell.layer_options).state_dict()
    assert list(ours) == list(theirs)
    assert all(ours[k].shape == tuple(theirs[k].shape) for k in ours)


def test_initialisation_is_seeded_and_uniform_like_torch():
    a, b = rk.GRU(3, 16, seed=5).state_dict(), rk.GRU(3, 16, seed=5).state_dict()
    c = rk.GRU(3, 16, seed=6).state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["weight_hh_l0"], c["weight_hh_l0"])
    bound = 1 / np.sqrt(16)
    values = np.concatenate([v.ravel() for v in a.values()])
    assert values.dtype == np.float32
    assert np.abs(values).max() <= bound and np.abs(values).max() > 0.9 * bound


def test_load_state_dict_from_torch_tensors_through_dlpack(rng):
    module = torch.nn.LSTM(3, 4, 2, dtype=torch.float64)
    lstm = rk.LSTM(3, 4, 2, dtype="float64")
    lstm.load_state_dict({k: v.detach() for k, v in module.state_dict().items()})
    x = rng.standard_normal((5, 2, 3))
    y, _ = lstm(x)
    np.testing.assert_allclose(y, module(torch.from_numpy(x))[0].detach().numpy(), **TOLERANCE["float64"])


def test_load_state_dict_copies_and_casts(rng):
    gru = rk.GRU(2, 3, dtype="float32")
    sd = {k: v.astype(np.float64) for k, v in gru.state_dict().items()}
    gru.load_state_dict(sd)
    sd["weight_ih_l0"][...] = 7.0            # changing the source later changes nothing
    assert gru.state_dict()["weight_ih_l0"].dtype == np.float32
    assert not np.any(gru.state_dict()["weight_ih_l0"] == 7.0)


def test_state_dict_returns_copies():
    rnn = rk.RNN(2, 3, seed=0)
    sd = rnn.state_dict()
    sd["weight_hh_l0"][...] = 0
    assert np.any(rnn.state_dict()["weight_hh_l0"] != 0)


def test_lengths_give_zeros_past_the_end_and_states_at_each_own_end(rng):
    lstm = rk.LSTM(2, 3, seed=0, dtype="float64")
    x = rng.standard_normal((6, 2, 2))
    y, (h, c), _ = lstm.forward(x, lengths=[6, 2])
    assert np.all(y[2:, 1] == 0)
    y_short, (h_short, c_short), _ = lstm.forward(x[:2, 1:])
    np.testing.assert_allclose(h[:, 1], h_short[:, 0], rtol=1e-13)
    np.testing.assert_allclose(y[:2, 1], y_short[:, 0], rtol=1e-13)


def test_lengths_accepted_as_list_numpy_or_array_of_the_library(rng):
    gru = rk.GRU(2, 3, seed=0)
    x = rng.standard_normal((4, 3, 2)).astype("float32")
    outs = [gru.forward(x, lengths=L)[0] for L in ([4, 1, 2], (4, 1, 2), np.array([4, 1, 2], np.int32))]
    assert all(np.array_equal(outs[0], o) for o in outs)


def test_inputs_are_never_modified(rng):
    lstm = rk.LSTM(3, 4, 2, bidirectional=True, seed=0)
    x = rng.standard_normal((5, 2, 3)).astype("float32")
    h0, c0 = (rng.standard_normal((4, 2, 4)).astype("float32") for _ in range(2))
    copies = [a.copy() for a in (x, h0, c0)]
    y, (h, c), tape = lstm.forward(x, (h0, c0), lengths=[5, 3])
    dy = rng.standard_normal(y.shape).astype("float32")
    dh, dc = np.ones_like(h), np.ones_like(c)
    grads_in = [a.copy() for a in (dy, dh, dc)]
    lstm.backward(dy, tape, (dh, dc))
    lstm.backward(dy, tape, (dh, dc))       # a tape can be used twice
    for a, b in zip((x, h0, c0, dy, dh, dc), copies + grads_in):
        np.testing.assert_array_equal(a, b)


@pytest.mark.skipif(cuda_device_count() > 0, reason="a CUDA device is present")
def test_cuda_device_without_a_gpu_is_a_clear_error():
    with pytest.raises(RuntimeError, match="device 'cuda'"):
        rk.LSTM(2, 3, device="cuda")


def test_import_does_not_import_cupy_or_torch():
    code = ("import sys, rnnkern, rnnkern.recurrent, rnnkern.backends.numba, rnnkern.training; "
            "bad = [m for m in ('cupy', 'torch') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_repr_names_the_configuration():
    text = repr(rk.RNN(2, 3, nonlinearity="relu", bidirectional=True))
    assert "RNN(2, 3" in text and "relu" in text and "bidirectional=True" in text


def test_torch_layer_helper_roundtrip():
    gru = rk.GRU(2, 3, seed=0)
    assert set(torch_layer(gru).state_dict()) == set(gru.state_dict())


def test_tape_keeps_the_parameters_it_ran_with(rng):
    """An in-place update between forward and backward (an optimizer step) does
    not change the gradients of the recorded forward."""
    lstm = rk.LSTM(3, 4, seed=0, dtype="float64")
    x = rng.standard_normal((5, 2, 3))
    y, _, tape = lstm.forward(x)
    dy = rng.standard_normal(y.shape)
    expected = lstm.backward(dy, tape)
    y, _, tape = lstm.forward(x)
    for p in lstm.parameters().values():
        p -= 0.5                                   # what an in-place optimizer does
    got = lstm.backward(dy, tape)
    np.testing.assert_array_equal(got[0], expected[0])
    for name in expected[2]:
        np.testing.assert_array_equal(got[2][name], expected[2][name])


def test_tapes_share_the_parameters_and_lock_them_until_parameters_is_called(rng):
    """Forwards with tapes copy no parameter (TapeParameters): the layer's arrays
    are read-only while a tape holds them, so a write through an array fetched
    before the forward fails instead of changing the tape's gradients;
    ``parameters()`` gives the tapes copies first and unlocks."""
    gru = rk.GRU(3, 4, 2, seed=0, dtype="float64", bidirectional=True)
    x = rng.standard_normal((5, 2, 3))
    dy = rng.standard_normal((5, 2, 8))
    y, _, tape = gru.forward(x)
    expected = gru.backward(dy, tape)
    fetched = gru.parameters()["weight_hh_l1_reverse"]
    y, _, tape = gru.forward(x)
    assert not fetched.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        fetched += 1.0
    np.testing.assert_array_equal(gru(x)[0], y)        # inference reads the locked arrays
    for p in gru.parameters().values():                 # the door: copies for the tape
        assert p.flags.writeable
        p *= 0.5
    got = gru.backward(dy, tape)
    np.testing.assert_array_equal(got[0], expected[0])
    for name in expected[2]:
        np.testing.assert_array_equal(got[2][name], expected[2][name])
    assert not np.array_equal(gru(x)[0], y)             # while the layer runs the new values

    # A tape dropped unlocks the arrays; one detached earlier does not unlock the
    # arrays a later tape holds.
    _, _, first = gru.forward(x)
    gru.parameters()
    _, _, second = gru.forward(x)
    del first
    assert not fetched.flags.writeable
    del second
    assert fetched.flags.writeable


def test_steps_of_a_cell_kept_for_backpropagation_share_one_parameter_set(rng):
    """T forwards of a single-step cell, each with its tape (backpropagation
    through time by hand), keep the parameters once, not T times."""
    cell = rk.LSTMCell(64, 128, seed=0)
    x = rng.standard_normal((1, 64)).astype(np.float32)
    parameter_bytes = sum(p.nbytes for p in cell.parameters().values())
    state, _ = cell.forward(x)                           # compiled, workspaces made
    tracemalloc.start()
    try:
        tapes = []
        for _ in range(20):
            state, tape = cell.forward(x, state)
            tapes.append(tape)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held < parameter_bytes, (held, parameter_bytes)
    dstate = tuple(np.ones_like(s) for s in state)
    for tape in reversed(tapes):
        _, dstate, _ = cell.backward(dstate, tape)
    assert np.isfinite(dstate[0]).all()


def test_tied_weights_keep_each_tape_right(rng):
    """Two layers holding one array (tied weights): each tape keeps the values
    its forward ran with, whichever layer's ``parameters()`` the update uses."""
    first = rk.RNN(4, 4, seed=0, dtype="float64")
    second = rk.RNN(4, 4, seed=1, dtype="float64")
    second.parameters()["weight_hh_l0"] = first.parameters()["weight_hh_l0"]
    x = rng.standard_normal((3, 2, 4))
    dy = rng.standard_normal((3, 2, 4))
    expected = [layer.backward(dy, layer.forward(x)[2]) for layer in (first, second)]
    tapes = [layer.forward(x)[2] for layer in (first, second)]
    for writer in (first, second):
        writer.parameters()["weight_hh_l0"][...] += 0.25
        for layer, tape, want in zip((first, second), tapes, expected):
            got = layer.backward(dy, tape)
            np.testing.assert_array_equal(got[0], want[0])
            np.testing.assert_array_equal(got[2]["weight_hh_l0"], want[2]["weight_hh_l0"])


def test_layers_replaced_in_the_parameter_dict_are_what_runs(rng):
    """An entry of ``parameters()`` replaced while a tape locks the old array:
    the next call runs the new one."""
    rnn = rk.RNN(3, 4, seed=0, dtype="float64")
    x = rng.standard_normal((5, 2, 3))
    params = rnn.parameters()
    _, _, tape = rnn.forward(x)
    params["weight_hh_l0"] = np.zeros((4, 4))
    reference = rk.RNN(3, 4, seed=0, dtype="float64")
    reference.parameters()["weight_hh_l0"][...] = 0.0
    np.testing.assert_array_equal(rnn(x)[0], reference(x)[0])
    assert tape is not None                            # alive (locking the old array) till here


def test_layers_with_live_tapes_pickle_and_copy(rng):
    lstm = rk.LSTM(3, 4, seed=0)
    x = rng.standard_normal((5, 2, 3)).astype(np.float32)
    y, _, tape = lstm.forward(x)                       # the live tape locks lstm's arrays
    for clone in (pickle.loads(pickle.dumps(lstm)), copy.deepcopy(lstm)):
        assert all(p.flags.writeable for p in clone.parameters().values())
        np.testing.assert_array_equal(clone(x)[0], y)


def test_the_kernels_never_see_read_only_parameters(rng):
    """The locked arrays reach the kernels as writable views: Numba compiles a
    read-only array as a type of its own (a second compile of every driver)."""
    from rnnkern.kernels.numba import drivers
    lstm = rk.LSTM(3, 4, seed=0, proj_size=2)
    x = rng.standard_normal((5, 2, 3)).astype(np.float32)
    y, _, tape = lstm.forward(x)
    lstm(x)                                            # inference while the tape locks them
    lstm.backward(np.ones_like(y), tape)
    for driver in (drivers.forward_sequence, drivers.backward_sequence):
        names = list(inspect.signature(driver.py_func).parameters)
        weights = [k for k, name in enumerate(names) if name.startswith(("w_", "b_"))]
        assert weights
        for signature in driver.signatures:
            assert all(signature[k].mutable for k in weights), (driver, signature)
