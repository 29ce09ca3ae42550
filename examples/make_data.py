"""Write the small data set examples/sine.toml trains on (NumPy only, a few seconds).

Each sample is a noisy sine wave of random frequency and phase, 40 steps of
one feature; the target is its class: whether the frequency is above the
median (a sequence-classification task).

    python examples/make_data.py [DIRECTORY]        # default: examples/data
"""

import pathlib
import sys

import numpy as np


def main(directory):
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    n, steps = 2048, 40
    frequency = rng.uniform(0.05, 0.25, n)
    phase = rng.uniform(0, 2 * np.pi, n)
    t = np.arange(steps)
    waves = np.sin(2 * np.pi * frequency[:, None] * t + phase[:, None])
    waves += 0.1 * rng.standard_normal(waves.shape)
    np.save(directory / "waves.npy", waves[:, :, None].astype(np.float32))       # (N, T, 1)
    np.save(directory / "labels.npy", (frequency > np.median(frequency)).astype(np.int64))
    np.save(directory / "lengths.npy", rng.integers(steps // 2, steps + 1, n))   # (N,)
    print(f"wrote {n} sequences of {steps} steps to {directory}/")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else pathlib.Path(__file__).parent / "data")
