"""Models in and out of other libraries: ``torch.nn`` and Keras 3.

>>> import rnnkern as rk                                      # doctest: +SKIP
>>> layer = rk.interop.from_torch(torch.nn.LSTM(8, 16, num_layers=2))
>>> module = rk.interop.to_torch(layer)
>>> model = rk.interop.from_keras(keras_sequential)           # SimpleRNN/LSTM/GRU/Dense
>>> keras_model = rk.interop.to_keras(model)

Neither torch nor Keras is imported by importing this package: the
conversions import them when called (``from_torch``/``from_keras`` only look
them up, since their argument is already a torch or Keras object).
"""

from .keras_models import from_keras, to_keras
from .torch_modules import from_torch, to_torch

__all__ = ["from_torch", "to_torch", "from_keras", "to_keras"]
