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

#: Every registry cell, for ``pytest.mark.parametrize("cell", ALL_CELLS, ids=CELL_IDS)``.
ALL_CELLS = tuple(CELLS.values())
CELL_IDS = tuple(CELLS)


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
