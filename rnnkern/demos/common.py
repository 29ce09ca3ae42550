"""What both demos share: usage errors, argument types, device placement."""

from __future__ import annotations

import argparse
import math

import array_api_compat

from ..training.checkpoint import unwritable_reason

__all__ = ["UsageError", "positive_int", "nonnegative_float", "check_writable_directory",
           "build_on_device", "namespace_and_device"]


class UsageError(Exception):
    """A problem with the command line or the input files, reported without a traceback."""


def positive_int(text):
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def nonnegative_float(text):
    """argparse type: a finite number >= 0."""
    value = float(text)
    if not value >= 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text}")
    return value


def check_writable_directory(path):
    """Fail before training, not after, if the checkpoint cannot be written."""
    reason = unwritable_reason(path)
    if reason is not None:
        raise UsageError(f"checkpoint {path}: {reason}")


def build_on_device(build, device):
    """``build()``, the model on ``device``; a UsageError if a GPU model cannot be placed."""
    try:
        return build()
    except (ImportError, RuntimeError, TypeError) as err:
        if device == "cpu":
            raise
        raise UsageError(f"--device {device}: could not place the model there ({err}); "
                         f"it needs CuPy and a CUDA GPU") from None


def namespace_and_device(model):
    """The array namespace and device of the model's parameters (where data must go)."""
    first = next(iter(model.parameters().values()))
    return array_api_compat.array_namespace(first), array_api_compat.device(first)
