"""Batch jobs for clusters: ``python -m rnnkern train`` and ``python -m rnnkern predict``.

- :mod:`rnnkern.batch.config`: the TOML configuration, every key checked.
- :mod:`rnnkern.batch.data`: the data files and the deterministic batch order.
- :mod:`rnnkern.batch.model`: input layer, recurrent layers, head; the task losses.
- :mod:`rnnkern.batch.train`: the training loop, checkpoints, signals, metrics.
- :mod:`rnnkern.batch.distributed`: data-parallel training over MPI (mpi4py).
- :mod:`rnnkern.batch.predict`: chunked inference, in one process or on Dask.

mpi4py and Dask are imported only inside the code paths that use them.
"""

__all__ = ["config", "data", "model", "train", "distributed", "predict"]
