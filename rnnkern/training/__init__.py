"""Training toolkit: the layers, losses, optimizers and loops around the recurrent layers.

Everything here works on the arrays' own namespace (array-API calls), so the
same model code trains on NumPy (Numba kernels) and on CuPy (CUDA kernels).

>>> import numpy as np, rnnkern as rk
>>> from rnnkern.training import Sequential, Embedding, Dense, Adam, train_step
>>> model = Sequential(Embedding(20, 8, seed=0), rk.LSTM(8, 32, seed=1), Dense(32, 20, seed=2))
>>> optimizer = Adam(lr=1e-2)
>>> ids = np.arange(33) % 20
>>> loss, states, norm = train_step(model, optimizer, ids[:-1, None], ids[1:, None],
...                                 max_grad_norm=1.0)
"""

from .bptt import batchify, bptt_chunks, chunks_per_epoch, evaluate_loss, train_step
from .checkpoint import (Checkpoint, CheckpointError, load_checkpoint, read_checkpoint,
                         save_checkpoint)
from .layers import Dense, Embedding, LastTimestep, Sequential
from .beyond_array_api import scatter_add_rows, to_numpy
from .losses import mean_squared_error, softmax_cross_entropy
from .optim import SGD, Adam, clip_grad_norm, clip_grad_value
from .sampling import generate, sample_with_temperature

__all__ = ["Sequential", "Embedding", "Dense", "LastTimestep",
           "softmax_cross_entropy", "mean_squared_error",
           "SGD", "Adam", "clip_grad_norm", "clip_grad_value",
           "batchify", "bptt_chunks", "chunks_per_epoch", "train_step", "evaluate_loss",
           "sample_with_temperature", "generate",
           "save_checkpoint", "read_checkpoint", "load_checkpoint", "Checkpoint",
           "CheckpointError", "scatter_add_rows", "to_numpy"]
