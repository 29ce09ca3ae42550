"""Training toolkit: losses, optimizers, clipping, layers, checkpoints, TBPTT.

PyTorch is the oracle for values and gradients; array-api-strict runs the
same code to prove it uses array-API calls only (what lets it run on CuPy).
"""

import os
import zipfile

import numpy as np
import pytest

from rnnkern.devices import cuda_device_count
import rnnkern as rk
from conftest import DoublingLayer
from rnnkern.training import (SGD, Adam, CheckpointError, Dense, Embedding, LastTimestep,
                              Sequential, batchify, bptt_chunks, clip_grad_norm, clip_grad_value,
                              evaluate_loss, generate, load_checkpoint, mean_squared_error,
                              read_checkpoint, sample_with_temperature, save_checkpoint,
                              scatter_add_rows, softmax_cross_entropy, train_step)

torch = pytest.importorskip("torch")

TOL = {"float32": dict(rtol=2e-5, atol=2e-6), "float64": dict(rtol=1e-10, atol=1e-12)}


def as_torch(a, requires_grad=False):
    return torch.from_numpy(np.array(a)).requires_grad_(requires_grad)


def char_lm(vocabulary, hidden, seed=0, dtype="float32"):
    return Sequential(Embedding(vocabulary, 8, dtype=dtype, seed=seed),
                      rk.LSTM(8, hidden, dtype=dtype, seed=seed + 1),
                      Dense(hidden, vocabulary, dtype=dtype, seed=seed + 2))


# ---------------------------------------------------------------- losses

@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("masked", [False, True], ids=["all", "masked"])
def test_softmax_cross_entropy_matches_torch(dtype, masked):
    rng = np.random.default_rng(0)
    logits = (3 * rng.standard_normal((7, 4, 11))).astype(dtype)
    targets = rng.integers(0, 11, (7, 4))
    mask = rng.random((7, 4)) > 0.3 if masked else None
    if masked:
        targets[~mask] = -100                       # padding ids need not be valid classes
    before = logits.copy()
    loss, dlogits = softmax_cross_entropy(logits, targets, mask)

    z = as_torch(logits, requires_grad=True)
    expected = torch.nn.functional.cross_entropy(z.reshape(-1, 11), as_torch(targets).reshape(-1),
                                                 ignore_index=-100)
    expected.backward()
    np.testing.assert_allclose(float(loss), expected.item(), **TOL[dtype])
    np.testing.assert_allclose(dlogits, z.grad.numpy(), **TOL[dtype])
    assert dlogits.dtype == logits.dtype
    np.testing.assert_array_equal(logits, before)            # input untouched


def test_softmax_cross_entropy_is_stable_for_huge_logits():
    logits = np.array([[1e4, 0.0, -1e4], [-1e4, -1e4, -1e4]], np.float32)
    loss, dlogits = softmax_cross_entropy(logits, np.array([1, 2]))
    expected = torch.nn.functional.cross_entropy(as_torch(logits), as_torch(np.array([1, 2])))
    assert np.isfinite(float(loss)) and np.all(np.isfinite(dlogits))
    np.testing.assert_allclose(float(loss), expected.item(), rtol=1e-6)


def test_softmax_cross_entropy_rejects_bad_input():
    logits = np.zeros((3, 5), np.float32)
    with pytest.raises(ValueError, match=r"targets: expected class ids in \[0, 5\)"):
        softmax_cross_entropy(logits, np.array([0, 5, 1]))
    with pytest.raises(ValueError, match=r"targets: expected shape \(3,\)"):
        softmax_cross_entropy(logits, np.array([0, 1]))
    with pytest.raises(TypeError, match="targets: expected an integer array"):
        softmax_cross_entropy(logits, np.zeros(3))
    with pytest.raises(TypeError, match="mask: expected a bool array"):
        softmax_cross_entropy(logits, np.array([0, 1, 2]), np.ones(3))
    with pytest.raises(ValueError, match="mask: expected at least one unmasked position"):
        softmax_cross_entropy(logits, np.array([0, 1, 2]), np.zeros(3, bool))
    with pytest.raises(TypeError, match="logits: expected a float32 or float64 array"):
        softmax_cross_entropy(np.zeros((3, 5), np.int32), np.array([0, 1, 2]))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_mean_squared_error_matches_torch(dtype):
    rng = np.random.default_rng(1)
    prediction, target = rng.standard_normal((2, 6, 3)).astype(dtype)
    loss, dprediction = mean_squared_error(prediction, target)
    p = as_torch(prediction, requires_grad=True)
    expected = torch.nn.functional.mse_loss(p, as_torch(target))
    expected.backward()
    np.testing.assert_allclose(float(loss), expected.item(), **TOL[dtype])
    np.testing.assert_allclose(dprediction, p.grad.numpy(), **TOL[dtype])
    with pytest.raises(ValueError, match=r"target: expected shape \(6, 3\)"):
        mean_squared_error(prediction, target[:, :1])


# ---------------------------------------------------------------- optimizers

def run_both(ours, theirs_factory, dtype, steps=5, seed=2):
    """Apply the same gradient sequence with our optimizer and torch's."""
    rng = np.random.default_rng(seed)
    params = {"w": rng.standard_normal((4, 3)).astype(dtype), "b": rng.standard_normal(3).astype(dtype)}
    tparams = {n: as_torch(p.copy(), requires_grad=True) for n, p in params.items()}
    theirs = theirs_factory(list(tparams.values()))
    for _ in range(steps):
        grads = {n: rng.standard_normal(p.shape).astype(dtype) for n, p in params.items()}
        ours.step(params, grads)
        for n, t in tparams.items():
            t.grad = as_torch(grads[n])
        theirs.step()
    for n in params:
        np.testing.assert_allclose(params[n], tparams[n].detach().numpy(), **TOL[dtype])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adam_matches_torch(dtype, weight_decay):
    run_both(Adam(lr=0.05, betas=(0.8, 0.95), eps=1e-6, weight_decay=weight_decay),
             lambda p: torch.optim.Adam(p, lr=0.05, betas=(0.8, 0.95), eps=1e-6,
                                        weight_decay=weight_decay), dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("options", [dict(), dict(momentum=0.9), dict(momentum=0.9, dampening=0.3),
                                     dict(momentum=0.9, nesterov=True, weight_decay=0.01)],
                         ids=["plain", "momentum", "dampening", "nesterov-decay"])
def test_sgd_matches_torch(dtype, options):
    run_both(SGD(0.1, **options), lambda p: torch.optim.SGD(p, lr=0.1, **options), dtype)


def test_optimizer_checks_its_arguments():
    with pytest.raises(ValueError, match=r"betas: expected two numbers in \[0, 1\)"):
        Adam(betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="lr: expected a number >= 0"):
        SGD(-1.0)
    with pytest.raises(ValueError, match="nesterov: needs momentum > 0"):
        SGD(0.1, nesterov=True)
    params = {"w": np.zeros(3)}
    with pytest.raises(ValueError, match=r"grads: expected the keys of params; missing \['w'\]"):
        Adam().step(params, {"v": np.zeros(3)})
    with pytest.raises(ValueError, match=r"grads\['w'\]: expected shape \(3,\)"):
        Adam().step(params, {"w": np.zeros(4)})


# ---------------------------------------------------------------- clipping

@pytest.mark.parametrize("max_norm", [0.5, 100.0], ids=["clipped", "unclipped"])
def test_clip_grad_norm_matches_torch(max_norm):
    rng = np.random.default_rng(3)
    grads = {"a": rng.standard_normal((5, 4)).astype(np.float32),
             "b": rng.standard_normal(7).astype(np.float32)}
    before = {n: g.copy() for n, g in grads.items()}
    clipped, norm = clip_grad_norm(grads, max_norm)
    tensors = [as_torch(g, requires_grad=True) for g in grads.values()]
    for t in tensors:
        t.grad = t.detach().clone()
    expected_norm = torch.nn.utils.clip_grad_norm_(tensors, max_norm)
    np.testing.assert_allclose(float(norm), expected_norm.item(), rtol=1e-6)
    for (name, g), t in zip(clipped.items(), tensors):
        np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-6)
        np.testing.assert_array_equal(grads[name], before[name])     # inputs untouched


def test_clip_grad_value_matches_torch():
    g = np.random.default_rng(4).standard_normal((6, 6)).astype(np.float32)
    t = as_torch(g, requires_grad=True)
    t.grad = t.detach().clone()
    torch.nn.utils.clip_grad_value_([t], 0.5)
    np.testing.assert_array_equal(clip_grad_value({"g": g}, 0.5)["g"], t.grad.numpy())


# ---------------------------------------------------------------- layers

def test_embedding_scatter_adds_repeated_ids_like_torch():
    layer = Embedding(6, 3, dtype="float64", seed=0)
    ids = np.array([[1, 4], [1, 1], [5, 0]])
    y, tape = layer.forward(ids)
    dy = np.random.default_rng(5).standard_normal(y.shape)
    _, grads = layer.backward(dy, tape)
    reference = torch.nn.Embedding(6, 3, dtype=torch.float64)
    reference.weight.data = as_torch(layer.state_dict()["weight"])
    expected = reference(as_torch(ids))
    expected.backward(as_torch(dy))
    np.testing.assert_array_equal(y, expected.detach().numpy())
    np.testing.assert_allclose(grads["weight"], reference.weight.grad.numpy(), rtol=1e-12)
    with pytest.raises(ValueError, match=r"ids: expected ids in \[0, 6\), got values from 0 to 6"):
        layer.forward(np.array([0, 6]))


def test_dense_matches_torch_linear():
    layer = Dense(5, 3, dtype="float64", seed=1)
    x = np.random.default_rng(6).standard_normal((4, 2, 5))
    y, tape = layer.forward(x)
    dy = np.random.default_rng(7).standard_normal(y.shape)
    dx, grads = layer.backward(dy, tape)
    reference = torch.nn.Linear(5, 3, dtype=torch.float64)
    reference.load_state_dict({n: as_torch(a) for n, a in layer.state_dict().items()})
    tx = as_torch(x, requires_grad=True)
    expected = reference(tx)
    expected.backward(as_torch(dy))
    np.testing.assert_allclose(y, expected.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(grads["weight"], reference.weight.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(grads["bias"], reference.bias.grad.numpy(), rtol=1e-12)
    with pytest.raises(ValueError, match=r"x: expected shape .*5\)"):
        layer.forward(x[..., :4])


def test_an_optimizer_step_between_forward_and_backward_leaves_the_gradients():
    """Every layer's tape keeps the values its forward ran with (Dense's dx used
    the updated weight before), through the optimizer's in-place update."""
    model = char_lm(9, 6, dtype="float64")
    ids = np.random.default_rng(8).integers(0, 9, (5, 3))
    targets = np.random.default_rng(9).integers(0, 9, (5, 3))

    def gradients(step_first):
        logits, _, tape = model.forward(ids)
        _, dlogits = softmax_cross_entropy(logits, targets)
        if step_first:
            SGD(lr=0.5).step(model.parameters(), {n: np.ones_like(p) for n, p in
                                                  model.parameters().items()})
        return model.backward(dlogits, tape)[2]

    before = {n: p.copy() for n, p in model.state_dict().items()}
    expected = gradients(step_first=False)
    got = gradients(step_first=True)
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
    assert all(np.array_equal(p, before[n] - 0.5) for n, p in model.state_dict().items())


def test_sequential_language_model_gradients_match_torch():
    model = char_lm(9, 6, dtype="float64")
    ids = np.random.default_rng(8).integers(0, 9, (5, 3))
    targets = np.random.default_rng(9).integers(0, 9, (5, 3))
    h0 = np.random.default_rng(10).standard_normal((1, 3, 6))
    logits, states, tape = model.forward(ids, [(h0, h0 * 0.5)])
    loss, dlogits = softmax_cross_entropy(logits, targets)
    _, dstates0, grads = model.backward(dlogits, tape)

    embedding = torch.nn.Embedding(9, 8, dtype=torch.float64)
    lstm = torch.nn.LSTM(8, 6, dtype=torch.float64)
    linear = torch.nn.Linear(6, 9, dtype=torch.float64)
    modules = torch.nn.ModuleList([embedding, lstm, linear])
    modules.load_state_dict({n: as_torch(a) for n, a in model.state_dict().items()})
    th0 = as_torch(h0, requires_grad=True)
    out, _ = lstm(embedding(as_torch(ids)), (th0, th0 * 0.5))
    expected = torch.nn.functional.cross_entropy(linear(out).reshape(-1, 9),
                                                 as_torch(targets).reshape(-1))
    expected.backward()
    np.testing.assert_allclose(float(loss), expected.item(), rtol=1e-10)
    torch_grads = {n: p.grad.numpy() for n, p in modules.named_parameters()}
    assert list(grads) == list(torch_grads)
    for name in grads:
        np.testing.assert_allclose(grads[name], torch_grads[name], rtol=1e-8, atol=1e-12,
                                   err_msg=name)
    dh0, dc0 = dstates0[0]
    np.testing.assert_allclose(dh0 + 0.5 * dc0, th0.grad.numpy(), rtol=1e-8, atol=1e-12)


def test_many_to_one_model_summary_and_gradients():
    model = Sequential(rk.RNN(1, 50, batch_first=True, dtype="float64", seed=0),
                       LastTimestep(batch_first=True), Dense(50, 1, dtype="float64", seed=1))
    text = model.summary((None, 10, 1), print_fn=lambda _: None)
    assert "(None, 10, 50)" in text and "(None, 50)" in text and "(None, 1)" in text
    assert "Total params: 2,701" in text                  # 2,650 (two biases, as torch) + 51
    x = np.random.default_rng(11).standard_normal((4, 10, 1))
    y, _, tape = model.forward(x)
    assert y.shape == (4, 1)
    loss, dy = mean_squared_error(y, np.zeros_like(y))
    dx, _, grads = model.backward(dy, tape)

    rnn = torch.nn.RNN(1, 50, batch_first=True, dtype=torch.float64)
    linear = torch.nn.Linear(50, 1, dtype=torch.float64)
    modules = torch.nn.ModuleList([rnn, torch.nn.Identity(), linear])
    modules.load_state_dict({n: as_torch(a) for n, a in model.state_dict().items()})
    tx = as_torch(x, requires_grad=True)
    out, _ = rnn(tx)
    expected = torch.nn.functional.mse_loss(linear(out[:, -1]), torch.zeros(4, 1, dtype=torch.float64))
    expected.backward()
    np.testing.assert_allclose(float(loss), expected.item(), rtol=1e-10)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-8, atol=1e-14)
    for name, p in modules.named_parameters():
        np.testing.assert_allclose(grads[name], p.grad.numpy(), rtol=1e-8, atol=1e-14)


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_inference_calls_are_forward_without_tapes(dropout):
    """``layer(x)`` and ``model(x, states)`` give what ``forward`` gives, keep no tape (the
    parameters stay writable) and draw the same dropout masks in training mode."""
    rng = np.random.default_rng(5)
    ids = rng.integers(0, 11, (6, 3))
    states = [(rng.standard_normal((2, 3, 7)).astype("float32"),
               rng.standard_normal((2, 3, 7)).astype("float32")), None]
    runs = []
    for _ in range(2):                      # twin models: the same dropout stream each
        model = Sequential(Embedding(11, 5, seed=0), DoublingLayer(),
                           rk.LSTM(5, 7, num_layers=2, dropout=dropout, seed=1),
                           rk.GRU(7, 4, seed=2), Dense(4, 3, seed=3), LastTimestep())
        runs.append(model)
    forward_y, forward_states, tape = runs[0].forward(ids, states)
    del tape
    y, new_states = runs[1](ids, states)
    np.testing.assert_array_equal(y, forward_y)
    flat = lambda s: [a for state in s for a in (state if isinstance(state, tuple) else [state])]
    for a, b in zip(flat(new_states), flat(forward_states), strict=True):
        np.testing.assert_array_equal(a, b)
    assert all(p.flags.writeable for p in runs[1].parameters().values())
    for layer, x in [(runs[1].layers[0], ids),
                     (runs[1].layers[4], rng.standard_normal((2, 4)).astype("float32")),
                     (runs[1].layers[5], rng.standard_normal((4, 2, 3)))]:
        np.testing.assert_array_equal(layer(x), layer.forward(x)[0])


def test_sequential_load_state_dict_is_all_or_nothing():
    model = char_lm(9, 6)
    before = model.state_dict()
    bad = dict(before)
    bad["2.weight"] = np.zeros((3, 3), np.float32)            # the last layer's shape is wrong
    bad["0.weight"] = np.ones_like(before["0.weight"])
    with pytest.raises(ValueError, match=r"state_dict\['2.weight'\]: expected shape \(9, 6\)"):
        model.load_state_dict(bad)
    for name, a in model.state_dict().items():
        np.testing.assert_array_equal(a, before[name])


# ---------------------------------------------------------------- array-API only

def test_toolkit_runs_on_array_api_strict():
    """The same code on a library with nothing beyond the standard (as CuPy would be)."""
    xps = pytest.importorskip("array_api_strict")
    model = char_lm(7, 5, dtype="float64")
    ids = np.random.default_rng(12).integers(0, 7, (6, 2))
    logits_np, _, tape_np = model.forward(ids)
    loss_np, dlogits_np = softmax_cross_entropy(logits_np, ids)
    _, _, grads_np = model.backward(dlogits_np, tape_np)

    strict_ids = xps.asarray(ids)
    logits, _, tape = model.forward(strict_ids)
    loss, dlogits = softmax_cross_entropy(logits, strict_ids)
    _, _, grads = model.backward(dlogits, tape)
    clipped, norm = clip_grad_norm(grads, 0.1)
    np.testing.assert_allclose(float(loss), float(loss_np), rtol=1e-12)
    for name in grads:
        np.testing.assert_allclose(np.asarray(grads[name]), grads_np[name], rtol=1e-10,
                                   atol=1e-14, err_msg=name)
    params = {n: xps.asarray(np.array(p)) for n, p in model.parameters().items()}
    Adam(lr=0.1).step(params, clipped)
    mean_squared_error(logits, logits)
    sample_with_temperature(logits, 0.7, np.random.default_rng(0))
    target = scatter_add_rows(xps.zeros((3, 2)), xps.asarray([0, 2, 0]), xps.ones((3, 2)))
    np.testing.assert_array_equal(np.asarray(target), [[2, 2], [0, 0], [1, 1]])


# ---------------------------------------------------------------- checkpoints

def test_checkpoint_round_trip_resumes_training_exactly(tmp_path):
    ids = np.arange(64) % 9
    model, optimizer = char_lm(9, 6), Adam(lr=0.01)
    for _ in range(3):
        train_step(model, optimizer, ids[:-1, None], ids[1:, None])
    path = tmp_path / "model.npz"
    save_checkpoint(path, model, optimizer=optimizer, config={"hidden": 6}, progress={"steps": 3})
    assert os.listdir(tmp_path) == ["model.npz"]             # no temporary file left behind

    restored, restored_optimizer = char_lm(9, 6, seed=5), Adam(lr=0.01)
    checkpoint = load_checkpoint(path, restored, restored_optimizer)
    assert checkpoint.config == {"hidden": 6} and checkpoint.progress == {"steps": 3}
    for a, b in ((model, optimizer), (restored, restored_optimizer)):
        train_step(a, b, ids[:-1, None], ids[1:, None])
    for name, a in model.state_dict().items():
        np.testing.assert_array_equal(restored.state_dict()[name], a)


def corrupt(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2: len(data) // 2 + 64] = b"\x00" * 64
    path.write_bytes(bytes(data))


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def garbage(path):
    path.write_bytes(b"this is not a checkpoint at all" * 10)


@pytest.mark.parametrize("damage", [corrupt, truncate, garbage])
def test_damaged_checkpoint_raises_and_leaves_model_untouched(tmp_path, damage):
    path = tmp_path / "model.npz"
    save_checkpoint(path, char_lm(9, 6, seed=1), optimizer=Adam())
    damage(path)
    model, optimizer = char_lm(9, 6), Adam()
    before = model.state_dict()
    with pytest.raises(CheckpointError, match="model.npz"):
        load_checkpoint(path, model, optimizer)
    for name, a in model.state_dict().items():
        np.testing.assert_array_equal(a, before[name])
    assert optimizer.steps == 0


def test_checkpoint_of_another_model_raises_and_leaves_model_untouched(tmp_path):
    path = tmp_path / "other.npz"
    save_checkpoint(path, char_lm(9, 7), optimizer=Adam())
    model, optimizer = char_lm(9, 6), Adam()
    ids = np.arange(20) % 9
    train_step(model, optimizer, ids[:-1, None], ids[1:, None])
    before, optimizer_before = model.state_dict(), optimizer.state_dict()
    with pytest.raises(CheckpointError, match="does not fit this model"):
        load_checkpoint(path, model, optimizer)
    for name, a in model.state_dict().items():
        np.testing.assert_array_equal(a, before[name])
    assert optimizer.steps == 1
    for name, a in optimizer.state_dict()["slots"]["exp_avg"].items():
        np.testing.assert_array_equal(a, optimizer_before["slots"]["exp_avg"][name])


def test_checkpoint_missing_file_and_foreign_npz(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_checkpoint(tmp_path / "absent.npz")
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, weights=np.zeros(3))
    with pytest.raises(CheckpointError, match="not an rnnkern checkpoint"):
        read_checkpoint(foreign)


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "model.npz"
    save_checkpoint(path, char_lm(9, 6), progress={"steps": 1})

    def crash(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, char_lm(9, 6), progress={"steps": 2})
    assert os.listdir(tmp_path) == ["model.npz"]
    assert read_checkpoint(path).progress == {"steps": 1}
    assert zipfile.is_zipfile(path)


# ---------------------------------------------------------------- truncated BPTT

def test_chunked_forward_with_carried_state_equals_one_long_forward():
    model = char_lm(9, 6, dtype="float64")
    streams = batchify(np.arange(203) % 9, 4)                  # (50, 4)
    assert streams.shape == (50, 4) and streams[0, 1] == 50 % 9
    full, _, _ = model.forward(streams[:-1])
    states, pieces = None, []
    for inputs, targets in bptt_chunks(streams, 8):
        logits, states, _ = model.forward(inputs, states)
        pieces.append(logits)
    np.testing.assert_allclose(np.concatenate(pieces), full, rtol=1e-12)
    assert sum(t.shape[0] for _, t in bptt_chunks(streams, 8)) == 49


def test_short_training_run_learns_a_tiny_corpus():
    """End to end: Adam + clipping + TBPTT reach < 0.1 nats/char, the unigram model 2.2."""
    text = "the cat sat on the mat. " * 40
    vocabulary = sorted(set(text))
    ids = np.array([vocabulary.index(c) for c in text])
    streams = batchify(ids, 4)
    model, optimizer = char_lm(len(vocabulary), 32, seed=3), Adam(lr=0.02)
    states = None
    for epoch in range(6):
        for inputs, targets in bptt_chunks(streams, 20):
            loss, states, _ = train_step(model, optimizer, inputs, targets, states, max_grad_norm=1.0)
    final_loss = evaluate_loss(model, streams, 20)
    assert final_loss < 0.1, final_loss
    prompt = [vocabulary.index(c) for c in "mat. the c"]
    sample = generate(model, prompt, 25, temperature=0, rng=np.random.default_rng(0))
    assert "".join(vocabulary[k] for k in sample) == "at sat on the mat. the ca"


def test_sampling_temperature():
    rng = np.random.default_rng(0)
    logits = np.log(np.array([[0.1, 0.2, 0.7]] * 20000))
    draws = sample_with_temperature(logits, 1.0, rng)
    np.testing.assert_allclose(np.bincount(draws, minlength=3) / 20000, [0.1, 0.2, 0.7], atol=0.015)
    sharp = sample_with_temperature(logits, 0.25, rng)            # p^4 normalised: 0.0 / 0.0 / 1.0
    assert np.mean(sharp == 2) > 0.99
    np.testing.assert_array_equal(sample_with_temperature(logits[:3], 0, rng), [2, 2, 2])
    with pytest.raises(ValueError, match="temperature: expected a number >= 0"):
        sample_with_temperature(logits, -1.0, rng)


# ---------------------------------------------------------------- the same code on CuPy



@pytest.mark.gpu
@pytest.mark.skipif(cuda_device_count() == 0, reason="needs CuPy and a CUDA GPU")
def test_training_step_on_cupy_matches_numpy():
    import cupy

    ids = np.random.default_rng(13).integers(0, 9, (7, 3))
    results = {}
    for device, to_array in (("cpu", np.asarray), ("cuda", cupy.asarray)):
        model, optimizer = char_lm(9, 6, dtype="float64").to(device), Adam(lr=0.01)
        states = None
        for _ in range(2):
            loss, states, norm = train_step(model, optimizer, to_array(ids[:-1]), to_array(ids[1:]),
                                            states, max_grad_norm=0.5)
        tokens = generate(model, [1, 2], 5, temperature=0.8, rng=np.random.default_rng(0))
        results[device] = (float(loss), float(norm), tokens,
                           {n: cupy.asnumpy(a) for n, a in model.state_dict().items()})
    (loss, norm, tokens, params), (gpu_loss, gpu_norm, gpu_tokens, gpu_params) = results.values()
    np.testing.assert_allclose([gpu_loss, gpu_norm], [loss, norm], rtol=1e-10)
    assert gpu_tokens == tokens
    for name in params:
        np.testing.assert_allclose(gpu_params[name], params[name], rtol=1e-9, atol=1e-12,
                                   err_msg=name)
    target = scatter_add_rows(cupy.zeros((3, 2), cupy.float32), cupy.asarray([0, 2, 0]),
                              cupy.ones((3, 2), cupy.float32))
    np.testing.assert_array_equal(target.get(), [[2, 2], [0, 0], [1, 1]])


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("steps", [1, 6])
def test_last_timestep_of_a_bidirectional_layer_is_each_directions_final_output(batch_first,
                                                                              steps, rng):
    """``LastTimestep(bidirectional=True)`` joins h_n of both directions (torch's
    ``cat((h_n[-2], h_n[-1]), 1)``), and its backward puts each half of dy where it came from."""
    layer = rk.GRU(3, 4, bidirectional=True, batch_first=batch_first, dtype="float64", seed=0)
    last = LastTimestep(batch_first=batch_first, bidirectional=True)
    x = rng.standard_normal((2, steps, 3) if batch_first else (steps, 2, 3))
    y, h_n = layer(x)

    out, tape = last.forward(y)

    np.testing.assert_array_equal(out, np.concatenate([h_n[0], h_n[1]], axis=1))
    assert last.output_shape(y.shape) == out.shape == (2, 8)
    dy = rng.standard_normal(out.shape)
    dx, grads = last.backward(dy, tape)
    assert grads == {} and dx.shape == y.shape
    # the adjoint of the selection: <dx, y> = <dy, out> for every y
    probe = rng.standard_normal(y.shape)
    np.testing.assert_allclose(np.sum(dx * probe), np.sum(dy * last(probe)), rtol=1e-12)
    time_axis = 1 if batch_first else 0
    np.testing.assert_array_equal(np.take(dx, steps - 1, axis=time_axis)[:, :4], dy[:, :4])
    np.testing.assert_array_equal(np.take(dx, 0, axis=time_axis)[:, 4:], dy[:, 4:])
    assert np.count_nonzero(dx) == dy.size
    with pytest.raises(ValueError, match="x: expected an even number of features"):
        last(np.zeros((steps, 2, 7)))
    assert repr(last) == f"LastTimestep(batch_first={batch_first}, bidirectional=True)"


def test_every_layer_refuses_a_tape_that_is_not_its_own(rng):
    dense, other = Dense(3, 2, seed=0), Dense(3, 2, seed=1)
    model = Sequential(Dense(3, 2, seed=0))
    x = rng.standard_normal((4, 3)).astype("float32")
    last = LastTimestep()
    sequence = rng.standard_normal((5, 2, 3)).astype("float32")
    for layer, inputs in [(dense, x), (last, sequence), (model, x)]:
        y, *_, tape = layer.forward(inputs)
        with pytest.raises(TypeError, match="tape: expected the Tape"):
            layer.backward(np.ones_like(y), {"not": "a tape"})
        _, foreign = other.forward(x)
        with pytest.raises(ValueError, match="tape: it was recorded by another layer"):
            layer.backward(np.ones_like(y), foreign)
