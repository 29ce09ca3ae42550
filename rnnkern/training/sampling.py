r"""Sampling from a language model with a temperature.

.. math:: p_k = \frac{e^{z_k / \tau}}{\sum_j e^{z_j / \tau}}

A low temperature :math:`\tau` sharpens the distribution towards the most
likely token (``temperature=0`` takes the argmax), a high one flattens it.
Random numbers come from a NumPy ``Generator`` on the host, so a seed gives
the same text on every backend.
"""

from __future__ import annotations

import numbers

import array_api_compat
import numpy as np

from ..dispatch import namespace_of
from ..validation import describe

__all__ = ["sample_with_temperature", "generate"]


def sample_with_temperature(logits, temperature, rng):
    """Draw one class per row of ``logits`` (``(..., V)``); return an integer array ``(...)``.

    Inverse-CDF sampling on the logits' device: with ``u ~ U(0, 1)`` per row,
    the class is the number of cumulative probabilities below ``u``.

    Parameters
    ----------
    logits : array, shape (..., V)
    temperature : float
        ``> 0``, or ``0`` for the argmax.
    rng : numpy.random.Generator
    """
    xp = namespace_of(logits, names=["logits"])
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) \
            or not temperature >= 0:
        raise ValueError(f"temperature: expected a number >= 0, got {temperature!r}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng: expected a numpy.random.Generator, got {describe(rng)}")
    if temperature == 0:
        return xp.argmax(logits, axis=-1)
    scaled = logits / temperature
    weights = xp.exp(scaled - xp.max(scaled, axis=-1, keepdims=True))
    cumulative = xp.cumulative_sum(weights, axis=-1)                  # unnormalised CDF
    uniform = rng.random(tuple(logits.shape[:-1]) + (1,))
    threshold = xp.asarray(uniform, dtype=logits.dtype,
                           device=array_api_compat.device(logits)) * cumulative[..., -1:]
    index = xp.sum(xp.astype(cumulative < threshold, xp.int64), axis=-1)
    return xp.clip(index, max=logits.shape[-1] - 1)


def generate(model, prompt_ids, length, *, temperature=1.0, rng=None, states=None):
    """Continue ``prompt_ids`` by ``length`` sampled tokens; return them as a list of int.

    Parameters
    ----------
    model : Sequential
        Maps ``(T, B)`` token ids to ``(T, B, V)`` logits (an Embedding
        first, a Dense last).
    prompt_ids : sequence of int
        At least one token; fed in one forward pass.
    length : int
        Number of tokens to generate, one forward step each.
    temperature : float
        See :func:`sample_with_temperature`.
    rng : numpy.random.Generator, optional
        Default: ``numpy.random.default_rng()``.
    states : list, optional
        Initial recurrent states (batch of 1); default zeros.
    """
    prompt = np.asarray(prompt_ids)
    if prompt.ndim != 1 or prompt.size == 0 or not np.issubdtype(prompt.dtype, np.integer):
        raise ValueError(f"prompt_ids: expected a non-empty sequence of token ids, "
                         f"got {describe(prompt)}")
    if isinstance(length, bool) or not isinstance(length, numbers.Integral) or length < 0:
        raise ValueError(f"length: expected an integer >= 0, got {length!r}")
    rng = np.random.default_rng() if rng is None else rng
    first_param = next(iter(model.parameters().values()))
    xp = array_api_compat.array_namespace(first_param)
    device = array_api_compat.device(first_param)
    tokens = xp.asarray(np.reshape(prompt.astype(np.int64), (-1, 1)), device=device)
    generated = []
    for _ in range(length):
        logits, states = model(tokens, states)          # inference: no tapes
        token = sample_with_temperature(logits[-1, 0, :], temperature, rng)
        generated.append(int(token))
        tokens = xp.reshape(xp.astype(token, xp.int64), (1, 1))
    return generated
