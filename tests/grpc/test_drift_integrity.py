"""Drift baselines over restarts with a real audit log and real gRPC (fake engine): issue 15 (low, drift).

The go-live baseline is recorded in the audit log; a restart whose baseline file was deleted raises an
integrity alarm (audited, quarantined) and does not take a new baseline, on this start or the next; only an
admin's ``Admin.ResetDriftBaseline`` (audited with the principal and the reason, before the new baseline)
takes a new one, and only for a digest the attestations release. On the code before, the deleted baseline
was silently taken again at the next start (``test_a_deleted_baseline_alarms_across_restarts_until_an_admin_reset``
fails there).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_harness import make_settings, running_server

from bastion.v1 import admin_pb2 as apb
from bastion.v1 import admin_pb2_grpc as apb_grpc
from cli_util import run_cli
from fakes import FakeEngine

RESET = "/bastion.v1.Admin/ResetDriftBaseline"


def _records(audit: Path) -> list[dict[str, Any]]:
    out = []
    for seg in sorted(audit.glob("audit-*.jsonl")):
        out += [json.loads(line) for line in seg.read_text().splitlines()]
    return out


def _events(audit: Path, event: str) -> list[dict[str, Any]]:
    return [r for r in _records(audit) if r.get("event") == event]


async def _wait_for(audit: Path, event: str, n: int) -> list[dict[str, Any]]:
    """The drift monitor starts in the background once the engine serves: wait for its n-th ``event``."""
    for _ in range(400):
        found = _events(audit, event)
        if len(found) >= n:
            return found
        await asyncio.sleep(0.025)
    raise AssertionError(f"no {n} {event} records: {_records(audit)}")


async def _release(admin: apb_grpc.AdminStub) -> str:
    return str((await admin.ModelStatus(apb.ModelStatusRequest(), timeout=5)).models[0].release)


async def _quarantined(admin: apb_grpc.AdminStub) -> bool:
    """The alarm's record is durable first, then the monitor quarantines the model: wait for that."""
    for _ in range(200):
        if await _release(admin) == "quarantined":
            return True
        await asyncio.sleep(0.025)
    return False


async def test_a_deleted_baseline_alarms_across_restarts_until_an_admin_reset(tmp_path: Path) -> None:
    settings = make_settings(extra={"assurance": {"require_attestation": False, "redteam": {"enabled": False}}})
    baseline = settings.cache_dir / "drift" / "fake-model.baseline.json"
    seed = settings.cache_dir / "keys" / "drift.key"

    async with running_server([FakeEngine(max_context=8192)], settings=settings) as srv:
        (taken,) = await _wait_for(srv.audit_dir, "drift_baseline", 1)  # the go-live, recorded
        audit = srv.audit_dir
    assert taken["principal"] == "bastion:assurance" and taken["decision"] == "baseline"
    assert taken["reason"].startswith("mac=hmac-sha256:") and "first go-live" in taken["reason"]
    assert baseline.stat().st_mode & 0o777 == 0o600 and seed.stat().st_mode & 0o777 == 0o600
    assert json.loads(baseline.read_text())["mac"] in taken["reason"]

    baseline.unlink()  # whoever deletes it would reset drift detection: an alarm instead
    for restart in (1, 2):
        async with running_server([FakeEngine(max_context=8192)], settings=settings) as srv:
            alarms = await _wait_for(audit, "drift_integrity", restart)
            admin = apb_grpc.AdminStub(srv.channel)
            assert await _quarantined(admin)
            (drift,) = (await admin.CheckDrift(apb.CheckDriftRequest(), timeout=30)).models
            assert drift.status == "integrity" and drift.checks == 0
        assert alarms[-1]["decision"] == "quarantine" and "is missing" in alarms[-1]["reason"]
        assert not baseline.exists() and len(_events(audit, "drift_baseline")) == 1  # never silently re-taken

    async with running_server([FakeEngine(max_context=8192)], settings=settings) as srv:
        await _wait_for(audit, "drift_integrity", 3)
        bob = apb_grpc.AdminStub(srv.channel_for("bob"))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await bob.ResetDriftBaseline(apb.ResetDriftBaselineRequest(model="fake-model", reason="x"), timeout=5)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        admin = apb_grpc.AdminStub(srv.channel)
        for request, code in (
            (apb.ResetDriftBaselineRequest(model="fake-model", reason=""), grpc.StatusCode.INVALID_ARGUMENT),
            (apb.ResetDriftBaselineRequest(model="", reason="x"), grpc.StatusCode.INVALID_ARGUMENT),
            (apb.ResetDriftBaselineRequest(model="other-model", reason="x"), grpc.StatusCode.NOT_FOUND),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await admin.ResetDriftBaseline(request, timeout=5)
            assert err.value.code() == code
        assert _events(audit, "drift_baseline_reset") == []

        key_file = tmp_path / "alice.key"
        key_file.write_text(srv.identity.keys["alice"])
        rc, out, err_text = await run_cli(
            "admin",
            "reset-drift-baseline",
            "fake-model",
            "--reason",
            "baseline lost with the old disk (ticket 12)",
            "--target",
            srv.address,
            "--api-key-file",
            str(key_file),
        )
        assert rc == 0, err_text
        assert json.loads(out)["drift"]["status"] == "baselined" and baseline.exists()
        assert await _release(admin) == "quarantined"  # a reset is not a lift
        recs = _records(audit)
        (reset,) = [r for r in recs if r.get("event") == "drift_baseline_reset"]
        assert reset["principal"] == srv.identity.principals["alice"] and "ticket 12" in reset["reason"]
        new = [r for r in recs if r.get("event") == "drift_baseline"][-1]
        call = [r for r in recs if r.get("method") == RESET and r["kind"] == "request" and r["status"] == "OK"]
        assert reset["seq"] < new["seq"] < call[0]["seq"] and "reset by an admin" in new["reason"]

    async with running_server([FakeEngine(max_context=8192)], settings=settings) as srv:
        admin = apb_grpc.AdminStub(srv.channel)
        (drift,) = (await admin.CheckDrift(apb.CheckDriftRequest(), timeout=30)).models
        assert drift.status == "quiet" and drift.checks >= 1
    assert len(_events(audit, "drift_integrity")) == 3


async def test_a_reset_needs_an_attested_digest(tmp_path: Path) -> None:
    """While attestations are required, resetting the baseline of weights nobody evaluated is refused."""
    settings = make_settings(extra={"assurance": {"require_attestation": True, "redteam": {"enabled": False}}})
    async with running_server([FakeEngine(max_context=8192)], settings=settings) as srv:
        await _wait_for(srv.audit_dir, "drift_baseline", 1)
        admin = apb_grpc.AdminStub(srv.channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await admin.ResetDriftBaseline(apb.ResetDriftBaselineRequest(model="fake-model", reason="x"), timeout=5)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "no PASSED attestation" in (err.value.details() or "")
        assert _events(srv.audit_dir, "drift_baseline_reset") == []
