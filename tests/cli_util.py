"""The ``bastion`` command line as a child process, for tests that drive it against a running server."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


async def run_cli(
    *args: str, env: Mapping[str, str] | None = None, api_key: str | None = None, timeout: float = 60
) -> tuple[int, str, str]:
    """``python -m bastion.cli.main *args`` with bastion from the source tree; returns (exit code, stdout,
    stderr). The child's environment is this one without any ``BASTION_*`` variable (no stray config file or
    API key), plus ``env`` and, when given, ``api_key`` as ``BASTION_API_KEY``. Fails after ``timeout`` s."""
    child = {k: v for k, v in os.environ.items() if not k.startswith("BASTION_")}
    child["PYTHONPATH"] = str(ROOT / "python")
    child.update(env or {})
    if api_key:
        child["BASTION_API_KEY"] = api_key
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bastion.cli.main",
        *args,
        env=child,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, out.decode(), err.decode()
