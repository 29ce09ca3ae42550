r"""Truncated backpropagation through time with the state carried between chunks.

A long token sequence is cut into ``B`` parallel streams (``batchify``), and
the streams into consecutive chunks of ``seq_len`` steps (``bptt_chunks``).
Each chunk is one training step: the forward pass starts from the recurrent
state the previous chunk ended in, the backward pass stays inside the chunk.
Starting the next forward from that state *is* the detach: the state arrays
carry no history, so no gradient crosses a chunk boundary, while the model
still sees an unbroken sequence ("stateful" training)::

    states = None
    for inputs, targets in bptt_chunks(streams, seq_len):
        loss, states, grad_norm = train_step(model, optimizer, inputs, targets, states,
                                             max_grad_norm=1.0)
"""

from __future__ import annotations

from .. import validation as v
from ..dispatch import namespace_of
from ..validation import describe
from .losses import softmax_cross_entropy
from .optim import clip_grad_norm

__all__ = ["batchify", "bptt_chunks", "chunks_per_epoch", "train_step", "evaluate_loss"]


def batchify(token_ids, batch_size):
    """Cut a 1-D token array into ``batch_size`` contiguous streams.

    Stream ``b`` is ``token_ids[b*N:(b+1)*N]`` with ``N = len // batch_size``
    (the remainder is dropped); the result is ``(N, batch_size)``, time first,
    so that a chunk of rows is a ``(T, B)`` model input.
    """
    xp = namespace_of(token_ids, names=["token_ids"])
    batch_size = v.check_positive_int("batch_size", batch_size)
    if token_ids.ndim != 1 or "int" not in v.dtype_name(token_ids.dtype):
        raise TypeError(f"token_ids: expected a 1-D integer array, got {describe(token_ids)}")
    length = token_ids.shape[0] // batch_size
    if length < 2:
        raise ValueError(f"token_ids: expected at least {2 * batch_size} tokens for "
                         f"batch_size={batch_size}, got {token_ids.shape[0]}")
    streams = xp.reshape(token_ids[:length * batch_size], (batch_size, length))
    return xp.permute_dims(streams, (1, 0))


def bptt_chunks(streams, seq_len, *, start=0):
    """Yield ``(inputs, targets)`` chunks of ``streams`` (``(N, B)``), in order.

    ``inputs`` is ``streams[t:t+L]`` and ``targets`` is ``streams[t+1:t+1+L]``
    (the next token), ``L = seq_len`` except possibly for the last chunk.
    ``start`` skips the first ``start`` chunks (to resume mid-epoch).
    """
    seq_len = v.check_positive_int("seq_len", seq_len)
    steps = streams.shape[0] - 1
    for t in range(start * seq_len, steps, seq_len):
        length = min(seq_len, steps - t)
        yield streams[t:t + length, ...], streams[t + 1:t + 1 + length, ...]


def chunks_per_epoch(streams, seq_len):
    """How many chunks ``bptt_chunks(streams, seq_len)`` yields."""
    return -(-(streams.shape[0] - 1) // seq_len)


def train_step(model, optimizer, inputs, targets, states=None, *, max_grad_norm=None):
    r"""One truncated-BPTT step of a language model; return ``(loss, states, grad_norm)``.

    Forward from ``states``, softmax cross-entropy of the logits against
    ``targets`` (mean over all ``T*B`` tokens), backward inside the chunk,
    optional clipping of the global gradient norm, one optimizer step.

    Parameters
    ----------
    model : Sequential
        Maps ``(T, B)`` token ids to ``(T, B, V)`` logits.
    optimizer : SGD or Adam
    inputs, targets : integer arrays, shape (T, B)
    states : list or None
        The states the previous chunk returned (None: zeros).
    max_grad_norm : float, optional
        Clip :math:`\|g\|` to this value (``clip_grad_norm``).

    Returns
    -------
    loss : 0-d array
        The chunk's loss before the update.
    states : list
        The final recurrent states: the next chunk's ``states``.
    grad_norm : 0-d array or None
        The global gradient norm before clipping (None without clipping).
    """
    logits, states, tape = model.forward(inputs, states)
    loss, dlogits = softmax_cross_entropy(logits, targets)
    _, _, grads = model.backward(dlogits, tape)
    del tape             # a live tape would make the update copy the parameters for it
    grad_norm = None
    if max_grad_norm is not None:
        grads, grad_norm = clip_grad_norm(grads, max_grad_norm)
    optimizer.step(model.parameters(), grads)
    return loss, states, grad_norm


def evaluate_loss(model, streams, seq_len):
    """Mean next-token cross-entropy (nats) of ``model`` over ``streams`` (``(N, B)``).

    Runs the chunks in order with the state carried, as in training, without
    backward passes.  Returns a Python float.
    """
    total, count, states = 0.0, 0, None
    for inputs, targets in bptt_chunks(streams, seq_len):
        logits, states = model(inputs, states)          # inference: no tapes
        loss, _ = softmax_cross_entropy(logits, targets)
        tokens = targets.shape[0] * targets.shape[1]
        total += float(loss) * tokens
        count += tokens
    return total / count

