r"""``python -m rnnkern demo sine``: many-to-one regression on a sine wave.

::

    python -m rnnkern demo sine [--cell rnn|lstm|gru] [--steps N] [--seed S] [--device D]

fits ``RNN(1, 50) -> last step -> Dense(50, 1)`` to predict the next value of
a sine wave from windows of 10 values (MSE, Adam) and compares the test error
with the naive forecast that repeats the window's last value.  ``--cell``
picks the public layer class (``Cell.layer`` of the registry, lowercased).
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

from .. import recurrent
from ..cells import CELLS
from ..devices import DEVICES
from ..training import (Adam, Dense, LastTimestep, Sequential, clip_grad_norm,
                        mean_squared_error, save_checkpoint)
from .common import (build_on_device, check_writable_directory, namespace_and_device,
                     nonnegative_float, positive_int)

__all__ = ["TASK", "LAYERS", "build_parser", "run"]

TASK = "sine"
#: ``--cell`` choice -> public layer class name: rnn -> RNN, lstm -> LSTM, gru -> GRU.
LAYERS = {cell.layer.lower(): cell.layer for cell in CELLS.values()}


def build_parser():
    """The command line of ``demo sine``."""
    parser = argparse.ArgumentParser(
        prog="python -m rnnkern demo sine",
        description="Many-to-one regression: predict the next value of a sine wave from the "
                    "last 10 values (recurrent layer of 50 units, then Dense(1); MSE; Adam).")
    parser.add_argument("--cell", choices=tuple(LAYERS), default="rnn",
                        help="recurrent layer (rnn, as in the classic Keras SimpleRNN example)")
    parser.add_argument("--units", type=positive_int, default=50, help="recurrent units (50)")
    parser.add_argument("--window", type=positive_int, default=10,
                        help="input values per prediction (10)")
    parser.add_argument("--steps", type=positive_int, default=600,
                        help="training steps of 32 windows (600)")
    parser.add_argument("--lr", type=nonnegative_float, default=3e-3,
                        help="Adam learning rate (3e-3)")
    parser.add_argument("--seed", type=int, default=0, help="initialisation and batch order seed")
    parser.add_argument("--device", choices=DEVICES, default="cpu")
    parser.add_argument("--checkpoint", metavar="PATH", help="save the trained model here")
    return parser


def run(args) -> int:
    r"""Fit the sine model; print its test MSE beside the naive forecast's.

    The series is :math:`s_t = \sin(0.1\,t) + 0.5 \sin(0.031\,t)`, ``t = 0..2999``;
    windows ``s[i:i+w] -> s[i+w]``, the first 80 % for training and the last
    20 % (later in time) for testing.
    """
    started = time.perf_counter()
    if args.checkpoint:
        check_writable_directory(args.checkpoint)
    t = np.arange(3000)
    series = (np.sin(0.1 * t) + 0.5 * np.sin(0.031 * t)).astype(np.float32)
    w = args.window
    windows = np.lib.stride_tricks.sliding_window_view(series[:-1], w)[..., None]   # (N, w, 1)
    targets = series[w:, None]                                                       # (N, 1)
    split = int(0.8 * len(targets))

    layer = getattr(recurrent, LAYERS[args.cell])

    def build():
        return Sequential(layer(1, args.units, batch_first=True, device=args.device,
                                seed=args.seed),
                          LastTimestep(batch_first=True),
                          Dense(args.units, 1, device=args.device, seed=args.seed + 1))

    model = build_on_device(build, args.device)
    model.summary((None, w, 1), print_fn=print)
    xp, device = namespace_and_device(model)
    train_x = xp.asarray(np.ascontiguousarray(windows[:split]), device=device)
    train_y = xp.asarray(targets[:split], device=device)
    test_x = xp.asarray(np.ascontiguousarray(windows[split:]), device=device)
    test_y = xp.asarray(targets[split:], device=device)

    optimizer, rng = Adam(lr=args.lr), np.random.default_rng(args.seed)
    report_every = max(args.steps // 6, 1)
    for step in range(1, args.steps + 1):
        batch = xp.asarray(rng.integers(0, split, 32), device=device)
        prediction, _, tape = model.forward(xp.take(train_x, batch, axis=0))
        loss, dprediction = mean_squared_error(prediction, xp.take(train_y, batch, axis=0))
        _, _, grads = model.backward(dprediction, tape)
        del tape         # a live tape would make the update copy the parameters for it
        grads, _ = clip_grad_norm(grads, 1.0)
        optimizer.step(model.parameters(), grads)
        if step % report_every == 0 or step == args.steps:
            print(f"step {step:5d}   training MSE {float(loss):.6f}")

    test_prediction, _ = model(test_x)
    test_mse = float(mean_squared_error(test_prediction, test_y)[0])
    naive_mse = float(mean_squared_error(test_x[:, -1, :], test_y)[0])
    print(f"\ntest MSE {test_mse:.6f} (RMSE {math.sqrt(test_mse):.4f}) on {len(targets) - split} "
          f"windows")
    print(f"naive 'repeat the last value' MSE {naive_mse:.6f} (RMSE {math.sqrt(naive_mse):.4f}): "
          f"the model's error is {test_mse / naive_mse:.1%} of it")
    if args.checkpoint:
        save_checkpoint(args.checkpoint, model,
                        config={"task": TASK, "cell": args.cell, "units": args.units,
                                "window": w}, progress={"steps": args.steps})
        print(f"checkpoint saved to {args.checkpoint}")
    print(f"wall time {time.perf_counter() - started:.1f} s")
    return 0
