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


async def test_a_timing_difference_across_tenants_gets_a_second_audit_before_it_is_a_leak(
    tmp_path: Path, monkeypatch
) -> None:
    """The CLI's flow with the audits' outcomes fixed: a first across-tenants difference (no cached tokens) runs
    an independent confirmation audit; only a confirmed difference fails the run."""
    import argparse

    import grpc

    from bastion.cli import isolation
    from bastion.isolation import self_audit
    from bastion.isolation.self_audit import AuditResult, Probe

    for confirmation_p, expect_rc in ((0.6, 0), (0.01, 1)):
        ran: list[str] = []

        async def fake_run_audit(
            name: str, victim, probe, *, p: float = confirmation_p, ran: list[str] = ran, **kw
        ) -> AuditResult:
            ran.append(name)
            r = AuditResult(name, 0.05, p_value={"within-tenant": 1e-4, "across-tenants": 0.04}.get(name, p))
            r.hit.append(Probe(0.2, 64 if name == "within-tenant" else 0, 40))
            return r

        monkeypatch.setattr(self_audit, "run_audit", fake_run_audit)
        out = tmp_path / f"report-{expect_rc}.json"
        args = argparse.Namespace(model="m", samples=4, prompt_words=20, alpha=0.05, seed=1, out=str(out))
        rc = await isolation._audit(
            args, lambda: grpc.aio.insecure_channel("127.0.0.1:1"), lambda: grpc.aio.insecure_channel("127.0.0.1:1")
        )
        report = json.loads(out.read_text())
        assert ran == ["within-tenant", "across-tenants", "across-tenants-confirmation"]
        assert rc == expect_rc and report["passed"] is (expect_rc == 0)
        assert report["across_tenants_confirmation"]["p_value"] == confirmation_p
