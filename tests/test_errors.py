"""Bad input gets a clear ValueError/TypeError naming the argument."""

import numpy as np
import pytest

import rnnkern as rk


@pytest.fixture
def lstm():
    return rk.LSTM(4, 5, num_layers=2, seed=0)


@pytest.fixture
def x():
    return np.zeros((6, 3, 4), np.float32)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(input_size=0), ValueError, "input_size"),
    (dict(input_size=2.5), TypeError, "input_size"),
    (dict(hidden_size=-1), ValueError, "hidden_size"),
    (dict(num_layers=0), ValueError, "num_layers"),
    (dict(bidirectional="yes"), TypeError, "bidirectional"),
    (dict(batch_first=None), TypeError, "batch_first"),
    (dict(bias=1), TypeError, "bias"),
    (dict(dtype="int32"), TypeError, "dtype"),
    (dict(dtype="complex64"), TypeError, "dtype"),
    (dict(dtype="float16"), TypeError, "dtype"),
    (dict(device="tpu"), ValueError, "device"),
    (dict(dropout=1.0), ValueError, "dropout"),
    (dict(dropout=-0.1), ValueError, "dropout"),
    (dict(dropout="0.5"), TypeError, "dropout"),
    (dict(proj_size=2), ValueError, "proj_size"),
    (dict(seed="abc"), TypeError, "seed"),
])
def test_bad_constructor_arguments(kwargs, error, match):
    args = dict(input_size=4, hidden_size=5)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        rk.GRU(**args)


def test_bad_nonlinearity_and_projection():
    with pytest.raises(ValueError, match="nonlinearity"):
        rk.RNN(3, 4, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match=r"proj_size: expected 0 \(none\) or an integer in \[1, hidden_size\)"):
        rk.LSTM(3, 4, proj_size=4)
    with pytest.raises(ValueError, match="proj_size"):
        rk.LSTM(3, 4, proj_size=-1)
    with pytest.raises(TypeError, match="proj_size"):
        rk.LSTM(3, 4, proj_size=1.5)
    for layer in (rk.RNN, rk.GRU):
        with pytest.raises(ValueError, match="proj_size: only a cell with a projection"):
            layer(3, 4, proj_size=2)


@pytest.mark.parametrize("bad,error,match", [
    (np.zeros((6, 3, 4, 1), np.float32), ValueError, "x: expected a"),
    (np.zeros((6,), np.float32), ValueError, "x: expected a"),
    (np.zeros((6, 3, 5), np.float32), ValueError, r"x: expected shape \(\*, \*, 4\)"),
    (np.zeros((6, 3, 4), np.int64), TypeError, "x: expected dtype float32"),
    (np.zeros((6, 3, 4), np.complex64), TypeError, "x: expected dtype float32"),
    (np.zeros((6, 3, 4), np.float64), TypeError, "x: expected dtype float32"),
    (np.zeros((0, 3, 4), np.float32), ValueError, "x: expected no empty axis"),
    (np.zeros((6, 0, 4), np.float32), ValueError, "x: expected no empty axis"),
    ([[[0.0] * 4] * 3] * 6, TypeError, "x: expected an array"),
    ("abc", TypeError, "x: expected an array"),
])
def test_bad_x(lstm, bad, error, match):
    with pytest.raises(error, match=match):
        lstm.forward(bad)


def test_bad_states(lstm, x):
    h = np.zeros((4, 3, 5), np.float32)
    with pytest.raises(ValueError, match="state h0: expected shape"):
        lstm.forward(x, (np.zeros((1, 3, 5), np.float32), np.zeros((2, 3, 5), np.float32)))
    with pytest.raises(ValueError, match="state c0: expected shape"):
        lstm.forward(x, (np.zeros((2, 3, 5), np.float32), np.zeros((2, 3, 4), np.float32)))
    with pytest.raises(TypeError, match="state: expected a pair"):
        lstm.forward(x, h)
    with pytest.raises(ValueError, match="both h and c"):
        lstm.forward(x, (None, np.zeros((2, 3, 5), np.float32)))
    with pytest.raises(TypeError, match="state h0: expected dtype"):
        lstm.forward(x, (np.zeros((2, 3, 5)), np.zeros((2, 3, 5))))
    gru = rk.GRU(4, 5, seed=0)
    with pytest.raises(TypeError, match="state: expected one array"):
        gru.forward(x, (h[:1], h[:1]))
    with pytest.raises(ValueError, match="state: expected shape"):
        gru.forward(x, np.zeros((1, 2, 5), np.float32))


@pytest.mark.parametrize("lengths,error,match", [
    ([6, 6], ValueError, "expected 3 lengths"),
    ([6, 6, 6, 6], ValueError, "expected 3 lengths"),
    ([0, 6, 6], ValueError, r"lengths: expected every length in \[1, 6\]"),
    ([7, 1, 1], ValueError, r"lengths: expected every length in \[1, 6\]"),
    ([-1, 1, 1], ValueError, r"lengths: expected every length in \[1, 6\]"),
    ([1.5, 2, 3], TypeError, "lengths: expected integers"),
    (np.array([1.0, 2.0, 3.0]), TypeError, "lengths: expected integers"),
    ([[1, 2, 3]], ValueError, "lengths: expected a 1-D"),
    ("abc", TypeError, "lengths: expected integers"),
])
def test_bad_lengths(lstm, x, lengths, error, match):
    with pytest.raises(error, match=match):
        lstm.forward(x, lengths=lengths)


def test_lengths_not_accepted_with_unbatched_input(lstm):
    with pytest.raises(ValueError, match="lengths"):
        lstm.forward(np.zeros((6, 4), np.float32), lengths=[3])


def test_bad_backward_arguments(lstm, x):
    y, state, tape = lstm.forward(x)
    with pytest.raises(ValueError, match=r"dy: expected shape \(6, 3, 5\)"):
        lstm.backward(np.zeros((6, 3, 4), np.float32), tape)
    with pytest.raises(TypeError, match="dy: expected dtype float32"):
        lstm.backward(np.zeros((6, 3, 5)), tape)
    with pytest.raises(TypeError, match="tape: expected the Tape"):
        lstm.backward(np.zeros_like(y), {"not": "a tape"})
    other = rk.LSTM(4, 5, num_layers=2, seed=0)
    _, _, other_tape = other.forward(x)
    with pytest.raises(ValueError, match="tape: it was recorded by another layer"):
        lstm.backward(np.zeros_like(y), other_tape)
    with pytest.raises(ValueError, match="dstate h: expected shape"):
        lstm.backward(np.zeros_like(y), tape, (np.zeros((4, 3, 5), np.float32),
                                               np.zeros((2, 3, 5), np.float32)))
    with pytest.raises(ValueError, match="dstate c: expected shape"):
        lstm.backward(np.zeros_like(y), tape, (np.zeros((2, 3, 5), np.float32),
                                               np.zeros((2, 1, 5), np.float32)))


def test_stale_tape_after_loading_weights(lstm, x):
    y, _, tape = lstm.forward(x)
    lstm.load_state_dict(lstm.state_dict())
    with pytest.raises(ValueError, match="tape: the parameters changed"):
        lstm.backward(np.zeros_like(y), tape)


def test_mixed_libraries_are_one_clear_type_error(lstm, x):
    array_api_strict = pytest.importorskip("array_api_strict")
    h = array_api_strict.zeros((2, 3, 5), dtype=array_api_strict.float32)
    with pytest.raises(TypeError, match="one array library"):
        lstm.forward(x, (h, h))


def test_bad_state_dicts(lstm):
    good = lstm.state_dict()
    before = {k: v.copy() for k, v in good.items()}
    with pytest.raises(ValueError, match="missing keys"):
        lstm.load_state_dict({k: v for k, v in good.items() if k != "bias_hh_l1"})
    with pytest.raises(ValueError, match="unexpected keys"):
        lstm.load_state_dict(dict(good, extra=np.zeros(3)))
    with pytest.raises(ValueError, match=r"state_dict\['weight_hh_l0'\]: expected shape"):
        lstm.load_state_dict(dict(good, weight_hh_l0=np.zeros((20, 4))))
    with pytest.raises(TypeError, match=r"state_dict\['bias_ih_l0'\]"):
        lstm.load_state_dict(dict(good, bias_ih_l0="zeros"))
    with pytest.raises(TypeError, match="state_dict: expected a mapping"):
        lstm.load_state_dict([1, 2, 3])
    for k, v in lstm.state_dict().items():      # a failed load leaves the layer as it was
        np.testing.assert_array_equal(v, before[k])
