"""A non-editable install carries the kernels inside the package."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(300)
def test_wheel_ships_kernels_and_runs_outside_the_source_tree(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(ROOT),
                    "-w", str(tmp_path / "wheel")], check=True)
    wheel, = (tmp_path / "wheel").glob("rnnkern-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    sources = {p.name for p in (ROOT / "kernels").iterdir() if p.suffix in (".py", ".cu", ".cuh", ".h")}
    shipped = {n.rsplit("/", 1)[-1] for n in names if n.startswith("rnnkern/kernels/")}
    assert sources <= shipped, sources - shipped

    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(site), str(wheel)], check=True)
    code = ("import numpy as np, rnnkern, rnnkern.kernels as k; "
            "assert 'site' in k.__file__, k.__file__; "
            "y, h = rnnkern.GRU(3, 4, seed=0)(np.ones((5, 2, 3), np.float32)); "
            "assert y.shape == (5, 2, 4)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path,
                   env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin",
                        "NUMBA_CACHE_DIR": str(tmp_path / "numba")})
