"""rnnkern.interop.from_keras / to_keras: Keras 3 models in and out.

The oracle is Keras's own ``predict`` on its torch backend (Keras's NumPy
backend imports JAX).  Two Keras 3 habits stand between ``predict`` and true
float64, and the ``float64`` fixture turns both off for the test: on every
backend but TensorFlow its type promotion maps float64 to float32
(``keras.src.backend.common.dtypes.BIT64_TO_BIT32_DTYPE``, so a float64
``Dense`` or ``SimpleRNN`` multiplies in float32), and ``predict`` casts its
input to ``floatx``.
"""

import os

import numpy as np
import pytest

os.environ["KERAS_BACKEND"] = "torch"      # before keras is imported, here or anywhere
keras = pytest.importorskip("keras", reason="Keras 3 is not installed (pip install keras)")
if keras.backend.backend() != "torch":
    pytest.skip(f"Keras was already imported with the {keras.backend.backend()} backend",
                allow_module_level=True)

import rnnkern as rk                                         # noqa: E402
from conftest import TOLERANCE, DoublingLayer, make_layer    # noqa: E402
from rnnkern.interop import from_keras, to_keras            # noqa: E402
from rnnkern.recurrent import RecurrentLayer                # noqa: E402
from rnnkern.training import Dense, Embedding, LastTimestep, Sequential   # noqa: E402

pytestmark = pytest.mark.filterwarnings(     # Keras's torch backend calls np.array(tensor)
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")

KERAS_CLASS = {"RNN": "SimpleRNN", "LSTM": "LSTM", "GRU": "GRU"}   # for readable model code


@pytest.fixture(params=["float32", "float64"])
def dtype(request, monkeypatch):
    """The dtype of a test, with Keras computing float64 in float64."""
    if request.param == "float64":
        from keras.src.backend.common import dtypes
        monkeypatch.setitem(dtypes.BIT64_TO_BIT32_DTYPE, "float64", "float64")
        floatx = keras.config.floatx()
        keras.config.set_floatx("float64")
        request.addfinalizer(lambda: keras.config.set_floatx(floatx))
    return request.param


def predict(model, x):
    return model.predict(x, verbose=0)


def randomize(keras_model, seed=0):
    """Every Keras weight from U(-0.5, 0.5): the biases too (Keras starts them at 0)."""
    rng = np.random.default_rng(seed)
    keras_model.set_weights([rng.uniform(-0.5, 0.5, w.shape).astype(w.dtype)
                             for w in keras_model.get_weights()])
    return keras_model


def sequences(dtype, shape=(3, 7, 2), seed=1):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def run(model, x):
    return model.forward(x)[0]


# --------------------------------------------------------------------------- round trips

@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("return_sequences", [True, False], ids=["sequences", "last"])
def test_round_trip_through_keras(cell, return_sequences, dtype, bias, bidirectional):
    I, H = 2, 3
    layer = make_layer(cell, I, H, bias=bias, batch_first=True, bidirectional=bidirectional,
                       dtype=dtype, seed=4)
    tail = [] if return_sequences else [LastTimestep(batch_first=True,
                                                     bidirectional=bidirectional)]
    model = Sequential(layer, *tail, Dense(layer.num_directions * H, 2, dtype=dtype, seed=5))
    x = sequences(dtype)
    expected = run(model, x)

    keras_model = to_keras(model)

    rnn = keras_model.layers[0]
    inner = rnn.forward_layer if bidirectional else rnn
    assert type(inner).__name__ == KERAS_CLASS[cell.layer]
    assert inner.return_sequences is return_sequences and inner.use_bias is bias
    np.testing.assert_allclose(predict(keras_model, x), expected, **TOLERANCE[dtype])

    back = from_keras(keras_model)

    assert [type(a) for a in back.layers] == [type(a) for a in model.layers]
    assert back.layers[0].cell is cell and back.layers[0].dtype == dtype
    if not return_sequences:
        assert back.layers[1].bidirectional is bidirectional
    np.testing.assert_allclose(run(back, x), expected, **TOLERANCE[dtype])
    ours, theirs = model.state_dict(), back.state_dict()
    for name, value in ours.items():
        if "bias_hh" in name:                 # Keras's one bias: b_ih + b_hh, or both (GRU)
            name_ih = name.replace("bias_hh", "bias_ih")
            np.testing.assert_allclose(theirs[name_ih] + theirs[name], ours[name_ih] + value,
                                       **TOLERANCE[dtype])
        elif "bias_ih" not in name:           # kernels and Dense: exactly the same numbers
            np.testing.assert_array_equal(theirs[name], value, err_msg=name)


@pytest.mark.parametrize("keras_class", ["SimpleRNN", "LSTM", "GRU"])
def test_the_tutorial_models_come_across(keras_class):
    """``<Layer>(50, input_shape=(10, 1))`` then ``Dense(1)``, and the parameter counts."""
    keras_model = randomize(keras.Sequential([keras.Input((10, 1)),
                                              getattr(keras.layers, keras_class)(50),
                                              keras.layers.Dense(1)]))
    x = sequences("float32", (8, 10, 1))

    model = from_keras(keras_model)

    assert [type(layer).__name__ for layer in model.layers] == [
        "RNN" if keras_class == "SimpleRNN" else keras_class, "LastTimestep", "Dense"]
    np.testing.assert_allclose(run(model, x), predict(keras_model, x), **TOLERANCE["float32"])
    # torch's second bias: G*H = 50 (SimpleRNN), 200 (LSTM) more parameters; Keras's GRU
    # (reset_after=True) keeps both biases already.
    extra = {"SimpleRNN": 50, "LSTM": 200, "GRU": 0}[keras_class]
    total = model.summary((None, 10, 1), print_fn=lambda text: None).split("Total params: ")[1]
    assert int(total.split()[0].replace(",", "")) == keras_model.count_params() + extra
    bias_hh = model.state_dict()["0.bias_hh_l0"]
    assert (bias_hh == 0).all() == (extra > 0)


def test_a_keras_text_classifier_comes_across(dtype):
    """Embedding -> Bidirectional(LSTM) with return_sequences=False -> Dense, Keras's usual
    many-to-one model on token ids, both ways."""
    keras_model = randomize(keras.Sequential([
        keras.Input((None,), dtype="int32"), keras.layers.Embedding(11, 4, dtype=dtype),
        keras.layers.Bidirectional(keras.layers.LSTM(3, dtype=dtype), dtype=dtype),
        keras.layers.Dense(2, dtype=dtype)]))
    ids = np.random.default_rng(2).integers(0, 11, (5, 9)).astype(np.int32)

    model = from_keras(keras_model)

    assert [type(layer).__name__ for layer in model.layers] == [
        "Embedding", "LSTM", "LastTimestep", "Dense"]
    assert model.layers[1].bidirectional and model.layers[2].bidirectional
    np.testing.assert_allclose(run(model, ids), predict(keras_model, ids), **TOLERANCE[dtype])
    back = to_keras(model)
    assert type(back.layers[0]).__name__ == "Embedding"
    np.testing.assert_allclose(predict(back, ids), predict(keras_model, ids), **TOLERANCE[dtype])
    lone = to_keras(model.layers[0])
    assert lone.built
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(lone(ids)), run(model.layers[0], ids))


def test_a_masking_keras_embedding_is_refused():
    layer = keras.layers.Embedding(5, 2, mask_zero=True)
    layer.build((None, 3))
    with pytest.raises(ValueError, match=r"layer_or_model: Embedding with mask_zero=True has no "
                                         r"rnnkern equivalent"):
        from_keras(layer)


def test_a_stacked_bidirectional_float64_model_comes_across(dtype):
    keras_model = randomize(keras.Sequential([
        keras.Input((6, 3), dtype=dtype),
        keras.layers.Bidirectional(keras.layers.GRU(4, return_sequences=True, dtype=dtype),
                                   dtype=dtype),
        keras.layers.LSTM(5, return_sequences=True, dtype=dtype),
        keras.layers.SimpleRNN(2, activation="relu", dtype=dtype),
        keras.layers.Dense(3, dtype=dtype), keras.layers.Dense(1, use_bias=False, dtype=dtype)]))
    x = sequences(dtype, (4, 6, 3))

    model = from_keras(keras_model)

    assert model.layers[0].bidirectional and model.layers[2].nonlinearity == "relu"
    np.testing.assert_allclose(run(model, x), predict(keras_model, x), **TOLERANCE[dtype])
    np.testing.assert_allclose(predict(to_keras(model), x), predict(keras_model, x),
                               **TOLERANCE[dtype])


@pytest.mark.parametrize("return_sequences", [True, False], ids=["sequences", "last"])
def test_a_single_keras_layer_comes_across(cell, dtype, return_sequences):
    rnn = getattr(keras.layers, KERAS_CLASS[cell.layer])(
        3, return_sequences=return_sequences, dtype=dtype, **(
            {"activation": cell.layer_options["nonlinearity"]} if cell.layer_options else {}))
    rnn.build((None, None, 2))
    randomize(rnn)
    x = sequences(dtype)

    ours = from_keras(rnn)

    if return_sequences:
        assert isinstance(ours, RecurrentLayer) and ours.batch_first and ours.cell is cell
    else:
        assert [type(a) for a in ours.layers] == [type(make_layer(cell, 2, 3)), LastTimestep]
    expected = keras.ops.convert_to_numpy(rnn(x))
    got = ours(x)[0] if return_sequences else run(ours, x)
    np.testing.assert_allclose(got, expected, **TOLERANCE[dtype])


def test_a_multi_layer_rnnkern_layer_becomes_a_keras_sequential(cell, dtype):
    layer = make_layer(cell, 2, 3, num_layers=3, bidirectional=True, batch_first=True,
                       dtype=dtype, seed=0)
    x = sequences(dtype)

    keras_model = to_keras(layer)

    assert len(keras_model.layers) == 3
    np.testing.assert_allclose(predict(keras_model, x), layer(x)[0], **TOLERANCE[dtype])


def test_a_single_rnnkern_layer_becomes_a_built_keras_layer(dtype):
    gru = rk.GRU(2, 3, batch_first=True, dtype=dtype, seed=0)
    dense = Dense(3, 2, dtype=dtype, seed=1)
    x = sequences(dtype)
    keras_gru, keras_dense = to_keras(gru), to_keras(dense)
    y = keras.ops.convert_to_numpy(keras_gru(x))
    np.testing.assert_allclose(y, gru(x)[0], **TOLERANCE[dtype])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(keras_dense(y)), run(dense, y),
                               **TOLERANCE[dtype])


def test_keras_takes_batch_first_input_whatever_the_rnnkern_layout():
    lstm = rk.LSTM(2, 3, batch_first=False, seed=0)
    x = sequences("float32")                                    # (B, T, I) for Keras
    y = keras.ops.convert_to_numpy(to_keras(lstm)(x))
    np.testing.assert_allclose(y, lstm(x.transpose(1, 0, 2))[0].transpose(1, 0, 2),
                               **TOLERANCE["float32"])


def test_inter_layer_dropout_goes_out_as_keras_dropout():
    lstm = rk.LSTM(2, 3, num_layers=2, dropout=0.25, batch_first=True, seed=0).eval()
    keras_model = to_keras(lstm)
    assert [type(a).__name__ for a in keras_model.layers] == ["LSTM", "Dropout", "LSTM"]
    assert keras_model.layers[1].rate == 0.25
    x = sequences("float32")
    np.testing.assert_allclose(predict(keras_model, x), lstm(x)[0], **TOLERANCE["float32"])


# --------------------------------------------------------------------------- refusals

def built(layer, shape=(None, 5, 2)):
    layer.build(shape)
    return layer


@pytest.mark.parametrize("make, match", [
    (lambda: keras.layers.SimpleRNN(3, activation="sigmoid"),
     r"SimpleRNN with activation='sigmoid' has no rnnkern equivalent; expected activation in "
     r"\['tanh', 'relu'\]"),
    (lambda: keras.layers.LSTM(3, activation="relu"), r"LSTM with activation='relu'"),
    (lambda: keras.layers.GRU(3, recurrent_activation="hard_sigmoid"),
     r"GRU with recurrent_activation='hard_sigmoid'"),
    (lambda: keras.layers.GRU(3, reset_after=False),
     r"GRU with reset_after=False has no rnnkern equivalent; expected reset_after=True"),
    (lambda: keras.layers.LSTM(3, go_backwards=True), r"LSTM with go_backwards=True has no rnnkern equivalent; expected go_backwards=False"),
    (lambda: keras.layers.GRU(3, return_state=True), r"GRU with return_state=True has no rnnkern"),
    (lambda: keras.layers.SimpleRNN(3, stateful=True), r"SimpleRNN with stateful=True has no rnnkern"),
    (lambda: keras.layers.LSTM(3, dropout=0.2), r"LSTM with dropout=0.2 has no rnnkern equivalent; expected dropout=0.0"),
    (lambda: keras.layers.GRU(3, recurrent_dropout=0.1), r"GRU with recurrent_dropout=0.1 has no rnnkern"),
    (lambda: keras.layers.Bidirectional(keras.layers.LSTM(3, return_sequences=True),
                                        merge_mode="sum"), r"Bidirectional with merge_mode='sum' has no rnnkern equivalent; expected "
     r"merge_mode='concat'"),
    (lambda: keras.layers.Dense(3, activation="relu"), r"Dense with activation='relu'"),
    (lambda: keras.layers.LSTM(3, dtype="mixed_float16"), r"expected dtype policy 'float32' or 'float64', got 'mixed_float16'"),
], ids=["SimpleRNN-sigmoid", "LSTM-relu", "GRU-hard_sigmoid", "reset_after", "go_backwards",
        "return_state", "stateful", "dropout", "recurrent_dropout", "merge_mode",
        "Dense-relu", "mixed_precision"])
def test_a_keras_option_rnnkern_does_not_compute_is_refused(make, match):
    layer = built(make(), (4, 5, 2))
    with pytest.raises(ValueError, match=r"layer_or_model: " + match):
        from_keras(layer)
    model = keras.Sequential([keras.Input((5, 2), batch_size=4), keras.layers.Dense(2), make()])
    with pytest.raises(ValueError, match=r"layer_or_model\.layers\[1\]: " + match):
        from_keras(model)


def test_a_layer_without_weights_is_refused():
    with pytest.raises(ValueError, match="layer_or_model: the Keras layer has no weights yet"):
        from_keras(keras.layers.LSTM(3))


@pytest.mark.parametrize("make, input_shape, match", [
    (lambda: keras.layers.Dropout(0.1), (5, 2),
     r"expected one of keras\.layers\.SimpleRNN, .*got .*Dropout"),
    (lambda: keras.layers.Conv1D(2, 2), (5, 2),
     r"expected one of keras\.layers\.SimpleRNN, .*got .*Conv1D"),
    (lambda: keras.layers.Bidirectional(keras.layers.ConvLSTM1D(2, 2, return_sequences=True)),
     (5, 4, 2), r"expected Bidirectional of SimpleRNN, LSTM or GRU, got Bidirectional of "
                r"ConvLSTM1D"),
], ids=["Dropout", "Conv1D", "Bidirectional-ConvLSTM1D"])
def test_another_keras_layer_is_a_type_error(make, input_shape, match):
    with pytest.raises(TypeError, match=r"layer_or_model\.layers\[0\]: " + match):
        from_keras(keras.Sequential([keras.Input(input_shape), make()]))


def test_a_functional_model_or_another_object_is_a_type_error():
    inputs = keras.Input((5, 2))
    functional = keras.Model(inputs, keras.layers.LSTM(3)(inputs))
    with pytest.raises(TypeError, match="only keras.Sequential models.*Functional"):
        from_keras(functional)
    for other in (np.zeros((2, 3)), rk.LSTM(2, 3), "LSTM"):
        with pytest.raises(TypeError, match="layer_or_model: expected a Keras 3 layer"):
            from_keras(other)


@pytest.mark.parametrize("model, error, match", [
    (lambda: Sequential(DoublingLayer(), rk.LSTM(2, 3)), TypeError,
     r"layers\[0\]: no Keras counterpart is known for .*DoublingLayer"),
    (lambda: Sequential(LastTimestep(), Dense(2, 1)), ValueError,
     r"layers\[0\]: LastTimestep converts to Keras only right after .* got it after nothing"),
    (lambda: Sequential(rk.GRU(2, 3, bidirectional=True), LastTimestep()), ValueError,
     r"layers\[1\]: LastTimestep\(bidirectional=False\) after a layer with "
     r"bidirectional=True has no Keras equivalent"),
    (lambda: Sequential(rk.GRU(2, 3), LastTimestep(bidirectional=True)), ValueError,
     r"layers\[1\]: LastTimestep\(bidirectional=True\) after a layer with "
     r"bidirectional=False"),
    (lambda: Sequential(Dense(2, 2), LastTimestep()), ValueError,
     r"layers\[1\]: LastTimestep .* got it after .*Dense"),
    (lambda: rk.LSTM(2, 4, proj_size=2), ValueError,
     r"layer_or_sequential: LSTM with proj_size=2 has no Keras equivalent"),
    (lambda: rk.LSTMCell(5, 2), TypeError, r"layer_or_sequential: expected rnnkern\.RNN"),
    (lambda: keras.layers.LSTM(3), TypeError, r"layer_or_sequential: expected rnnkern\.RNN"),
], ids=["user-layer", "LastTimestep-first", "LastTimestep-bidirectional-mismatch",
        "LastTimestep-unidirectional-mismatch", "LastTimestep-after-Dense", "proj_size",
        "lone-cell", "keras-layer"])
def test_to_keras_refuses_what_keras_cannot_compute(model, error, match):
    model = model()
    with pytest.raises(error, match=match):
        to_keras(model)
