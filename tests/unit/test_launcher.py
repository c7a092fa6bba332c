"""testkit.launcher, the one launcher of server processes for tests and benchmarks: a start that fails says why
(the log's tail), a server that never becomes SERVING is stopped, and stopping leaves nothing of its group.
The SERVING path itself runs in tests/load (testkit.fake_server) and in every e2e test."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from testkit.launcher import BastionServer, ServerProcess, ServerStartError


def _program(code: str) -> list[str]:
    return [sys.executable, "-c", code]  # the launcher appends --config FILE: argv the code ignores


def test_a_server_that_exits_fails_the_wait_with_its_log_tail(tmp_path: Path) -> None:
    code = "import sys; print('config rejected: listen'); sys.exit(3)"
    server = BastionServer(tmp_path, "[server]\n", target=f"unix:{tmp_path}/s.sock", program=_program(code))
    assert (tmp_path / "bastion.toml").read_text() == "[server]\n"
    assert server.cmd[-2:] == ["--config", str(tmp_path / "bastion.toml")]
    server.start()
    with pytest.raises(ServerStartError) as info:
        server.wait_serving(30, poll_s=0.05)
    assert info.value.reason == "bastion serve exited with 3"
    assert "config rejected: listen" in info.value.log_tail and "config rejected" in str(info.value)
    assert server.stop() == 3  # already stopped: idempotent


def test_a_server_never_serving_is_stopped_at_the_deadline(tmp_path: Path) -> None:
    server = BastionServer(tmp_path, "", target="127.0.0.1:1", program=_program("import time; time.sleep(60)"))
    server.start()
    with pytest.raises(ServerStartError, match="not SERVING after 0.3 s"):
        server.wait_serving(0.3, poll_s=0.05)
    assert server.exited() is not None


def test_stop_terms_the_main_process_then_kills_what_is_left_of_its_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    code = f"""
import signal, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"])
open({str(pid_file)!r}, "w").write(str(child.pid))
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
time.sleep(60)
"""
    with ServerProcess(_program(code), tmp_path / "log") as server:
        server.start()
        deadline = time.monotonic() + 30
        while not pid_file.exists() or not pid_file.read_text():
            assert time.monotonic() < deadline and server.exited() is None, server.tail()
            time.sleep(0.05)
        assert server.stop(grace_s=10) == 0  # the main process exits on SIGTERM
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while _alive(child):  # the child ignored SIGTERM; the group's SIGKILL ended it (init reaps it)
        assert time.monotonic() < deadline, "the server's child outlived stop()"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (ProcessLookupError, FileNotFoundError):
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"  # a zombie is gone, only not yet reaped
