r"""``python -m rnnkern train CONFIG.toml [--resume] [--metrics FILE]``: a training batch job.

Reads a TOML configuration (``rnnkern.batch.config``), its data
(``rnnkern.batch.data``), builds the model (``rnnkern.batch.model``) and trains
it step by step: one step is one optimizer update on one global batch (or one
truncated-BPTT chunk of it, the recurrent state carried to the next chunk).

Checkpoints (``rnnkern.training.checkpoint``: written to a temporary file and
renamed, so a killed job never leaves a half-written one) are saved every
``checkpoint_every`` steps, at the end, on SIGUSR1 (the job goes on: Slurm's
``--signal=USR1@120`` warning) and on SIGTERM (the job then exits with status
143).  A checkpoint holds the parameters, the optimizer's state, the step
count and the carried recurrent state; the data order is a function of the
seed and the step.  So ``--resume`` continues exactly where the job stopped:
on the CPU the final parameters equal those of an uninterrupted run bit for
bit.

Metrics go to a JSON-lines file (``--metrics``), one object per logged step::

    {"step": 20, "loss": 0.61, "samples_per_s": 5310.2, "wall_s": 1.9, "epoch": 0}
    {"step": 20, "val_loss": 0.64, "wall_s": 2.0}

(``tokens_per_s`` for a language model).  The progress bar appears only when
standard error is a terminal; batch logs get a plain line every
``log_every`` steps.  Under MPI (``mpiexec -n R``) rank 0 alone writes the
checkpoints, metrics and log, and the loss it logs is the global one.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time

import array_api_compat
import numpy as np

from ..training import (CheckpointError, batchify, chunks_per_epoch, clip_grad_norm,
                        clip_grad_value, evaluate_loss, read_checkpoint, save_checkpoint)
from ..training.checkpoint import unwritable_reason
from .config import ConfigError, load_config, optimizer_from_config
from .data import epoch_order, load_data
from .distributed import communicator
from .model import BatchModel, model_sizes, task_loss

__all__ = ["build_parser", "main", "run", "CHECKPOINT_KIND"]

CHECKPOINT_KIND = "rnnkern-batch"
EXIT_SIGTERM = 128 + signal.SIGTERM
# keys of [training] that may change between a run and its resumption
RESUMABLE_CHANGES = {"steps", "epochs", "checkpoint_every", "log_every", "validate_every",
                     "checkpoint", "device"}


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m rnnkern train",
        description="Train a recurrent model described by a TOML configuration "
                    "(see rnnkern.batch.config). Under `mpiexec -n N` the ranks train "
                    "data-parallel.")
    parser.add_argument("config", metavar="CONFIG.toml", help="the job's configuration")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the configuration's checkpoint file (a fresh "
                             "start if there is none yet, as after a first Slurm requeue)")
    parser.add_argument("--metrics", metavar="FILE",
                        help="append JSON-lines metrics here (rank 0 only)")
    return parser


def main(argv=None):
    """Entry point of ``python -m rnnkern train``; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        comm = communicator()
    except RuntimeError as err:
        print(f"rnnkern train: error: {err}", file=sys.stderr)
        return 2
    try:
        return run(args, comm)
    except _FailedElsewhere:
        return 2
    except (ConfigError, CheckpointError, FileNotFoundError) as err:
        prefix = f"rank {comm.rank} of {comm.size}: " if comm.size > 1 and comm.rank else ""
        print(f"rnnkern train: error: {prefix}{err}", file=sys.stderr)
        return 2
    except BaseException as err:                   # a rank failing mid-run: end the whole job
        if comm.size > 1 and not isinstance(err, SystemExit):
            comm.abort(f"{type(err).__name__}: {err}")
        raise


class _FailedElsewhere(Exception):
    """Another MPI rank failed to set up and reports why; this one just exits."""


class _Signals:
    """SIGTERM / SIGUSR1 set flags; the training loop acts on them between steps."""

    def __init__(self):
        self.stop = self.save = False
        self.previous = {}
        for sig, handler in ((signal.SIGTERM, self._on_term), (signal.SIGUSR1, self._on_usr1)):
            self.previous[sig] = signal.signal(sig, handler)

    def _on_term(self, signum, frame):
        self.stop = True

    def _on_usr1(self, signum, frame):
        self.save = True

    def restore(self):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


class _Plan:
    """Which data each step trains on (a pure function of the step): see ``rnnkern.batch.data``."""

    def __init__(self, config, train, comm):
        training = config["training"]
        self.kind = config["task"]["kind"]
        self.batch = training["batch_size"]
        self.bptt = training["bptt"]
        self.seed = training["seed"]
        self.rank, self.size = comm.rank, comm.size
        if self.batch % self.size:
            raise ConfigError(f"[training] batch_size: expected a multiple of the {self.size} "
                              f"MPI ranks (the global batch is split evenly), got {self.batch}")
        self.local = slice(self.rank * self.batch // self.size,
                           (self.rank + 1) * self.batch // self.size)
        self.train = train
        if self.kind == "language_model":
            if len(train.train_ids) < 2 * self.batch:
                raise ConfigError(f"[training] batch_size: expected at most half the "
                                  f"{len(train.train_ids)} training characters, got {self.batch}")
            self.streams = batchify(train.train_ids, self.batch)[:, self.local]
            self.chunks = chunks_per_epoch(self.streams, self.bptt)
            self.batches = 1
        else:
            if len(train) < self.batch:
                raise ConfigError(f"[training] batch_size: expected at most the {len(train)} "
                                  f"training samples, got {self.batch}")
            self.batches = len(train) // self.batch
            steps = train.inputs.shape[1]
            self.chunks = -(-steps // self.bptt) if self.bptt else 1
        self.per_epoch = self.batches * self.chunks
        self.total = training["steps"] or training["epochs"] * self.per_epoch
        self._order = (None, None)

    @property
    def unit(self):
        return "tokens" if self.kind == "language_model" else "samples"

    def step_data(self, step):
        """``(first_chunk, inputs, targets, lengths, count)`` of ``step`` on this rank, host arrays.

        ``inputs`` and ``targets`` are time-major; ``count`` is the global number
        of samples (tokens for a language model) of the step.
        """
        epoch, within = divmod(step, self.per_epoch)
        b, c = divmod(within, self.chunks)
        if self.kind == "language_model":
            t = c * self.bptt
            length = min(self.bptt, self.streams.shape[0] - 1 - t)
            return (c == 0, self.streams[t:t + length], self.streams[t + 1:t + 1 + length],
                    None, length * self.batch)
        if self._order[0] != epoch:
            self._order = (epoch, epoch_order(self.seed, epoch, len(self.train)))
        index = self._order[1][b * self.batch:(b + 1) * self.batch][self.local]
        batch = self.train.take(index)
        inputs = np.ascontiguousarray(np.swapaxes(batch.inputs, 0, 1))
        targets = batch.targets if self.kind == "classification" else \
            np.ascontiguousarray(np.swapaxes(batch.targets, 0, 1))
        if self.bptt:
            window = slice(c * self.bptt, (c + 1) * self.bptt)
            inputs, targets = inputs[window], targets[window]
        return c == 0, inputs, targets, batch.lengths, self.batch


def _device_arrays(model, *arrays):
    """Move host arrays to the model's library and device, floats in the model's dtype."""
    first = next(iter(model.parameters().values()))
    xp, device = array_api_compat.array_namespace(first), array_api_compat.device(first)
    out = []
    for a in arrays:
        if a is None:
            out.append(None)
        elif a.dtype.kind == "f":
            out.append(xp.asarray(a.astype(first.dtype, copy=False), device=device))
        else:
            out.append(xp.asarray(a, device=device))
    return xp, out


def _mask(xp, lengths, steps, like):
    """``(T, B)`` bool: ``t < lengths[b]``."""
    if lengths is None:
        return None
    t = np.arange(steps)[:, None]
    return xp.asarray(t < lengths[None, :], device=array_api_compat.device(like))


class _Carry:
    """The recurrent state carried between truncated-BPTT chunks, as a list of arrays."""

    @staticmethod
    def flatten(states):
        if states is None:
            return []
        state = states[0]
        return list(state) if isinstance(state, tuple) else [state]

    @staticmethod
    def build(model, arrays):
        if not arrays:
            return None
        return [tuple(arrays)] if len(model.recurrent.cell.state_names) > 1 else [arrays[0]]


class _Snapshot:
    """What a checkpoint's ``model/`` entries hold: the parameters, and ``carry.k`` arrays."""

    def __init__(self, model, carry):
        self.model, self.carry = model, carry

    def state_dict(self):
        state = self.model.state_dict()
        state.update({f"carry.{k}": a for k, a in enumerate(self.carry)})
        return state


def _validation_loss(model, config, validation, bptt):
    """Mean validation loss (a float) over the whole validation set, rank 0 only."""
    kind = config["task"]["kind"]
    if kind == "language_model":
        ids = validation.validation_ids
        streams = batchify(ids, max(1, min(config["training"]["batch_size"], len(ids) // 2)))
        xp, (streams,) = _device_arrays(model, streams)
        return evaluate_loss(model.body, streams, bptt)
    total, count = 0.0, 0
    batch = config["training"]["batch_size"]
    for start in range(0, len(validation), batch):
        part = validation.take(slice(start, start + batch))
        inputs = np.ascontiguousarray(np.swapaxes(part.inputs, 0, 1))
        targets = part.targets if kind == "classification" else \
            np.ascontiguousarray(np.swapaxes(part.targets, 0, 1))
        xp, (x, y) = _device_arrays(model, inputs, targets)
        out = model.infer(x, part.lengths)
        mask = None if kind == "classification" else _mask(xp, part.lengths, x.shape[0], x)
        loss, _, n = task_loss(kind, out, y, mask)
        total += float(loss) * n
        count += n
    return total / count


def _check_resumable(saved, config, path):
    """The saved run must be the same job (model, data, optimizer, batch, seed)."""
    if saved.get("kind") != CHECKPOINT_KIND:
        raise CheckpointError(f"checkpoint {path!r}: not a checkpoint of `rnnkern train`")
    old = saved["config"]
    for table, values in config.items():
        for key, value in values.items():
            if table == "training" and key in RESUMABLE_CHANGES:
                continue
            if json.loads(json.dumps(value)) != old.get(table, {}).get(key):
                raise CheckpointError(
                    f"checkpoint {path!r}: saved with [{table}] {key} = "
                    f"{old.get(table, {}).get(key)!r}, the configuration now says {value!r}; "
                    f"--resume continues the same job only")


def run(args, comm):
    """Train as ``args`` say (see the module docstring); return the exit status."""
    started = time.perf_counter()
    error = None
    try:                 # set-up: a ConfigError on any rank ends every rank, without a hang
        config = load_config(args.config)
        train, validation = load_data(config)
        sizes = model_sizes(config, train)
        plan = _Plan(config, train, comm)
        model = BatchModel(config, sizes)
        optimizer = optimizer_from_config(config["optimizer"])
        training = config["training"]
        path = training["checkpoint"]
        leader = comm.rank == 0
        if leader:
            _check_directory(path)
            _remove_stale_temporaries(path)

        step, carry_host = 0, []
        if args.resume and os.path.exists(path):
            saved = read_checkpoint(path)
            _check_resumable(saved.config, config, path)
            state = dict(saved.model_state)
            carry_host = [state.pop(f"carry.{k}") for k in range(saved.progress["carry"])]
            try:
                model.load_state_dict(state)
                optimizer.load_state_dict(saved.optimizer_state)
            except (ValueError, TypeError) as err:
                raise CheckpointError(f"checkpoint {path!r}: does not fit this model: "
                                      f"{err}") from None
            step = int(saved.progress["step"])
            carry_host = [a[:, plan.local] for a in carry_host]
            if leader:
                print(f"resumed from {path} at step {step}", flush=True)
        elif args.resume and leader:
            print(f"no checkpoint at {path} yet: starting at step 0", flush=True)
    except (ConfigError, CheckpointError, FileNotFoundError) as err:
        error = err
    failed = comm.allgather(error is not None)
    if any(failed):      # the first rank that failed reports; the others exit quietly
        raise error if failed.index(True) == comm.rank else _FailedElsewhere()
    comm.broadcast_parameters(model.parameters())

    meta = {"kind": CHECKPOINT_KIND, "config": config, "sizes": sizes,
            "vocabulary": getattr(train, "vocabulary", None)}
    metrics = open(args.metrics, "a" if args.resume else "w", encoding="utf-8") \
        if (args.metrics and leader) else None
    xp, carry = None, None
    if carry_host:
        xp, carry_arrays = _device_arrays(model, *carry_host)
        carry = _Carry.build(model, carry_arrays)

    def save():
        arrays = comm.gather_batch(_Carry.flatten(carry))
        if leader:
            save_checkpoint(path, _Snapshot(model, arrays), optimizer=optimizer, config=meta,
                            progress={"step": step, "carry": len(arrays)})

    def log(record, text):
        if metrics is not None:
            metrics.write(json.dumps(record) + "\n")
            metrics.flush()
        if leader and text:
            if bar is None:
                print(text, flush=True)
            elif "val_loss" in record:            # the bar shows the training loss
                bar.write(text)

    bar = None
    if leader and sys.stderr.isatty():
        from tqdm import tqdm
        bar = tqdm(total=plan.total, initial=step, unit="step", dynamic_ncols=True)
    signals = _Signals()
    clip_norm, clip_value = config["optimizer"]["clip_norm"], config["optimizer"]["clip_value"]
    kind = config["task"]["kind"]
    window_loss, window_steps, window_seconds, window_count, window_comm = 0.0, 0, 0.0, 0, 0.0
    status = 0
    try:
        while step < plan.total:
            step_started = time.perf_counter()
            first, inputs, targets, lengths, count = plan.step_data(step)
            if first:
                carry = None
            xp, (x, y) = _device_arrays(model, inputs, targets)
            out, states, tape = model.forward(x, carry, lengths)
            mask = None if kind == "classification" else _mask(xp, lengths, x.shape[0], x)
            loss, dout, n = task_loss(kind, out, y, mask)
            grads = model.backward(dout, tape)
            del tape     # a live tape would make the update copy the parameters for it
            carry = states if plan.bptt else None
            reduce_started = time.perf_counter()
            grads, loss, stop, save_now = comm.reduce_step(grads, loss, n, signals.stop,
                                                           signals.save)
            window_comm += time.perf_counter() - reduce_started
            signals.save = False
            if clip_norm is not None:
                grads, _ = clip_grad_norm(grads, clip_norm)
            elif clip_value is not None:
                grads = clip_grad_value(grads, clip_value)
            optimizer.step(model.parameters(), grads)
            step += 1
            if not math.isfinite(loss):
                raise FloatingPointError(f"the loss is {loss} at step {step}")
            window_loss += loss
            window_steps += 1
            window_count += count
            window_seconds += time.perf_counter() - step_started
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            if step % training["log_every"] == 0 or step == plan.total:
                rate = window_count / window_seconds if window_seconds else 0.0
                mean = window_loss / window_steps
                wall = time.perf_counter() - started
                record = {"step": step, "loss": mean, f"{plan.unit}_per_s": rate, "wall_s": wall,
                          "epoch": (step - 1) // plan.per_epoch}
                if comm.size > 1:          # seconds per step in the gradient Allreduce
                    record["allreduce_s"] = window_comm / window_steps
                log(record, f"step {step}/{plan.total}  loss {mean:.6g}  {plan.unit}/s "
                            f"{rate:,.0f}  wall {wall:.1f} s")
                window_loss, window_steps, window_seconds, window_count = 0.0, 0, 0.0, 0
                window_comm = 0.0
            if validation is not None and leader and (
                    (training["validate_every"] and step % training["validate_every"] == 0)
                    or step == plan.total):
                val_loss = _validation_loss(model, config, validation, plan.bptt)
                log({"step": step, "val_loss": val_loss,
                     "wall_s": time.perf_counter() - started},
                    f"step {step}/{plan.total}  val_loss {val_loss:.6g}")
            if stop:
                save()
                if leader:
                    print(f"stopped by SIGTERM at step {step}; checkpoint saved to {path} "
                          f"(continue with --resume)", file=sys.stderr, flush=True)
                status = EXIT_SIGTERM
                break
            if save_now or (training["checkpoint_every"]
                            and step % training["checkpoint_every"] == 0):
                save()
                if save_now and leader:
                    print(f"SIGUSR1: checkpoint saved at step {step}", flush=True)
        else:
            save()
            if leader:
                print(f"done: {step} steps; checkpoint saved to {path}", flush=True)
    finally:
        signals.restore()
        if bar is not None:
            bar.close()
        if metrics is not None:
            metrics.close()
    return status


def _check_directory(path):
    reason = unwritable_reason(path)
    if reason is not None:
        raise ConfigError(f"[training] checkpoint ({path}): {reason}")


def _remove_stale_temporaries(path):
    """Temporary files a killed writer left (``<name>.<random>.tmp``); the target is intact."""
    directory, name = os.path.split(os.path.abspath(path))
    for entry in os.listdir(directory):
        if entry.startswith(name + ".") and entry.endswith(".tmp"):
            try:
                os.unlink(os.path.join(directory, entry))
            except OSError:
                pass
