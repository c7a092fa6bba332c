"""An in-process bastion server with the HTTP API on 127.0.0.1:0 over FakeEngine, and its audit records."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from grpc_harness import Running, make_settings, running_server

from bastion.config import deep_merge
from bastion.server.audit_recorder import BEGIN


def http_settings(http: dict[str, Any] | None = None, **kw: Any) -> Any:
    extra = deep_merge({"http": {"listen": "127.0.0.1:0", **(http or {})}}, kw.pop("extra", None) or {})
    return make_settings(extra=extra, **kw)


@asynccontextmanager
async def http_server(engines: Sequence[Any], **kw: Any) -> AsyncIterator[Running]:
    async with running_server(engines, settings=http_settings(**kw)) as srv:
        yield srv


def base_url(srv: Running) -> str:
    assert srv.http_address is not None
    return f"http://{srv.http_address}"


def client(srv: Running, who: str | None = "alice", headers: dict[str, str] | None = None) -> httpx.AsyncClient:
    """An HTTP client with ``who``'s API key (None: no credentials) and ``headers``."""
    auth = {} if who is None else {"authorization": f"Bearer {srv.identity.keys[who]}"}
    return httpx.AsyncClient(base_url=base_url(srv), headers={**auth, **(headers or {})}, timeout=10)


def records(audit_dir: Path) -> list[dict[str, Any]]:
    """Each call's final record (not a stream's begin record)."""
    out = []
    for seg in sorted(audit_dir.glob("audit-*.jsonl")):
        out += [json.loads(line) for line in seg.read_text().splitlines() if line]
    return [r for r in out if r["kind"] in ("request", "decision") and r.get("event") != BEGIN]


def chat_body(text: str = "hello", **kw: Any) -> dict[str, Any]:
    return {"model": "fake-model", "messages": [{"role": "user", "content": text}], **kw}


def calls(recs: list[dict[str, Any]], **match: str) -> int:
    """How many calls ``recs`` stand for (a coalesced refusal record stands for ``count`` of them)."""
    return sum(r.get("count", 1) for r in recs if all(r.get(k) == v for k, v in match.items()))
