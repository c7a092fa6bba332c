"""`python/bastion/_native.pyi` matches the built extension (mypy.stubtest): every name, argument and kind."""

from __future__ import annotations

import subprocess
import sys


def test_native_stubs_match_the_extension() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "bastion._native"], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Success: no issues found in 1 module" in run.stdout
