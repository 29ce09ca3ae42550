r"""Losses with fused gradients: each returns ``(loss, dprediction)``.

``loss`` is a 0-d array of the input's library and dtype (``float(loss)``
reads it); ``dprediction`` is the gradient of ``loss`` with respect to the
prediction, ready for the model's ``backward``.  Inputs are never modified.
"""

from __future__ import annotations

import array_api_compat

from ..dispatch import namespace_of
from ..validation import describe
from ..validation import dtype_name

__all__ = ["softmax_cross_entropy", "mean_squared_error"]


def softmax_cross_entropy(logits, targets, mask=None):
    r"""Softmax cross-entropy over every position, mean over the unmasked ones.

    With :math:`m_n \in \{0, 1\}` the mask and :math:`N = \sum_n m_n`,

    .. math::
        \log p_{n,k} = z_{n,k} - \max_j z_{n,j}
                       - \log \sum_j e^{z_{n,j} - \max_i z_{n,i}}, \qquad
        L = -\frac{1}{N} \sum_n m_n \log p_{n, y_n}, \\
        \frac{\partial L}{\partial z_{n,k}} = \frac{m_n}{N}
            \left(p_{n,k} - [k = y_n]\right).

    Subtracting the row maximum first (log-sum-exp) keeps it finite for any
    finite logits.  Equals ``torch.nn.functional.cross_entropy`` with
    ``reduction="mean"`` and the masked positions given ``ignore_index``.

    Parameters
    ----------
    logits : array, shape (..., V)
        Unnormalised scores, float32 or float64 (a timestep axis is just one
        of the leading axes).
    targets : integer array, shape (...)
        Class of each position, in ``[0, V)`` where the mask is set (masked
        positions may hold anything, e.g. a padding id).
    mask : bool array, shape (...), optional
        True for the positions that count (False for padding).  Default: all.

    Returns
    -------
    loss : 0-d array
    dlogits : array, shape (..., V)
    """
    xp = namespace_of(logits, targets, mask, names=["logits", "targets", "mask"])
    _check_float("logits", logits)
    if logits.ndim < 1 or logits.shape[-1] == 0:
        raise ValueError(f"logits: expected shape (..., V) with V >= 1, got {describe(logits)}")
    if "int" not in dtype_name(targets.dtype):
        raise TypeError(f"targets: expected an integer array of class ids, got {describe(targets)}")
    if tuple(targets.shape) != tuple(logits.shape[:-1]):
        raise ValueError(f"targets: expected shape {tuple(logits.shape[:-1])} (logits without "
                         f"the class axis), got {describe(targets)}")
    if mask is None:
        mask = xp.ones(tuple(targets.shape), dtype=xp.bool, device=array_api_compat.device(logits))
    elif dtype_name(mask.dtype) != "bool":
        raise TypeError(f"mask: expected a bool array, got {describe(mask)}")
    elif tuple(mask.shape) != tuple(targets.shape):
        raise ValueError(f"mask: expected shape {tuple(targets.shape)}, got {describe(mask)}")

    classes = logits.shape[-1]
    out_of_range = xp.logical_and(mask, xp.logical_or(targets < 0, targets >= classes))
    if bool(xp.any(out_of_range)):
        raise ValueError(f"targets: expected class ids in [0, {classes}) at unmasked positions, "
                         f"got values outside it")
    count = int(xp.sum(xp.astype(mask, xp.int64)))
    if count == 0:
        raise ValueError("mask: expected at least one unmasked position, got none")

    safe_targets = xp.where(mask, targets, xp.zeros_like(targets))
    shifted = logits - xp.max(logits, axis=-1, keepdims=True)
    exp_shifted = xp.exp(shifted)
    sum_exp = xp.sum(exp_shifted, axis=-1, keepdims=True)
    target_index = xp.expand_dims(xp.astype(safe_targets, xp.int64), axis=-1)
    target_logp = xp.take_along_axis(shifted, target_index, axis=-1) - xp.log(sum_exp)
    weights = xp.astype(mask, logits.dtype) / count                # m_n / N
    loss = -xp.sum(xp.squeeze(target_logp, axis=-1) * weights)

    classes_range = xp.arange(classes, dtype=xp.int64, device=array_api_compat.device(logits))
    one_hot = xp.astype(target_index == classes_range, logits.dtype)
    dlogits = (exp_shifted / sum_exp - one_hot) * xp.expand_dims(weights, axis=-1)
    return loss, dlogits


def mean_squared_error(prediction, target):
    r"""Mean squared error over all elements.

    .. math:: L = \frac{1}{N} \sum_n (\hat y_n - y_n)^2, \qquad
              \frac{\partial L}{\partial \hat y_n} = \frac{2}{N} (\hat y_n - y_n)

    Equals ``torch.nn.functional.mse_loss`` with ``reduction="mean"``.  The
    shapes must match exactly (no broadcasting, which would silently turn
    ``(B, 1)`` against ``(B,)`` into a ``(B, B)`` comparison).

    Returns
    -------
    loss : 0-d array
    dprediction : array, shape of ``prediction``
    """
    xp = namespace_of(prediction, target, names=["prediction", "target"])
    _check_float("prediction", prediction)
    if dtype_name(target.dtype) != dtype_name(prediction.dtype):
        raise TypeError(f"target: expected dtype {dtype_name(prediction.dtype)} (the "
                        f"prediction's), got {describe(target)}")
    if tuple(target.shape) != tuple(prediction.shape):
        raise ValueError(f"target: expected shape {tuple(prediction.shape)} (the prediction's), "
                         f"got {describe(target)}")
    count = 1
    for size in prediction.shape:
        count *= size
    if count == 0:
        raise ValueError(f"prediction: expected at least one element, got {describe(prediction)}")
    error = prediction - target
    return xp.sum(error * error) / count, error * (2.0 / count)


def _check_float(name, a):
    if dtype_name(a.dtype) not in ("float32", "float64"):
        raise TypeError(f"{name}: expected a float32 or float64 array, got {describe(a)}")
