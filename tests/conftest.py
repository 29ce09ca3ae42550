"""Shared fixtures and settings for the rnnkern tests."""

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

# CI uses a fixed, modest number of examples; set HYPOTHESIS_PROFILE=thorough
# locally for a deeper search.
settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=300, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Agreement asked of every backend against the oracle (relative, with a small
# absolute floor for values near zero).
TOLERANCE = {"float64": dict(rtol=1e-10, atol=1e-12), "float32": dict(rtol=1e-5, atol=2e-6)}


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def cuda_device_count():
    """CUDA devices CuPy can use: 0 without CuPy, a driver or a GPU."""
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount()
    except Exception:       # no CuPy, no driver, driver too old, ...
        return 0
