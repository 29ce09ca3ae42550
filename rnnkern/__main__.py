"""Command line: ``python -m rnnkern demo|train|predict|bench ...``."""

from __future__ import annotations

import sys

USAGE = """usage: python -m rnnkern {demo,train,predict,bench} [options]

  demo    train a character-level LSTM (or `demo sine`) and generate text
  train   a batch training job from a TOML config (checkpoints, resume, MPI ranks)
  predict batch inference with a trained checkpoint (in chunks, or on Dask)
  bench   time rnnkern against torch.nn and a plain NumPy reference

Run `python -m rnnkern COMMAND --help` for the options of a command."""


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command == "demo":
        from .demos import main as run
    elif command == "train":
        from .batch.train import main as run
    elif command == "predict":
        from .batch.predict import main as run
    elif command == "bench":
        from .bench import main as run
    else:
        print(f"unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    return run(rest)


if __name__ == "__main__":
    sys.exit(main())
