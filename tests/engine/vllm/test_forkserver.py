"""The EngineCore forked from the preloaded process (bastion.engine.vllm.forkserver): it runs with the environment
a spawned one would have, or it is spawned; it is never a copy of the server; names, never values, are logged."""

from __future__ import annotations

import ast
import contextlib
import inspect
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bastion.engine.process import ENV_VAR
from bastion.engine.vllm import forkserver


@pytest.fixture(scope="module")
def server() -> Iterator[forkserver.Forkserver]:
    """One forkserver for the module (Python's is one per process), preloading a light module instead of vLLM's."""
    saved = dict(os.environ)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(forkserver, "PRELOAD", ("json",))
        started = forkserver.start(1)
    yield started
    os.environ.clear()
    os.environ.update(saved)


def _agree(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process's environment made what the forkserver's children see (pytest's own variables and the
    imports this process made differ): what a test then changes is the only difference. Called in the test's
    body: pytest sets PYTEST_CURRENT_TEST anew for each phase."""
    forked = _env_of(multiprocessing.context.ForkServerProcess)
    for name in set(os.environ) - set(forked):
        monkeypatch.delenv(name)
    for name, value in forked.items():
        monkeypatch.setenv(name, value)


def _env_of(proc_cls: type[multiprocessing.process.BaseProcess]) -> dict[str, str]:
    ctx = forkserver.EngineCoreContext()
    recv, send = ctx.Pipe(duplex=False)
    p = proc_cls(target=forkserver._report_env, args=(send,))
    p.start()
    send.close()
    assert recv.poll(60)
    env = recv.recv()
    p.join(10)
    return env


def test_start_sets_vllms_cpu_platform_variables_before_the_forkserver_inherits_them(
    server: forkserver.Forkserver,
) -> None:
    forked = _env_of(multiprocessing.context.ForkServerProcess)  # what the forkserver itself was started with
    for name, value in forkserver.planned_env(os.environ, 1).items():
        assert os.environ[name] == value == forked[name]


def test_the_engine_core_runs_with_the_servers_environment_at_its_start(
    server: forkserver.Forkserver, monkeypatch: pytest.MonkeyPatch
) -> None:
    _agree(monkeypatch)
    monkeypatch.setenv(ENV_VAR, '{"version": 1}')  # set after the forkserver started, like the real contract
    ctx = server.context()
    assert ctx is not None  # only a variable read inside vLLM's target differs
    assert ENV_VAR not in _env_of(multiprocessing.context.ForkServerProcess)
    # EngineCoreProcess applies the server's environment before the target runs.
    assert _env_of(ctx.Process)[ENV_VAR] == '{"version": 1}'
    assert _env_of(ctx.Process) == dict(os.environ)


def _spawned(server: forkserver.Forkserver, caplog: pytest.LogCaptureFixture) -> str:
    """Asserts the EngineCore would be spawned; what was logged."""
    with caplog.at_level(logging.WARNING, logger="bastion.engine.vllm.forkserver"):
        assert server.context() is None
    return caplog.text


def test_a_variable_the_imports_may_have_read_spawns_the_engine_core_and_is_named_not_shown(
    server: forkserver.Forkserver, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _agree(monkeypatch)
    monkeypatch.setenv("OMP_NUM_THREADS", "7")  # read by the OpenMP runtime when torch loads: too late to apply
    monkeypatch.setenv("BASTION_TEST_SECRET", "s3cr3t-value")
    logged = _spawned(server, caplog)
    assert "BASTION_TEST_SECRET, OMP_NUM_THREADS" in logged
    assert "s3cr3t" not in logged


@pytest.mark.parametrize(
    ("name", "value", "named"),
    [
        ("TORCHINDUCTOR_COMPILE_THREADS", None, "TORCHINDUCTOR_COMPILE_THREADS"),  # removed after the start
        ("LD_PRELOAD", "", "LD_PRELOAD/LD_LIBRARY_PATH"),  # the dynamic loader read it when the forkserver started
    ],
)
def test_a_changed_variable_spawns_it(
    server: forkserver.Forkserver,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    name: str,
    value: str | None,
    named: str,
) -> None:
    _agree(monkeypatch)
    if value is None:
        monkeypatch.delenv(name)
    else:
        monkeypatch.setenv(name, value)
    assert named in _spawned(server, caplog)


def test_a_forkserver_that_does_not_answer_spawns_it(
    server: forkserver.Forkserver, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(server, "_forked_env", lambda: None)
    assert "did not answer" in _spawned(server, caplog)


def _sleeping_core(server: forkserver.Forkserver, monkeypatch: pytest.MonkeyPatch, seconds: int) -> Any:
    """A started stand-in EngineCore (it sleeps) forked from the forkserver, the environments agreeing."""
    _agree(monkeypatch)
    ctx = server.context()
    assert ctx is not None
    core = ctx.Process(target=time.sleep, args=(seconds,))
    core.start()
    return core


def test_the_engine_core_is_not_a_copy_of_the_server(
    server: forkserver.Forkserver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The forkserver was exec'd: the EngineCore forked from it holds nothing of the server's memory (no key read,
    no socket, no module the server imported), unlike a fork of the server."""
    p = _sleeping_core(server, monkeypatch, 30)
    try:
        # A fork of the forkserver, whose command line is a fresh interpreter's, never pytest's (this process).
        assert b"from multiprocessing.forkserver import main" in Path(f"/proc/{p.pid}/cmdline").read_bytes()
        status = Path(f"/proc/{p.pid}/status").read_text()
        parent = int(status.split("PPid:\t", 1)[1].split()[0])
        assert parent != os.getpid()
        assert b"from multiprocessing.forkserver import main" in Path(f"/proc/{parent}/cmdline").read_bytes()
    finally:
        p.terminate()
        p.join(10)


def _gone(pid: int, within_s: float) -> bool:
    """``pid`` has exited (or is a zombie nobody reaped yet) within ``within_s``."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.1)
    return False


def test_an_engine_core_does_not_outlive_its_forkserver(
    server: forkserver.Forkserver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack: the forkserver is killed on its own (SIGKILL, the OOM killer). vLLM then sees the EngineCore as
    gone and the server stops serving; the EngineCore itself, holding the weights and the tenants' KV cache, must
    not live on as an orphan. (The forkserver also exits with the server, so the same holds for a killed server.)"""
    import multiprocessing.forkserver as mp_forkserver

    core = _sleeping_core(server, monkeypatch, 120)
    try:
        assert not _gone(core.pid, 1.0)  # running
        os.kill(mp_forkserver._forkserver._forkserver_pid, signal.SIGKILL)  # type: ignore[attr-defined]
        assert _gone(core.pid, 10.0), "the EngineCore outlived its forkserver"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(core.pid, signal.SIGKILL)
    # A later start gets a new forkserver (multiprocessing starts one again) and the same guarantees.
    _agree(monkeypatch)
    assert server.context() is not None


_SERVER = """
import os, sys, time
from unittest import mock
from bastion.engine.vllm import forkserver
with mock.patch.object(forkserver, "PRELOAD", ("json",)):
    server = forkserver.start(1)
ctx = server.context()
assert ctx is not None
core = ctx.Process(target=time.sleep, args=(120,))
core.start()
print(forkserver.multiprocessing.forkserver._forkserver._forkserver_pid, core.pid, flush=True)
time.sleep(120)
"""


def test_a_killed_server_takes_its_forkserver_and_engine_core_with_it(tmp_path: Path) -> None:
    """Attack: the server is killed (SIGKILL: nothing of its shutdown runs). A spawned EngineCore would live on
    holding the weights; the forkserver exits when the server's end of its pipe closes, and the EngineCore with
    it (no process keeps the server's end: the EngineCore closes the copy multiprocessing hands it)."""
    proc = subprocess.Popen([sys.executable, "-c", _SERVER], stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    pids: list[int] = []
    try:
        assert proc.stdout is not None
        pids = [int(x) for x in proc.stdout.readline().split()]
        fs_pid, core_pid = pids
        assert not _gone(core_pid, 1.0)
        proc.kill()
        proc.wait(10)
        assert _gone(fs_pid, 10.0), "the forkserver outlived the server"
        assert _gone(core_pid, 10.0), "the EngineCore outlived the server"
    finally:
        proc.kill()
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def test_differences_ignores_lazy_variables_and_loader_paths_that_do_not_exist(tmp_path: Path) -> None:
    base = {"A": "1", "LD_PRELOAD": "x.so", "LD_LIBRARY_PATH": f"{tmp_path}/missing:"}
    loader = forkserver.loader_view(base)
    assert forkserver.differences(base, dict(base), loader) == []
    assert forkserver.differences(base | {ENV_VAR: "c", "VLLM_SSM_CONV_STATE_LAYOUT": "SD"}, base, loader) == []
    assert forkserver.differences(base | {"A": "2"}, base, loader) == ["A"]
    assert forkserver.differences(base, base | {"B": "1"}, loader) == ["B"]
    # A directory the loader would search (it exists) is a difference; a missing one is not.
    assert forkserver.differences(base | {"LD_LIBRARY_PATH": f"{tmp_path}/gone"}, base, loader) == ["LD_LIBRARY_PATH"]
    moved = base | {"LD_LIBRARY_PATH": str(tmp_path)}
    assert forkserver.differences(moved, moved, loader) == ["LD_PRELOAD/LD_LIBRARY_PATH"]


def test_engine_core_from_replaces_vllms_context_only_while_the_engine_starts(
    server: forkserver.Forkserver, monkeypatch: pytest.MonkeyPatch
) -> None:
    import vllm.v1.engine.utils as engine_utils  # imported first: vLLM's imports set variables

    _agree(monkeypatch)

    original = engine_utils.get_mp_context
    with forkserver.engine_core_from(None):
        assert engine_utils.get_mp_context is original
    with pytest.raises(RuntimeError), forkserver.engine_core_from(server):
        assert isinstance(engine_utils.get_mp_context(), forkserver.EngineCoreContext)
        raise RuntimeError("the engine failed to start")
    assert engine_utils.get_mp_context is original
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    with forkserver.engine_core_from(server):  # the environment differs: vLLM's own context
        assert engine_utils.get_mp_context is original


def _environ_assignments(source: str) -> set[str]:
    """The names a function's source assigns as ``os.environ[NAME] = ...`` (a variable name: its string value)."""
    tree = ast.parse(textwrap.dedent(source))
    consts = {
        t.id: n.value.value
        for n in ast.walk(tree)
        if isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant) and isinstance(n.value.value, str)
        for t in n.targets
        if isinstance(t, ast.Name)
    }
    names = set()
    for n in ast.walk(tree):
        for t in n.targets if isinstance(n, ast.Assign) else ():
            if isinstance(t, ast.Subscript) and ast.unparse(t.value) == "os.environ":
                key = t.slice
                names.add(
                    key.value if isinstance(key, ast.Constant) else consts.get(ast.unparse(key), ast.unparse(key))
                )
    return names


def test_planned_env_covers_every_variable_vllms_cpu_platform_sets() -> None:
    """A vLLM upgrade that sets another variable would make the EngineCore spawn (slower, logged): this says so
    first. The values are checked on the real engine: the e2e live server must take the forked path."""
    from vllm.platforms.cpu import CpuPlatform

    assigned = _environ_assignments(inspect.getsource(CpuPlatform.check_and_update_config))
    planned = set(forkserver.planned_env(os.environ, 2))
    assert assigned == planned | {"VLLM_SSM_CONV_STATE_LAYOUT"}, assigned ^ (planned | {"VLLM_SSM_CONV_STATE_LAYOUT"})
    assert "VLLM_SSM_CONV_STATE_LAYOUT" in forkserver.LAZY
    assert forkserver.planned_env({}, 2)["LOCAL_WORLD_SIZE"] == "2"
