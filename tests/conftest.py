"""Shared fixtures and settings for the rnnkern tests.

``cell`` runs a test once per entry of the cell registry
(``rnnkern.cells.CELLS``); ``make_layer(cell, ...)`` builds the public layer
that computes a cell.  A new registry entry is tested everywhere these are
used, without editing a test.
"""

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

import rnnkern as rk
from rnnkern.cells import CELLS

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


def assert_close(actual, desired, dtype, what, *, summed=False):
    """``actual`` within ``TOLERANCE[dtype]`` of ``desired``, element by element.

    ``summed``: the values are sums over many rows whose order differs between
    the two sides (weight gradients over T*B rows, dx over G*H gate columns).
    A sum's rounding error is ulps of its terms, not of the sum, and where
    the terms cancel the sum is small beside them (seen: a float32
    ``weight_ih`` gradient of -0.0551 off by 2.7e-6 in an array reaching
    13.5).  So the absolute floor there is the relative tolerance times the
    array's largest magnitude, a stand-in for its terms' magnitude.
    """
    desired = np.asarray(desired)
    tolerance = dict(TOLERANCE[str(np.dtype(dtype))])
    if summed:
        scale = float(np.max(np.abs(desired), initial=0.0))
        tolerance["atol"] = max(tolerance["atol"], tolerance["rtol"] * scale)
    np.testing.assert_allclose(np.asarray(actual), desired, **tolerance, err_msg=what)


#: Every registry cell, for ``pytest.mark.parametrize("cell", ALL_CELLS, ids=CELL_IDS)``.
ALL_CELLS = tuple(CELLS.values())
CELL_IDS = tuple(CELLS)


class DoublingLayer:
    """A layer of the user's own, ``y = 2x``: the methods ``training.Sequential`` asks for,
    no ``__call__``, and no counterpart in torch or Keras."""

    def forward(self, x):
        return 2 * x, None

    def backward(self, dy, tape):
        return 2 * dy, {}

    def parameters(self):
        return {}

    def load_state_dict(self, state_dict):
        pass

    def output_shape(self, input_shape):
        return input_shape


def make_layer(cell, *args, **kwargs):
    """The public layer computing ``cell`` (``rk.<cell.layer>`` with its options)."""
    return getattr(rk, cell.layer)(*args, **cell.layer_options, **kwargs)


@pytest.fixture(params=ALL_CELLS, ids=CELL_IDS)
def cell(request):
    """Each cell of the registry in turn."""
    return request.param


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
