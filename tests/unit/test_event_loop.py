"""The server's event loop (bastion/server/event_loop.py): uvloop by default, the standard loop on request,
a clear error when uvloop is asked for and missing, and the test suite on the loop the server runs on."""

from __future__ import annotations

import asyncio
import sys

import pytest
import uvloop

from bastion.config import Settings, load_settings
from bastion.errors import ConfigError
from bastion.server import app, event_loop


async def _running_loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


def test_uvloop_is_the_default() -> None:
    assert load_settings().server.event_loop == "uvloop"
    assert isinstance(event_loop.run(_running_loop(), "uvloop"), uvloop.Loop)


def test_asyncio_runs_the_standard_loop() -> None:
    loop = event_loop.run(_running_loop(), "asyncio")
    assert isinstance(loop, asyncio.BaseEventLoop) and not isinstance(loop, uvloop.Loop)


def test_an_unknown_loop_is_refused_naming_the_setting() -> None:
    with pytest.raises(ConfigError, match="event_loop"):
        load_settings(overrides={"server": {"event_loop": "trio"}})


def test_uvloop_missing_is_a_config_error_naming_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop → ImportError
    main = _running_loop()
    with pytest.raises(ConfigError, match='server.event_loop = "asyncio"'):
        event_loop.run(main, "uvloop")
    assert main.cr_frame is None  # closed, not left unawaited


@pytest.mark.parametrize(("kind", "uv"), [("uvloop", True), ("asyncio", False)])
def test_bastion_serve_runs_on_the_configured_loop(monkeypatch: pytest.MonkeyPatch, kind: str, uv: bool) -> None:
    seen: list[asyncio.AbstractEventLoop] = []

    async def serve(settings: Settings, pool_factory: object) -> int:
        seen.append(asyncio.get_running_loop())
        return 0

    monkeypatch.setattr(app, "serve", serve)
    monkeypatch.setattr(app, "setup_logging", lambda *a: None)  # the root logger stays as the other tests find it
    settings = load_settings(overrides={"server": {"event_loop": kind}})
    assert app.run_server(settings, lambda process: None) == 0  # type: ignore[arg-type,return-value]
    assert len(seen) == 1 and isinstance(seen[0], uvloop.Loop) is uv


async def test_the_tests_run_on_the_loop_the_server_runs_on() -> None:
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
