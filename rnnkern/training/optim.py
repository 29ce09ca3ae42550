r"""Optimizers (``SGD``, ``Adam``) and gradient clipping over parameter dicts.

An optimizer keeps its own state (momentum buffers, moments) by parameter
name and updates the parameter arrays in place::

    optimizer = Adam(lr=1e-3)
    grads, norm = clip_grad_norm(grads, max_norm=1.0)
    optimizer.step(model.parameters(), grads)

``params`` is any dict name -> array (``Sequential.parameters()``,
``LSTM.parameters()``, or the union of several layers' dicts); it is passed
at every step, so loading new weights into the model never leaves the
optimizer holding stale arrays.  The updates reproduce ``torch.optim.SGD``
and ``torch.optim.Adam`` (single-tensor implementation) operation for
operation; the clipping functions reproduce
``torch.nn.utils.clip_grad_norm_`` and ``clip_grad_value_`` but return new
gradient dicts instead of scaling in place.
"""

from __future__ import annotations

import math
import numbers

import array_api_compat

from ..dispatch import namespace_of
from ..validation import describe
from .beyond_array_api import to_numpy

__all__ = ["SGD", "Adam", "clip_grad_norm", "clip_grad_value"]


class _Optimizer:
    """Shared bookkeeping: step count, per-parameter slots, state_dict."""

    slot_names = ()

    def __init__(self, hyperparameters):
        self.hyperparameters = hyperparameters
        self.steps = 0
        self.slots = {name: {} for name in self.slot_names}

    def step(self, params, grads):
        """Update every array of ``params`` in place from ``grads`` (same keys)."""
        if not hasattr(params, "keys") or not hasattr(grads, "keys"):
            raise TypeError(f"params, grads: expected two dicts name -> array, got "
                            f"{describe(params)} and {describe(grads)}")
        if set(params) != set(grads):
            raise ValueError(f"grads: expected the keys of params; missing "
                             f"{sorted(set(params) - set(grads))}, unexpected "
                             f"{sorted(set(grads) - set(params))}")
        known = set().union(*(slot.keys() for slot in self.slots.values()))
        if known and known != set(params):
            raise ValueError(f"params: the optimizer's state is for parameters {sorted(known)}, "
                             f"got {sorted(params)}")
        for name, param in params.items():
            grad = grads[name]
            namespace_of(param, grad, names=[f"params[{name!r}]", f"grads[{name!r}]"])
            if tuple(grad.shape) != tuple(param.shape):
                raise ValueError(f"grads[{name!r}]: expected shape {tuple(param.shape)}, "
                                 f"got {describe(grad)}")
        self.steps += 1
        for name, param in params.items():
            xp = array_api_compat.array_namespace(param)
            state = {slot: self._slot(slot, name, param, xp) for slot in self.slot_names}
            new_param, new_state = self._update(xp, param, grads[name], state)
            for slot, value in new_state.items():
                self.slots[slot][name] = value
            param[...] = new_param

    def _slot(self, slot, name, param, xp):
        """The slot array for ``name`` on ``param``'s library and device; None before the first step."""
        value = self.slots[slot].get(name)
        if value is None:
            return None
        if tuple(value.shape) != tuple(param.shape):
            raise ValueError(f"params[{name!r}]: the optimizer's {slot} has shape "
                             f"{tuple(value.shape)}, the parameter {describe(param)}")
        if array_api_compat.array_namespace(value) is not xp:             # loaded from disk
            value = xp.asarray(to_numpy(value), dtype=param.dtype,
                               device=array_api_compat.device(param))
        return value

    def state_dict(self):
        """``{"type", "hyperparameters", "steps", "slots": {slot: {param: array}}}``.

        Slot arrays are host NumPy copies.
        """
        return {"type": type(self).__name__, "hyperparameters": dict(self.hyperparameters),
                "steps": self.steps,
                "slots": {slot: {n: to_numpy(a) for n, a in buffers.items()}
                          for slot, buffers in self.slots.items()}}

    def load_state_dict(self, state):
        """Restore what ``state_dict`` returned; checked fully before anything changes.

        The step count and the slots are restored; the hyperparameters stay
        those given to the constructor.
        """
        if not hasattr(state, "keys") or set(state) != {"type", "hyperparameters", "steps", "slots"}:
            raise ValueError(f"state: expected the dict of an optimizer's state_dict(), "
                             f"got {describe(state)}")
        if state["type"] != type(self).__name__:
            raise ValueError(f"state: saved by {state['type']}, this optimizer is "
                             f"{type(self).__name__}")
        steps = state["steps"]
        if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 0:
            raise ValueError(f"state['steps']: expected an integer >= 0, got {steps!r}")
        slots = state["slots"]
        if not hasattr(slots, "keys") or set(slots) != set(self.slot_names):
            raise ValueError(f"state['slots']: expected slots {list(self.slot_names)}, "
                             f"got {describe(slots)}")
        names = [set(slots[s]) for s in self.slot_names]
        if any(n != names[0] for n in names):
            raise ValueError("state['slots']: the slots hold different parameter names")
        restored = {s: {n: to_numpy(a) for n, a in slots[s].items()} for s in self.slot_names}
        self.steps, self.slots = int(steps), restored

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters.items())
        return f"{type(self).__name__}({args})"


class SGD(_Optimizer):
    r"""Stochastic gradient descent with momentum, as ``torch.optim.SGD``.

    .. math::
        g \leftarrow g + \lambda \theta, \qquad
        b \leftarrow \mu b + (1 - \tau) g \ (b = g \text{ at the first step}), \\
        \theta \leftarrow \theta - \eta\,(g + \mu b \text{ if nesterov else } b)

    (without momentum, :math:`\theta \leftarrow \theta - \eta g`).
    """

    slot_names = ("momentum_buffer",)

    def __init__(self, lr, momentum=0.0, *, dampening=0.0, weight_decay=0.0, nesterov=False):
        super().__init__({"lr": _nonnegative("lr", lr),
                          "momentum": _nonnegative("momentum", momentum),
                          "dampening": _nonnegative("dampening", dampening),
                          "weight_decay": _nonnegative("weight_decay", weight_decay),
                          "nesterov": bool(nesterov)})
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError(f"nesterov: needs momentum > 0 and dampening = 0, got "
                             f"momentum={momentum!r}, dampening={dampening!r}")
        if momentum == 0:
            self.slot_names = ()
            self.slots = {}

    def _update(self, xp, param, grad, state):
        h = self.hyperparameters
        if h["weight_decay"]:
            grad = grad + h["weight_decay"] * param
        if not h["momentum"]:
            return param - h["lr"] * grad, {}
        buf = state["momentum_buffer"]
        buf = (xp.asarray(grad, copy=True) if buf is None
               else buf * h["momentum"] + (1.0 - h["dampening"]) * grad)
        direction = grad + h["momentum"] * buf if h["nesterov"] else buf
        return param - h["lr"] * direction, {"momentum_buffer": buf}


class Adam(_Optimizer):
    r"""Adam, as ``torch.optim.Adam`` (``amsgrad=False``).

    At step :math:`t`, with :math:`g \leftarrow g + \lambda\theta` if weight decay:

    .. math::
        m \leftarrow m + (1 - \beta_1)(g - m), \qquad
        v \leftarrow \beta_2 v + (1 - \beta_2) g^2, \\
        \theta \leftarrow \theta - \frac{\eta}{1 - \beta_1^t}\,
            \frac{m}{\sqrt{v} / \sqrt{1 - \beta_2^t} + \epsilon}
    """

    slot_names = ("exp_avg", "exp_avg_sq")

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, *, weight_decay=0.0):
        if not isinstance(betas, (tuple, list)) or len(betas) != 2 or \
                not all(isinstance(b, numbers.Real) and 0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas: expected two numbers in [0, 1), got {betas!r}")
        super().__init__({"lr": _nonnegative("lr", lr),
                          "betas": (float(betas[0]), float(betas[1])),
                          "eps": _nonnegative("eps", eps),
                          "weight_decay": _nonnegative("weight_decay", weight_decay)})

    def _update(self, xp, param, grad, state):
        h = self.hyperparameters
        beta1, beta2 = h["betas"]
        if h["weight_decay"]:
            grad = grad + h["weight_decay"] * param
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        if exp_avg is None:
            exp_avg, exp_avg_sq = xp.zeros_like(param), xp.zeros_like(param)
        exp_avg = exp_avg + (1.0 - beta1) * (grad - exp_avg)              # torch: lerp_
        exp_avg_sq = exp_avg_sq * beta2 + (1.0 - beta2) * (grad * grad)
        step_size = h["lr"] / (1.0 - beta1 ** self.steps)
        denom = xp.sqrt(exp_avg_sq) / math.sqrt(1.0 - beta2 ** self.steps) + h["eps"]
        return param - step_size * (exp_avg / denom), {"exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}


def clip_grad_norm(grads, max_norm):
    r"""Scale all gradients together so their global norm is at most ``max_norm``.

    .. math:: \|g\| = \sqrt{\textstyle\sum_p \sum_i g_{p,i}^2}, \qquad
              g_p \leftarrow g_p \cdot \min\!\left(1, \frac{\text{max\_norm}}{\|g\| + 10^{-6}}\right)

    as ``torch.nn.utils.clip_grad_norm_`` (2-norm).  The scaling happens on
    the arrays' device without a host round trip.

    Returns
    -------
    clipped : dict
        New gradient arrays (the inputs are not modified).
    total_norm : 0-d array
        :math:`\|g\|` before clipping.
    """
    max_norm = _nonnegative("max_norm", max_norm)
    xp = _namespace_of_grads(grads)
    squares = [xp.sum(g * g) for g in grads.values()]
    total_norm = xp.sqrt(squares[0] if len(squares) == 1 else xp.sum(xp.stack(squares)))
    coefficient = max_norm / (total_norm + 1e-6)
    coefficient = xp.where(coefficient < 1.0, coefficient, xp.ones_like(coefficient))
    return {name: g * xp.astype(coefficient, g.dtype) for name, g in grads.items()}, total_norm


def clip_grad_value(grads, clip_value):
    r"""Clip every gradient element to :math:`[-c, c]`, as ``torch.nn.utils.clip_grad_value_``.

    Returns new arrays; the inputs are not modified.
    """
    clip_value = _nonnegative("clip_value", clip_value)
    xp = _namespace_of_grads(grads)
    return {name: xp.clip(g, min=-clip_value, max=clip_value) for name, g in grads.items()}


def _namespace_of_grads(grads):
    if not hasattr(grads, "values") or not grads:
        raise TypeError(f"grads: expected a non-empty dict name -> array, got {describe(grads)}")
    names = [f"grads[{name!r}]" for name in grads]
    return namespace_of(*grads.values(), names=names)


def _nonnegative(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise TypeError(f"{name}: expected a finite number >= 0, got {value!r}")
    if value < 0:
        raise ValueError(f"{name}: expected a number >= 0, got {value!r}")
    return float(value)

