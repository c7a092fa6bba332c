"""`bastion audit-isolation` end to end over gRPC against the in-process server (fake engine).

The fake engine reports half of every prompt as cached for everyone, like an engine that shares its cache
across tenants: the audit must call that a leak (exit 1) and write the full report."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from grpc_harness import running_server

from bastion.cli.main import main
from fakes import FakeEngine


async def test_audit_isolation_reports_a_shared_cache_as_a_leak(tmp_path: Path) -> None:
    async with running_server([FakeEngine()]) as srv:
        keys = {}
        for who in ("alice", "bob"):
            keys[who] = tmp_path / f"{who}.key"
            keys[who].write_text(srv.identity.keys[who])
        out = tmp_path / "report.json"
        argv = [
            "audit-isolation",
            "--target",
            srv.address,
            "--api-key-file",
            str(keys["alice"]),
            "--other-api-key-file",
            str(keys["bob"]),
            "--samples",
            "4",
            "--prompt-words",
            "20",
            "--seed",
            "1",
            "--out",
            str(out),
        ]
        rc = await asyncio.to_thread(main, argv)
    report = json.loads(out.read_text())
    assert rc == 1 and not report["passed"]
    assert report["across_tenants"]["max_cached_prompt_tokens_hit"] > 0
    assert len(report["within_tenant"]["hit"]) == 4 and len(report["across_tenants"]["miss"]) == 4
    assert report["model"] == "fake-model"


def test_audit_isolation_needs_another_tenant(capsys) -> None:
    assert main(["audit-isolation", "--target", "127.0.0.1:1"]) == 2
    assert "another tenant" in capsys.readouterr().err
