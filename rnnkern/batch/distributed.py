r"""Data-parallel training over MPI (mpi4py), and the single-process stand-in.

``mpiexec -n R python -m rnnkern train CONFIG.toml`` runs ``R`` ranks. Each
rank holds the whole model, computes the loss and gradients of its shard of
every global batch, and the ranks sum their gradients with ``Allreduce``:

.. math:: g = \frac{1}{n} \sum_{r=0}^{R-1} n_r\, g_r, \qquad
          L = \frac{1}{n} \sum_r n_r L_r, \qquad n = \sum_r n_r

where :math:`g_r, L_r` are rank ``r``'s mean gradient and loss over its
:math:`n_r` terms, so the update equals that of one process with the whole
batch (up to the order of the sums).  The gradients travel in *fused buckets*
(Horovod's tensor fusion): consecutive parameters are packed into flat
buffers of at most ``BUCKET_BYTES`` each, so a step sends a few large messages,
not one per parameter.  A first tiny ``Allreduce`` (float64) carries
:math:`n_r`, :math:`n_r L_r` and the ranks' stop and save requests (a signal seen by any
rank stops all of them at the same step).

CuPy gradients go straight to MPI through ``__cuda_array_interface__`` after a
stream synchronise when ``RNNKERN_CUDA_AWARE_MPI=1`` says the MPI library is
CUDA-aware; otherwise they are staged through host buffers.

Cost model of one step on ``R`` ranks (ring allreduce, ``P`` parameter bytes,
link bandwidth :math:`\beta` bytes/s, latency :math:`\alpha` per message, ``K``
buckets):

.. math:: t_{\text{step}}(R) \approx \frac{t_{\text{compute}}(B)}{R}
          + K\left(2 (R-1) \alpha\right) + 2\,\frac{R-1}{R}\,\frac{P}{\beta}

mpi4py is imported only when a job runs under MPI (``communicator()``).
"""

from __future__ import annotations

import os
import sys

import numpy as np

__all__ = ["SingleProcess", "MPICommunicator", "communicator", "launched_by_mpi",
           "BUCKET_BYTES"]

BUCKET_BYTES = 16 * 2**20      # 16 MiB per fused Allreduce message

# environment variables set by MPI launchers for every rank (MPICH/Hydra, Open MPI, PMIx)
_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS")


def launched_by_mpi():
    """True when a launcher (mpiexec, srun with PMI) started this as one of several ranks."""
    for name in _SIZE_VARIABLES:
        try:
            if int(os.environ.get(name, "1")) > 1:
                return True
        except ValueError:
            continue
    return False


def communicator():
    """An :class:`MPICommunicator` under a multi-rank launch, else :class:`SingleProcess`."""
    if not launched_by_mpi():
        return SingleProcess()
    try:
        from mpi4py import MPI
    except ImportError as err:
        raise RuntimeError(f"this process was launched by MPI with several ranks, but mpi4py "
                           f"cannot be imported ({err}); pip install 'rnnkern[mpi]'") from None
    return MPICommunicator(MPI.COMM_WORLD)


class SingleProcess:
    """One process: every collective is the identity."""

    rank, size = 0, 1

    def broadcast_parameters(self, params):
        """Nothing to do."""

    def reduce_step(self, grads, loss, count, stop, save):
        """Return ``(grads, loss, stop, save)`` unchanged (one process holds the whole batch)."""
        return grads, float(loss), bool(stop), bool(save)

    def allgather(self, value):
        """``[value]``."""
        return [value]

    def gather_batch(self, arrays):
        """The arrays themselves (the whole batch is here)."""
        return arrays

    def abort(self, message):
        """Nothing to coordinate: the caller raises."""


class MPICommunicator:
    """Bucketed gradient averaging and parameter broadcast over an mpi4py communicator."""

    def __init__(self, comm, bucket_bytes=BUCKET_BYTES):
        from mpi4py import MPI
        self._mpi = MPI
        self.comm = comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.bucket_bytes = bucket_bytes
        self.cuda_aware = os.environ.get("RNNKERN_CUDA_AWARE_MPI", "0") == "1"
        self.messages = 0            # Allreduce calls so far (for tests and the report)

    # ---------------------------------------------------------------- buckets
    def buckets(self, arrays):
        """Split the names of ``arrays`` (in order) into buckets of at most ``bucket_bytes``."""
        buckets, current, size = [], [], 0
        for name, a in arrays.items():
            nbytes = a.size * a.dtype.itemsize
            if current and size + nbytes > self.bucket_bytes:
                buckets.append(current)
                current, size = [], 0
            current.append(name)
            size += nbytes
        if current:
            buckets.append(current)
        return buckets

    def _flat(self, xp, arrays, names):
        return xp.concat([xp.reshape(arrays[n], (-1,)) for n in names])

    def _to_wire(self, buffer):
        """The buffer MPI reads: the device array (CUDA-aware) or a host copy."""
        if isinstance(buffer, np.ndarray):
            return buffer
        import cupy
        cupy.cuda.get_current_stream().synchronize()
        return buffer if self.cuda_aware else cupy.asnumpy(buffer)

    def _from_wire(self, xp, wire, like):
        return wire if wire is like else xp.asarray(wire, device=like.device)

    def _unflatten(self, xp, flat, arrays, names):
        out, offset = {}, 0
        for n in names:
            size = arrays[n].size
            out[n] = xp.reshape(flat[offset:offset + size], tuple(arrays[n].shape))
            offset += size
        return out

    # ---------------------------------------------------------------- collectives
    def broadcast_parameters(self, params):
        """Copy rank 0's parameters into every rank's arrays (in place), bucket by bucket."""
        import array_api_compat
        xp = array_api_compat.array_namespace(*params.values())
        for names in self.buckets(params):
            flat = self._flat(xp, params, names)
            wire = self._to_wire(flat)
            self.comm.Bcast(wire, root=0)
            for n, value in self._unflatten(xp, self._from_wire(xp, wire, flat),
                                            params, names).items():
                params[n][...] = value

    def reduce_step(self, grads, loss, count, stop, save):
        """Average the ranks' gradients and losses weighted by their term counts.

        Returns ``(grads, loss, stop, save)`` with the global mean gradient
        dict, the global mean loss (float) and whether any rank asked to stop
        or to save a checkpoint (a signal that reached some ranks only acts on
        all of them, at the same step).
        """
        import array_api_compat
        MPI = self._mpi
        totals = np.array([count, float(loss) * count, float(stop), float(save)], np.float64)
        self.comm.Allreduce(MPI.IN_PLACE, totals, op=MPI.SUM)
        self.messages += 1
        total_count = totals[0]
        xp = array_api_compat.array_namespace(*grads.values())
        averaged = {}
        for names in self.buckets(grads):
            flat = self._flat(xp, grads, names) * count            # rank's sum, not mean
            wire = self._to_wire(flat)
            self.comm.Allreduce(MPI.IN_PLACE, wire, op=MPI.SUM)
            self.messages += 1
            flat = self._from_wire(xp, wire, flat) / total_count
            averaged.update(self._unflatten(xp, flat, grads, names))
        return averaged, float(totals[1] / total_count), bool(totals[2] > 0), bool(totals[3] > 0)

    def allgather(self, value):
        """Every rank's (small, picklable) ``value``, in rank order, on every rank."""
        return self.comm.allgather(value)

    def gather_batch(self, arrays):
        """Concatenate every rank's arrays along the batch axis (1) on rank 0; None elsewhere."""
        host = [np.asarray(a) if isinstance(a, np.ndarray) else a.get() for a in arrays]
        parts = self.comm.gather(host, root=0)
        if self.rank != 0:
            return None
        return [np.concatenate([p[k] for p in parts], axis=1) for k in range(len(arrays))]

    def abort(self, message):
        """Print ``message`` and end every rank of the job (no rank is left waiting)."""
        print(f"rnnkern train: rank {self.rank} of {self.size}: {message}; aborting all ranks",
              file=sys.stderr, flush=True)
        self.comm.Abort(1)
