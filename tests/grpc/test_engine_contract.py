"""What serve() hands the engine: the engine-process contract, built by the server from its security layer.

The security-off benchmark server (benchmarks/open_server.py) must keep tenant isolation on, so that
serve_bench's on/off figures measure authentication, tenancy and audit, not isolation.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

from grpc_harness import make_settings

from bastion.engine.process import EngineProcessEnv
from bastion.engine.protocol import EnginePool
from bastion.server.app import serve
from bastion.server.security import Security, build_security
from bastion.tenancy.partition import block_key, load_or_create
from fakes import FakeEngine

REPO = Path(__file__).resolve().parents[2]


def _open_security() -> Callable[..., Security]:
    spec = importlib.util.spec_from_file_location("open_server", REPO / "benchmarks" / "open_server.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.open_security  # type: ignore[no-any-return]


async def _contract_handed_to_the_engine(security_factory: Callable[..., Security]) -> tuple[EngineProcessEnv, Any]:
    settings = make_settings()
    seen: list[EngineProcessEnv] = []
    stop = asyncio.Event()

    async def factory(process: EngineProcessEnv) -> EnginePool:
        seen.append(process)
        stop.set()
        return EnginePool([FakeEngine()])

    rc = await asyncio.wait_for(serve(settings, factory, stop_event=stop, security_factory=security_factory), 20)
    assert rc == 0
    (process,) = seen
    return process, settings


async def _assert_isolation_on(security_factory: Callable[..., Security]) -> None:
    process, settings = await _contract_handed_to_the_engine(security_factory)
    assert process.isolation and process.partition_key_file is not None and process.stats_dir is not None
    # The EngineCore derives its block-hashing key from exactly the server's partition secret.
    server_secret = load_or_create(settings.cache_dir / "keys" / "partition.key", create=False)
    assert block_key(load_or_create(process.partition_key_file, create=False)) == block_key(server_secret)
    # The variable the engine's processes inherit carries the path, never the secret.
    assert server_secret.hex() not in process.to_env()["BASTION_ENGINE_PROCESS"]


async def test_the_server_hands_the_engine_its_partition_key_file() -> None:
    await _assert_isolation_on(build_security)


async def test_the_security_off_benchmark_server_keeps_isolation_on() -> None:
    await _assert_isolation_on(_open_security())
