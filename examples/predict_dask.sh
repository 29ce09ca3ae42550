#!/bin/bash
# Batch inference with Dask: the input is split along the sample axis (map_blocks),
# the model's parameters go to each worker once.
set -euo pipefail
CHECKPOINT=${1:-examples/sine.checkpoint.npz}
INPUT=${2:-examples/data/waves.npy}

# On this machine: a local cluster of 2 workers (threads; --processes for processes).
python -m rnnkern predict "$CHECKPOINT" "$INPUT" --lengths examples/data/lengths.npy \
    --out scores.npy --dask --workers 2 --chunk-size 256

# On a cluster with a running scheduler (e.g. started by dask-jobqueue or
# `dask scheduler` + `dask worker` in a Slurm job); the workers read INPUT from
# the shared file system:
#   python -m rnnkern predict "$CHECKPOINT" "$INPUT" --out scores.npy \
#       --dask --scheduler tcp://scheduler-node:8786 --chunk-size 4096
