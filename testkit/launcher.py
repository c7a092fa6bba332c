"""The one launcher for server processes in tests and benchmarks.

``ServerProcess`` runs a command in its own session (so its own process group) with stdout and stderr in a log
file, and stops it with SIGTERM to its main process, then, after a grace period, SIGKILL to whatever is left of
its group (EngineCore, workers). ``BastionServer`` is a server configured by bastion's TOML settings: it writes
them to a file, runs ``bastion serve --config FILE`` (or another program taking that flag: ``testkit.fake_server``,
benchmarks/open_server.py) and waits until its ``grpc.health.v1`` service says SERVING; when the process exits
first, or the time runs out, it stops the process and raises ``ServerStartError`` with the tail of the log.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO = Path(__file__).resolve().parents[1]
# `bastion serve`, before its ``--config FILE``: the CLI of the interpreter running this (its venv's bastion).
BASTION_SERVE: tuple[str, ...] = (sys.executable, "-m", "bastion.cli.main", "serve")
# bastion's server over FakeEngine (testkit/fake_server.py), the same way; it needs testkit_env().
FAKE_SERVER: tuple[str, ...] = (sys.executable, "-m", "testkit.fake_server")
TAIL_CHARS = 4000


def free_port() -> int:
    """A loopback TCP port that is free now (the server is expected to bind it soon after)."""
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` distinct loopback TCP ports that are free now (all held open while they are chosen, so two calls
    in a row cannot return the same port)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]


# A [health] table that turns the health listener off, for a server whose test or benchmark does not probe it
# (the default, 127.0.0.1:50052, would collide between servers running side by side).
NO_HEALTH_LISTENER = '[health]\nlisten = ""\n'


def testkit_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's environment) with the repository root first on PYTHONPATH, so that a
    child started with ``python -m testkit...`` finds this package from any working directory."""
    out = dict(os.environ if env is None else env)
    out["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), out.get("PYTHONPATH", "")) if p)
    return out


class ServerStartError(RuntimeError):
    """A server exited before it was SERVING, or was not SERVING in time; ``log_tail`` is the end of its log."""

    def __init__(self, reason: str, log_tail: str) -> None:
        super().__init__(f"{reason}:\n{log_tail}")
        self.reason = reason
        self.log_tail = log_tail


class ServerProcess:
    """A command in its own process group, its output (stdout and stderr) in ``log_path``. ``stop()`` ends it
    and is idempotent; used as a context manager, it is stopped on exit."""

    def __init__(
        self,
        cmd: Sequence[str],
        log_path: Path,
        *,
        name: str = "server",
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        verbose: bool = False,
    ) -> None:
        self.cmd = list(cmd)
        self.log_path = log_path
        self.name = name
        self.env = None if env is None else dict(env)
        self.cwd = cwd
        self.verbose = verbose  # say "[name] starting/stopping" on stdout (benchmarks)
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0  # time.monotonic() at start
        self._stopped = False

    def start(self) -> Self:
        if self.proc is not None:
            raise RuntimeError(f"{self.name} was already started")
        self._say(f"starting: {shlex.join(self.cmd)}")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:  # the child keeps its own descriptor
            self.started_at = time.monotonic()
            self.proc = subprocess.Popen(
                self.cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError(f"{self.name} was not started")
        return self.proc.pid

    def exited(self) -> int | None:
        """The exit status once the main process has exited; None before (or when it was never started)."""
        return None if self.proc is None else self.proc.poll()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, chars: int = TAIL_CHARS) -> str:
        return self.log_text()[-chars:] or f"(nothing in {self.log_path})"

    def stop(self, grace_s: float = 30.0) -> int | None:
        """SIGTERM to the main process and up to ``grace_s`` for it to exit, then SIGKILL to whatever is left of
        its process group. Returns the main process's exit status (None if it was never started)."""
        proc = self.proc
        if proc is None or self._stopped:
            return None if proc is None else proc.returncode
        self._stopped = True
        if proc.returncode is None:
            self._say("stopping (SIGTERM)")
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            if not self._exits_within(grace_s):
                self._say(f"did not exit in {grace_s:g} s: SIGKILL")
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
        return proc.returncode

    def _exits_within(self, seconds: float) -> bool:
        """Whether the main process exits within ``seconds``, left unreaped: until it is reaped its pid, and so
        its group's id, cannot be reused, so the SIGKILL to the group reaches no stranger."""
        assert self.proc is not None
        deadline = time.monotonic() + seconds
        while self.proc.returncode is None:
            try:
                if os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                    return True
            except ChildProcessError:  # reaped meanwhile (a test's own proc.wait())
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    def _say(self, what: str) -> None:
        if self.verbose:
            print(f"[{self.name}] {what}", flush=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class BastionServer(ServerProcess):
    """A server configured by bastion's TOML settings, written to ``workdir/config_name`` and passed as
    ``--config FILE`` to ``program`` (default: ``bastion serve``); its log is ``workdir/log_name``.

    ``target`` is where clients reach it (``unix:/path`` or ``host:port``, as in its ``[server] listen``); a
    server that binds port 0 writes its address to ``address_file`` instead (``testkit.fake_server``)."""

    def __init__(
        self,
        workdir: Path,
        config_toml: str,
        *,
        target: str | None = None,
        address_file: Path | None = None,
        program: Sequence[str] = BASTION_SERVE,
        name: str = "bastion serve",
        config_name: str = "bastion.toml",
        log_name: str = "server.log",
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        verbose: bool = False,
    ) -> None:
        if (target is None) == (address_file is None):
            raise ValueError("a BastionServer needs a target or an address file (one of them)")
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / config_name
        self.config_path.write_text(config_toml, encoding="utf-8")
        cmd = [*program, "--config", str(self.config_path)]
        super().__init__(cmd, workdir / log_name, name=name, env=env, cwd=cwd, verbose=verbose)
        self._target = target
        self.address_file = address_file

    @property
    def target(self) -> str:
        target = self._known_target()
        if target is None:
            raise RuntimeError(f"{self.name} has not written its address to {self.address_file} yet")
        return target

    def _known_target(self) -> str | None:
        if self._target is None and self.address_file is not None and self.address_file.is_file():
            self._target = self.address_file.read_text(encoding="utf-8").strip() or None
        return self._target

    def wait_serving(
        self,
        timeout_s: float = 900.0,
        *,
        channel: Callable[[str], Any] | None = None,
        poll_s: float = 1.0,
    ) -> Self:
        """Returns once health says SERVING. ``channel(target)`` opens the synchronous channel for the check
        (default: plaintext; a TLS listener needs the client's credentials). When the process exits first, or is
        not SERVING after ``timeout_s``, stops it and raises ServerStartError with the tail of its log."""
        deadline = time.monotonic() + timeout_s
        while True:
            status = self.exited()
            if status is not None:
                self.stop(grace_s=0)
                raise ServerStartError(f"{self.name} exited with {status}", self.tail())
            if self.health(channel) == health_pb2.HealthCheckResponse.SERVING:
                return self
            if time.monotonic() >= deadline:
                break
            time.sleep(poll_s)
        self.stop(grace_s=0)
        raise ServerStartError(f"{self.name} not SERVING after {timeout_s:g} s", self.tail())

    def health(self, channel: Callable[[str], Any] | None = None) -> int:
        """The overall health status now (a ``HealthCheckResponse`` value), -1 when it does not answer."""
        target = self._known_target()
        if target is None:
            return -1
        if target.startswith("unix:") and not Path(target.removeprefix("unix:")).exists():
            return -1
        try:
            with (channel or grpc.insecure_channel)(target) as ch:
                request = health_pb2.HealthCheckRequest(service="")
                return int(health_pb2_grpc.HealthStub(ch).Check(request, timeout=2).status)
        except grpc.RpcError:
            return -1


def fake_server(
    workdir: Path,
    config_toml: str,
    *,
    target: str | None = None,
    token_delay: float = 0.0,
    max_context: int | None = None,
    name: str = "fake server",
    config_name: str = "bastion.toml",
    log_name: str = "server.log",
    verbose: bool = False,
) -> BastionServer:
    """bastion's server over FakeEngine (``python -m testkit.fake_server``), not started yet. Without a
    ``target`` (a config listening on port 0) it writes the address it bound next to its config."""
    program = [*FAKE_SERVER, "--token-delay", str(token_delay)]
    if max_context is not None:
        program += ["--max-context", str(max_context)]
    address_file = None
    if target is None:
        address_file = workdir / (Path(config_name).stem + ".address")
        address_file.unlink(missing_ok=True)
        program += ["--address-file", str(address_file)]
    return BastionServer(
        workdir,
        config_toml,
        target=target,
        address_file=address_file,
        program=program,
        name=name,
        config_name=config_name,
        log_name=log_name,
        env=testkit_env(),
        verbose=verbose,
    )
