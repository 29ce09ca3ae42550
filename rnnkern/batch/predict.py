r"""``python -m rnnkern predict CHECKPOINT INPUT --out OUTPUT``: batch inference.

Runs the model a ``python -m rnnkern train`` checkpoint holds over every
sample of ``INPUT`` (a ``.npy`` file, or ``.npz`` with ``--key``; laid out as
the training inputs, sample axis first) and writes ``OUTPUT`` (``.npy``):
class scores ``(N, C)`` (logits) for a classifier, ``(N, T, O)`` for
sequence-to-sequence regression, ``(N, T, V)`` next-token logits for a
language model.

Memory stays bounded: a ``.npy`` input is memory-mapped, the model runs on
``--chunk-size`` samples at a time (on the GPU with ``--device cuda``: each
chunk is copied there and its outputs back), and each chunk's outputs go
straight into a memory-mapped output file that is renamed into place when
complete (a failed run leaves no partial ``OUTPUT``).

``--dask`` runs the same chunks as a Dask array split along the sample axis
(``map_blocks``) on a ``distributed`` cluster: a local one by default
(``--workers``, threads in this process unless ``--processes``) or the
scheduler at ``--scheduler ADDRESS``.  The blocks of a ``.npy`` input are
read by the workers themselves (they need to see ``INPUT`` on a shared file
system, as on a cluster); only the outputs travel back.  The model's
parameters are broadcast to every worker once
(``Client.scatter(..., broadcast=True)``) and each worker builds the model
from them once.  Dask is imported only on this path.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid

import numpy as np

from ..devices import DEVICES
from ..training import CheckpointError, read_checkpoint, to_numpy
from .config import ConfigError
from .model import BatchModel

__all__ = ["build_parser", "main", "load_model", "predict_array"]


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m rnnkern predict",
        description="Run a trained model (a `python -m rnnkern train` checkpoint) over a "
                    "file of input sequences, in chunks.")
    parser.add_argument("checkpoint", metavar="CHECKPOINT")
    parser.add_argument("input", metavar="INPUT", help=".npy file (or .npz with --key)")
    parser.add_argument("--out", required=True, metavar="OUTPUT", help=".npy file to write")
    parser.add_argument("--key", help="array name inside an .npz INPUT")
    parser.add_argument("--lengths", metavar="FILE", help=".npy file of sequence lengths")
    parser.add_argument("--chunk-size", type=int, default=1024, metavar="N",
                        help="samples per chunk (1024)")
    parser.add_argument("--device", choices=DEVICES, default="cpu")
    parser.add_argument("--dask", action="store_true",
                        help="run the chunks as a Dask array on a distributed cluster")
    parser.add_argument("--scheduler", metavar="ADDRESS",
                        help="with --dask: connect to this scheduler instead of a local cluster")
    parser.add_argument("--workers", type=int, default=2,
                        help="with --dask: local cluster workers (2)")
    parser.add_argument("--processes", action="store_true",
                        help="with --dask: local workers as processes (default: threads)")
    return parser


def main(argv=None):
    """Entry point of ``python -m rnnkern predict``; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        if args.chunk_size < 1:
            raise ConfigError(f"--chunk-size: expected an integer >= 1, got {args.chunk_size}")
        started = time.perf_counter()
        n = run(args)
    except (ConfigError, CheckpointError, FileNotFoundError) as err:
        print(f"rnnkern predict: error: {err}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - started
    print(f"predicted {n} samples in {seconds:.2f} s ({n / seconds:,.0f} samples/s)"
          f"{' with dask' if args.dask else ''}; wrote {args.out}")
    return 0


def load_model(checkpoint_path, device="cpu"):
    """``(model, meta)``: the model of a ``train`` checkpoint, on ``device``."""
    saved = read_checkpoint(checkpoint_path)
    return _build(saved.config, _parameters(saved.model_state), device), saved.config


def _parameters(model_state):
    return {n: a for n, a in model_state.items() if not n.startswith("carry.")}


def _build(meta, state, device):
    from .train import CHECKPOINT_KIND
    if meta.get("kind") != CHECKPOINT_KIND:
        raise CheckpointError("checkpoint: not a checkpoint of `python -m rnnkern train`")
    config = {table: dict(values) for table, values in meta["config"].items()}
    config["training"]["device"] = device
    model = BatchModel(config, meta["sizes"])
    model.load_state_dict(state)
    return model


def _check_input(x, lengths, meta, name):
    """Input layout and dtype as the model was trained on."""
    sizes, model = meta["sizes"], meta["config"]["model"]
    if model["input"] == "embedding":
        if x.ndim != 2 or x.dtype.kind not in "iu":
            raise ConfigError(f"{name}: expected an (N, T) integer array of token ids, got "
                              f"shape {x.shape} and dtype {x.dtype}")
        if x.size and (x.min() < 0 or x.max() >= sizes["vocab_size"]):
            raise ConfigError(f"{name}: expected token ids in [0, {sizes['vocab_size']}), got "
                              f"values from {int(x.min())} to {int(x.max())}")
    elif x.ndim != 3 or x.dtype.kind != "f" or x.shape[2] != sizes["input_size"]:
        raise ConfigError(f"{name}: expected an (N, T, {sizes['input_size']}) float array, "
                          f"got shape {x.shape} and dtype {x.dtype}")
    if min(x.shape) == 0:
        raise ConfigError(f"{name}: expected no empty axis, got shape {x.shape}")
    if lengths is not None and (lengths.shape != (x.shape[0],) or lengths.dtype.kind not in "iu"
                                or lengths.min() < 1 or lengths.max() > x.shape[1]):
        raise ConfigError(f"--lengths: expected ({x.shape[0]},) integers in [1, {x.shape[1]}], "
                          f"got shape {lengths.shape} and dtype {lengths.dtype}")


def _output_shape(meta, x_shape):
    if meta["config"]["task"]["kind"] == "classification":
        return (x_shape[0], meta["sizes"]["output_size"])
    return tuple(x_shape[:2]) + (meta["sizes"]["output_size"],)


def predict_array(model, x, lengths=None):
    """Outputs of ``model`` for host samples ``x`` (sample axis first), as a host array."""
    import array_api_compat
    first = next(iter(model.parameters().values()))
    xp, device = array_api_compat.array_namespace(first), array_api_compat.device(first)
    x = np.ascontiguousarray(np.swapaxes(np.asarray(x), 0, 1))
    if x.dtype.kind == "f":
        x = x.astype(first.dtype, copy=False)
    out = to_numpy(model.infer(xp.asarray(x, device=device),
                               None if lengths is None else np.asarray(lengths)))
    return out if out.ndim == 2 else np.ascontiguousarray(np.swapaxes(out, 0, 1))


def _open_input(path, key):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"INPUT: no such file {path!r}")
    try:
        if key is None:
            x = np.load(path, mmap_mode="r", allow_pickle=False)
            if not isinstance(x, np.ndarray):
                raise ConfigError(f"INPUT {path}: an .npz archive: name the array with --key")
            return x
        with np.load(path, allow_pickle=False) as archive:
            if key not in archive.files:
                raise ConfigError(f"--key {key!r}: not in {path} (it has {sorted(archive.files)})")
            return archive[key]
    except ConfigError:
        raise
    except Exception as err:
        raise ConfigError(f"INPUT {path}: not a readable NumPy file ({type(err).__name__}: "
                          f"{err})") from None


def run(args):
    """Predict as ``args`` say; return the number of samples."""
    saved = read_checkpoint(args.checkpoint)
    meta = saved.config
    x = _open_input(args.input, args.key)
    lengths = None
    if args.lengths:
        lengths = np.asarray(_open_input(args.lengths, None))
    _check_input(x, lengths, meta, f"INPUT {args.input}")
    state = _parameters(saved.model_state)
    shape = _output_shape(meta, x.shape)
    directory = os.path.dirname(os.path.abspath(args.out))
    descriptor, temporary = tempfile.mkstemp(prefix=os.path.basename(args.out) + ".",
                                             suffix=".tmp", dir=directory)
    os.close(descriptor)
    try:
        out = np.lib.format.open_memmap(temporary, mode="w+", dtype=np.dtype(
            meta["config"]["training"]["dtype"]), shape=shape)
        if args.dask:
            _predict_dask(args, meta, state, x, lengths, out)
        else:
            model = _build(meta, state, args.device)
            for start in range(0, x.shape[0], args.chunk_size):
                stop = min(start + args.chunk_size, x.shape[0])
                out[start:stop] = predict_array(
                    model, x[start:stop], None if lengths is None else lengths[start:stop])
        out.flush()
        del out
        os.replace(temporary, args.out)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    return x.shape[0]


# ---------------------------------------------------------------- Dask

_WORKER_MODELS = {}      # on each worker: token -> model, built once from the broadcast payload


def _predict_block(block, lengths_block, payload):
    """One Dask block: build (once per worker) the model from ``payload``, run it."""
    model = _WORKER_MODELS.get(payload["token"])
    if model is None:
        model = _build(payload["meta"], payload["state"], payload["device"])
        _WORKER_MODELS[payload["token"]] = model
    lengths = None if lengths_block is None else np.ravel(lengths_block)
    return predict_array(model, block, lengths)


def _predict_block_without_lengths(block, payload):
    return _predict_block(block, None, payload)


def _predict_dask(args, meta, state, x, lengths, out):
    import dask.array as da
    from distributed import Client, LocalCluster, as_completed

    if args.scheduler:
        client, cluster = Client(args.scheduler), None
    else:
        cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1,
                               processes=args.processes, dashboard_address=None)
        client = Client(cluster)
    try:
        payload = {"meta": meta, "state": state, "device": args.device,
                   "token": uuid.uuid4().hex}
        payload_future = client.scatter(payload, broadcast=True)     # once per worker
        chunks = (args.chunk_size,) + x.shape[1:]
        # a .npy file: each block reads its own rows where it runs (nothing big in the graph);
        # an .npz array (already in memory here): its chunks are sent
        xd = _file_blocks(args.input, x, args.chunk_size) if isinstance(x, np.memmap) else \
            da.from_array(np.asarray(x), chunks=chunks)
        kind = meta["config"]["task"]["kind"]
        output_size = meta["sizes"]["output_size"]
        out_chunks = ((xd.chunks[0], (output_size,)) if kind == "classification"
                      else (xd.chunks[0], xd.chunks[1], (output_size,)))
        drop = [1] if (kind == "classification" and x.ndim == 3) else None
        new = [2] if (kind != "classification" and x.ndim == 2) else None
        if lengths is None:
            arguments, function = (xd,), _predict_block_without_lengths
        else:             # lengths as (N, 1[, 1]): its blocks line up with the samples'
            column = lengths.reshape((-1,) + (1,) * (x.ndim - 1))
            arguments = (xd, da.from_array(column, chunks=(args.chunk_size,) + column.shape[1:]))
            function = _predict_block
        result = da.map_blocks(function, *arguments, payload=payload_future,
                               dtype=out.dtype, chunks=out_chunks, drop_axis=drop, new_axis=new,
                               meta=np.empty((0,) * len(out_chunks), out.dtype))
        offsets = np.concatenate([[0], np.cumsum(xd.chunks[0])])
        blocks = result.to_delayed().ravel()
        futures = client.compute(list(blocks))
        index = {f.key: k for k, f in enumerate(futures)}
        for future, value in as_completed(futures, with_results=True):
            k = index[future.key]
            out[offsets[k]:offsets[k + 1]] = value
            future.release()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _read_block(path, start, stop):
    """Rows ``[start, stop)`` of the ``.npy`` file (read on the worker)."""
    return np.array(np.load(path, mmap_mode="r", allow_pickle=False)[start:stop])


def _file_blocks(path, x, chunk_size):
    """A Dask array whose blocks each read their own rows of ``path`` (no data in the graph)."""
    import dask
    import dask.array as da
    path = os.path.abspath(path)
    blocks = []
    for start in range(0, x.shape[0], chunk_size):
        stop = min(start + chunk_size, x.shape[0])
        blocks.append(da.from_delayed(dask.delayed(_read_block)(path, start, stop),
                                      shape=(stop - start,) + x.shape[1:], dtype=x.dtype))
    return da.concatenate(blocks, axis=0)
