"""Numba's on-disk cache stays sound with the kernels spread over several files.

A driver's compiled code inlines the row functions of another file, and Numba
stamps a cached function with its own file only; ``rnnkern.kernels.numba``
stamps it with a digest of the whole package instead.  Here a copy of the
package is compiled in a child process, reloaded from the cache in a second,
then one ROW file is edited: the third process must see the edit.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import rnnkern.kernels.numba as kernel_package

RUN = """
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from copied_kernels.drivers import CellRows, forward_sequence
T, B, H = 2, 1, 3
state = (np.zeros((B, H)),)
y = np.empty((T, B, H))
no_projection = np.empty((0, 0))
forward_sequence(CellRows("elman.tanh"), (0, 0, 0), np.ones((T, B, 1)), np.full((H, 1), 0.5),
                 np.zeros(H), np.empty((T, B, H)), np.zeros((H, H)), no_projection, np.zeros(H),
                 np.full(B, T, np.int32), False, True, state, y, (np.empty((T, B, H)),),
                 (np.empty((T, B, H)),), np.empty((B, H)), no_projection, no_projection, state, y,
                 no_projection)
print(json.dumps({"y": float(y[0, 0, 0]),
                  "hits": sum(forward_sequence.stats.cache_hits.values())}))
"""


def _run(folder):
    done = subprocess.run([sys.executable, "-c", RUN, str(folder)], capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_an_edited_row_file_recompiles_the_driver(tmp_path, monkeypatch):
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)      # in-tree __pycache__ of the copy
    package = tmp_path / "copied_kernels"
    package.mkdir()
    for source in Path(kernel_package.__file__).parent.glob("*.py"):
        shutil.copy(source, package / source.name)

    first, second = _run(tmp_path), _run(tmp_path)
    assert abs(first["y"] - 0.46211715726000974) < 1e-12        # tanh(0.5)
    assert second == dict(first, hits=1)                        # loaded from the cache

    rows = package / "elman.py"
    rows.write_text(rows.read_text().replace("hj = tanh(a)", "hj = a"))
    edited = _run(tmp_path)
    assert edited["y"] == 0.5 and edited["hits"] == 0            # recompiled, not stale
