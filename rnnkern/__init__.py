"""rnnkern: accelerated recurrent-network kernels for array users.

NumPy arrays run on Numba-jitted CPU kernels, CuPy arrays on CUDA kernels,
arrays of any other array-API library on a plain (slow, correct) array-API
path.  The layers follow ``torch.nn.RNN/LSTM/GRU``: same shapes, gate order,
parameter names and semantics.

>>> import numpy as np, rnnkern as rk
>>> lstm = rk.LSTM(8, 16, num_layers=2, seed=0)
>>> y, (h, c), tape = lstm.forward(np.zeros((5, 3, 8), np.float32))
>>> dx, (dh0, dc0), grads = lstm.backward(np.ones_like(y), tape)
"""

from .cells import CELLS, Cell, cell_for
from .config import show_config
from .dispatch import backend_name, namespace_of
from .interop import from_keras, from_torch, to_keras, to_torch
from .recurrent import GRU, LSTM, RNN
from .single_step import GRUCell, LSTMCell, RNNCell
from .tape import Tape

__version__ = "0.1.0"

__all__ = ["RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell", "Tape", "Cell", "CELLS", "cell_for",
           "from_torch", "to_torch", "from_keras", "to_keras",
           "namespace_of", "backend_name", "show_config", "__version__"]
