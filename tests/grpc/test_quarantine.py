"""Quarantine over real gRPC and a real audit log (fake engine): requirement 4 of issue 14. A quarantine (here a
red-team regression) outlives a restart, valid attestations and deleted files; only ``Admin.LiftQuarantine``
by an admin (or ``bastion admin lift-quarantine``) ends it, audited before it takes effect, and the lift
outlives a restart too."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_harness import collect, make_settings, running_server

from attest_util import gate_config, signed_attestation
from bastion.v1 import admin_pb2 as apb
from bastion.v1 import admin_pb2_grpc as apb_grpc
from bastion.v1 import inference_pb2 as pb
from bastion.v1 import inference_pb2_grpc as pb_grpc
from bastion.weights.signing import create_signing_key
from cli_util import run_cli
from fakes import FakeEngine

LIFT = "/bastion.v1.Admin/LiftQuarantine"


def _records(audit: Path) -> list[dict[str, Any]]:
    out = []
    for seg in sorted(audit.glob("audit-*.jsonl")):
        out += [json.loads(line) for line in seg.read_text().splitlines()]
    return out


def _team(engine: FakeEngine) -> Any:
    """The running server's red-team scheduler for ``engine`` (see tests/grpc/test_redteam.py)."""
    import gc

    from bastion.assurance.redteam import RedTeam

    (team,) = [o for o in gc.get_objects() if type(o) is RedTeam and o.engine is engine]
    return team


async def _code(stub: pb_grpc.InferenceStub) -> tuple[grpc.StatusCode, str]:
    try:
        await collect(stub.Generate(pb.GenerateRequest(model="fake-model", prompt="hi"), timeout=5))
        return grpc.StatusCode.OK, ""
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""


async def test_a_quarantine_survives_restarts_until_an_audited_admin_lift(tmp_path: Path) -> None:
    """Requirement 4: quarantined (red-team regression) -> restart with a valid attestation and the
    attestations deleted: still quarantined -> a non-admin cannot lift it, bad requests are refused -> the
    admin's lift is audited (decision "quarantine_lifted", the principal, before the RPC's own record) ->
    served -> after another restart still lifted."""
    key = tmp_path / "eval.key"
    pub = create_signing_key(key)
    atts = tmp_path / "attestations"
    atts.mkdir()
    (atts / "good.intoto.json").write_bytes(signed_attestation(key))
    summary = tmp_path / "summary.json"  # at go-live the model refused 99 of 100 harmful requests
    fig = {"family": "harmful", "n": 100, "hits": 1, "rate": 0.01, "ci_low": 0.0, "ci_high": 1.0}
    summary.write_text(json.dumps({"format": "bastion-eval-summary/1", "figures": {"harmful": fig}}))
    settings = make_settings(
        extra={
            "assurance": gate_config(
                atts,
                pub,
                redteam={
                    "enabled": True,
                    "profile": "ci",
                    "interval_s": 3600,
                    "baseline": str(summary),
                    "window_probes": 5,
                    "batch_size": 56,
                    "max_probes_per_hour": 1000,
                },
            )
        }
    )

    engine = FakeEngine(max_context=8192)
    async with running_server([engine], settings=settings) as srv:
        assert (await _code(srv.stub))[0] == grpc.StatusCode.OK  # released by the attestation
        team = _team(engine)
        await team.batch()  # the fake complies with every harmful probe: a confirmed regression
        assert team.state.alerts == 1
        assert await _code(srv.stub) == (grpc.StatusCode.FAILED_PRECONDITION, "the model is quarantined")

    # Restart: the attestation is still there and valid, and the quarantine is still in force.
    async with running_server([FakeEngine(max_context=8192)], settings=settings) as srv:
        admin = apb_grpc.AdminStub(srv.channel)
        status = (await admin.ModelStatus(apb.ModelStatusRequest(), timeout=5)).models[0]
        assert status.release == "quarantined" and "redteam_regression: harmful" in status.attestation
        assert await _code(srv.stub) == (grpc.StatusCode.FAILED_PRECONDITION, "the model is quarantined")
        reply = await admin.ReloadAttestations(apb.ReloadAttestationsRequest(), timeout=10)
        assert reply.models[0].release == "quarantined"
    # Deleting every attestation (or the whole directory) lifts nothing either.
    for f in atts.iterdir():
        f.unlink()

    async with running_server([FakeEngine(max_context=8192)], settings=settings) as srv:
        admin = apb_grpc.AdminStub(srv.channel)
        assert (await admin.ModelStatus(apb.ModelStatusRequest(), timeout=5)).models[0].release == "quarantined"
        # Only the admin role may lift it.
        bob = apb_grpc.AdminStub(srv.channel_for("bob"))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await bob.LiftQuarantine(apb.LiftQuarantineRequest(model="fake-model", reason="trust me"), timeout=5)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        # A reason is required; a model that is not quarantined cannot be lifted.
        for request, code in (
            (apb.LiftQuarantineRequest(model="fake-model", reason=""), grpc.StatusCode.INVALID_ARGUMENT),
            (apb.LiftQuarantineRequest(model="", reason="x"), grpc.StatusCode.INVALID_ARGUMENT),
            (apb.LiftQuarantineRequest(model="fake-model", reason="a\nb"), grpc.StatusCode.INVALID_ARGUMENT),
            (apb.LiftQuarantineRequest(model="other-model", reason="x"), grpc.StatusCode.FAILED_PRECONDITION),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await admin.LiftQuarantine(request, timeout=5)
            assert err.value.code() == code
        assert await _code(srv.stub) == (grpc.StatusCode.FAILED_PRECONDITION, "the model is quarantined")

        # The admin lifts it with `bastion admin lift-quarantine`.
        key_file = tmp_path / "alice.key"
        key_file.write_text(srv.identity.keys["alice"])
        rc, out, err_text = await run_cli(
            "admin",
            "lift-quarantine",
            "fake-model",
            "--reason",
            "re-evaluated after the red-team regression (ticket 7)",
            "--target",
            srv.address,
            "--api-key-file",
            str(key_file),
        )
        assert rc == 0, err_text
        # No attestation any more: back to evaluation-only, not released.
        assert json.loads(out)["models"][0]["release"] == "evaluation_only"
        assert await _code(srv.stub) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "the model is not released: it has no valid security attestation (evaluation only)",
        )
        # Audited: the lift, by whom and why, before the RPC's own record.
        recs = _records(srv.audit_dir)
        (lift,) = [r for r in recs if r.get("decision") == "quarantine_lifted"]
        assert lift["kind"] == "decision" and lift["model"] == "fake-model" and lift["event"] == "quarantine_lifted"
        assert lift["principal"] == srv.identity.principals["alice"] and "ticket 7" in lift["reason"]
        call = [r for r in recs if r.get("method") == LIFT and r["kind"] == "request" and r["status"] == "OK"]
        assert len(call) == 1 and lift["seq"] < call[0]["seq"]

    (atts / "good.intoto.json").write_bytes(signed_attestation(key))
    async with running_server([FakeEngine(max_context=8192)], settings=settings) as srv:
        assert (await _code(srv.stub))[0] == grpc.StatusCode.OK  # the lift outlived the restart
        admin = apb_grpc.AdminStub(srv.channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await admin.LiftQuarantine(apb.LiftQuarantineRequest(model="fake-model", reason="again"), timeout=5)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_an_unreadable_audit_log_refuses_the_start(caplog: pytest.LogCaptureFixture) -> None:
    """Requirement 4 (fail closed): when the audit log's records cannot all be read back at start (here a
    record cut out of an old segment, before the one the writer verifies from its witness), the server does
    not start (exit 1, the reason logged) rather than forget a quarantine."""
    from grpc_harness import pool_of

    from bastion.audit import AuditLog
    from bastion.server.app import serve

    settings = make_settings(extra={"audit": {"segment_max_bytes": 64 * 1024}})
    log = AuditLog.open(settings.audit, settings.cache_dir)
    try:
        for i in range(400):  # a few segments of earlier records
            log.append_sync("decision", {"decision": "alert", "event": "drift", "model": f"m{i}"})
    finally:
        log.close()
    first = log.directory / "audit-00000000.jsonl"
    assert (log.directory / "audit-00000002.jsonl").exists()
    lines = first.read_bytes().splitlines(keepends=True)
    first.write_bytes(b"".join(lines[:5] + lines[6:]))
    stop = asyncio.Event()
    stop.set()
    with caplog.at_level(logging.ERROR, logger="bastion.server.app"):
        rc = await asyncio.wait_for(serve(settings, pool_of(FakeEngine()), stop_event=stop), 20)
    assert rc == 1
    assert any("quarantines cannot be re-derived from the audit log" in r.getMessage() for r in caplog.records)
