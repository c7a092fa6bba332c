"""`python/bastion/_native.pyi` matches the built extension (mypy.stubtest): every name, argument and kind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PYTHON_SRC = Path(__file__).resolve().parents[2] / "python"


def test_native_stubs_match_the_extension() -> None:
    # MYPYPATH: the editable install is an import hook mypy cannot follow; without it stubtest finds no
    # stub and reports success on nothing.
    run = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "bastion._native"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "MYPYPATH": str(PYTHON_SRC)},
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Success: no issues found in 1 module" in run.stdout
