from .generic_backend import forward_direction, backward_direction  # placeholder while the Numba kernels are written
