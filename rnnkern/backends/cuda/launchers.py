"""What the CUDA orchestration talks to: a launcher, and what it counts.

The orchestration (``driver``) never calls CuPy's kernels or cuBLAS itself;
it asks a launcher, an object with

- ``xp``: the array module of the arrays (CuPy, or NumPy in the emulation);
- ``launch(name, grid, block, args, *, shared_bytes=0, cooperative=False)``:
  run the kernel named by the name expression ``name``; ``args`` holds
  arrays, tuples of arrays (one ``StepArrays`` parameter each) and exactly
  typed NumPy scalars; ``shared_bytes`` of dynamic shared memory per block;
  ``cooperative`` for a grid that synchronises (all blocks co-resident,
  ``cooperative_groups::this_grid().sync()``);
- ``matmul(a, b, out=None)``: a library GEMM (cuBLAS through ``xp.matmul``);
- ``device_limits()``: the ``planner.DeviceLimits`` the paths are planned for;
- ``capture(enqueue) -> graph`` and ``replay(graph)``: what ``enqueue()``
  launches and multiplies, recorded once and replayed with one host call
  (a CUDA graph on a GPU; the recorded calls themselves in the emulation);
  ``graphs``, a small cache of them for the orchestration.

``Launcher`` is the common base of ``rnnkern.backends.cuda.CupyLauncher``
and ``rnnkern.backends.cuda.emulation.EmulatedLauncher``.  It counts the
host's calls: ``counts["kernels"]`` launches of our kernels,
``counts["gemms"]`` library GEMMs, ``counts["graphs"]`` graph replays
(the host calls), and what the replayed graphs held:
``counts["graph_kernels"]``, ``counts["graph_gemms"]``; and
``counts["gemm_flops"]``, the FLOPs of all GEMMs (``2 m k n`` for an
``(m, k) @ (k, n)`` product).  The counts are the CUDA path's
deterministic speed metric: at small batch a GPU step costs far less than
a host call, so calls per sequence (O(1) on the persistent path, O(T) on
the step path) predict its time on any machine, the emulation included.
"""

from __future__ import annotations

import collections
import dataclasses
import functools

from .planner import EMULATED_DEVICE

__all__ = ["Launcher", "Graph", "GraphCache"]


class Launcher:
    """Base of the launchers: ``xp``, counted ``launch`` and ``matmul``, ``device_limits``.

    Subclasses implement ``_launch(name, grid, block, args, shared_bytes,
    cooperative)``.  ``limits`` (default ``planner.EMULATED_DEVICE``) is
    what ``device_limits`` returns unless a subclass asks the device.
    """

    def __init__(self, xp, limits=EMULATED_DEVICE):
        self.xp = xp
        self.limits = limits
        self.counts = collections.Counter()
        self.graphs = GraphCache()
        self._recording = None          # the calls of the graph being captured

    def device_limits(self):
        """The limits the planner plans this launcher's work for."""
        return self.limits

    def launch(self, name, grid, block, args, *, shared_bytes=0, cooperative=False):
        """Run kernel ``name`` on ``grid`` x ``block`` threads (see the module docstring)."""
        call = functools.partial(self._launch, name, grid, block, args, shared_bytes, cooperative)
        if self._recording is not None:
            self._recording.append(("kernels", call, name))
            return
        self.counts["kernels"] += 1
        call()

    def matmul(self, a, b, out=None):
        """``a @ b`` by the array library (cuBLAS for CuPy), into ``out`` if given
        (which a call being captured must give: nothing is computed then)."""
        (m, k), n = a.shape, b.shape[1]
        if self._recording is not None:
            if out is None:
                raise ValueError("matmul inside capture(): out must be given")
            self._recording.append(("gemms", functools.partial(self.xp.matmul, a, b, out=out),
                                    2 * m * k * n))
            return out
        self.counts["gemms"] += 1
        self.counts["gemm_flops"] += 2 * m * k * n
        return self.xp.matmul(a, b, out=out)

    def capture(self, enqueue):
        """Record the launches and GEMMs of ``enqueue()`` (run nothing): a ``Graph``.

        Every array the calls use must outlive the graph and keep its
        address: the replays read and write those very buffers.  Here the
        graph runs the recorded calls; ``CupyLauncher`` makes a CUDA graph
        of them.
        """
        if self._recording is not None:
            raise RuntimeError("capture() inside capture()")
        self._recording = []
        try:
            enqueue()
            recorded = self._recording
        finally:
            self._recording = None
        calls = [call for _, call, _ in recorded]
        kernel_names = tuple(name for kind, _, name in recorded if kind == "kernels")
        return Graph(run=lambda: [call() for call in calls], kernels=len(kernel_names),
                     gemms=len(calls) - len(kernel_names),
                     gemm_flops=sum(flops for kind, _, flops in recorded if kind == "gemms"),
                     calls=calls, kernel_names=frozenset(kernel_names))

    def replay(self, graph):
        """Run a captured ``Graph``: one host call."""
        self.counts["graphs"] += 1
        self.counts["graph_kernels"] += graph.kernels
        self.counts["graph_gemms"] += graph.gemms
        self.counts["gemm_flops"] += graph.gemm_flops
        graph.run()

    def _launch(self, name, grid, block, args, shared_bytes, cooperative):
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class Graph:
    """A captured graph: ``run()`` replays it; what it holds, for the counts;
    ``calls``, the recorded calls in order; ``kernel_names``, the kernels
    they launch."""

    run: object
    kernels: int
    gemms: int
    gemm_flops: int
    calls: list
    kernel_names: frozenset


class GraphCache:
    """The most recently used captured graphs, by key, with the buffers they bind.

    Holds at most ``limit`` entries: each binds a direction's worth of
    buffers, so an unbounded cache would hold memory for every shape ever
    seen.
    """

    def __init__(self, limit=8):
        self.limit = limit
        self._entries = collections.OrderedDict()

    def get(self, key):
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def put(self, key, entry):
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self.limit:
            self._entries.popitem(last=False)

    def __len__(self):
        return len(self._entries)

    def clear(self):
        self._entries.clear()
