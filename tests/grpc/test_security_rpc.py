"""Authentication, tenancy and audit at the gRPC layer: every refusal gets the right status, is audited,
and never reaches the engine; every served call has exactly one durable audit record."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_harness import collect, make_settings, prompt_request, running_server
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bastion.native import audit_verify_dir
from bastion.server.audit_recorder import BEGIN
from bastion.v1 import admin_pb2 as apb
from bastion.v1 import admin_pb2_grpc as apb_grpc
from bastion.v1 import inference_pb2 as pb
from bastion.v1 import inference_pb2_grpc as pb_grpc
from fakes import FakeEngine
from identity import make_identity


def records(audit_dir: Path) -> list[dict[str, Any]]:
    """Each call's one final record (a Generate stream's ``begin`` record is not one: see
    test_audit_completeness.py)."""
    out = []
    for seg in sorted(audit_dir.glob("audit-*.jsonl")):
        out += [json.loads(line) for line in seg.read_text().splitlines() if line]
    return [r for r in out if r["kind"] in ("request", "decision") and r.get("event") != BEGIN]


def calls(recs: list[dict[str, Any]], **match: str) -> int:
    """How many calls ``recs`` stand for (a coalesced refusal record stands for ``count`` of them)."""
    return sum(r.get("count", 1) for r in recs if all(r.get(k) == v for k, v in match.items()))


def verify(audit_dir: Path) -> dict[str, Any]:
    pub = audit_dir / "keys" / "signing.pub"
    report = audit_verify_dir(str(audit_dir), str(pub))
    assert report["problem"] is None, report["problem"]
    return report


async def code_of(call: Any) -> tuple[grpc.StatusCode, str, Any]:
    try:
        if hasattr(call, "__aiter__"):
            await collect(call)
        else:
            await call
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or "", exc.trailing_metadata()
    return grpc.StatusCode.OK, "", None


async def test_refusals_are_audited_and_never_reach_the_engine(tmp_path: Path) -> None:
    engine = FakeEngine()
    async with running_server([engine]) as srv:
        ident = srv.identity
        revoked_key = ident.keys["carol"]
        from bastion.auth.api_keys import revoke

        revoke(ident.api_key_store, ident.key_ids["carol"])
        cases: list[tuple[str, grpc.aio.Channel, list[tuple[str, str]], grpc.StatusCode]] = [
            ("no credentials", srv.channel_for(None), [], grpc.StatusCode.UNAUTHENTICATED),
            (
                "unknown key",
                srv.channel_for(None),
                [("authorization", "Bearer bst_" + "a" * 12 + "_" + "b" * 43)],
                grpc.StatusCode.UNAUTHENTICATED,
            ),
            (
                "revoked key",
                srv.channel_for(None),
                [("authorization", f"Bearer {revoked_key}")],
                grpc.StatusCode.UNAUTHENTICATED,
            ),
            (
                "malformed header",
                srv.channel_for(None),
                [("authorization", "Basic Zm9vOmJhcg==")],
                grpc.StatusCode.UNAUTHENTICATED,
            ),
            (
                "oversized header",
                srv.channel_for(None),
                [("authorization", "Bearer " + "x" * 9000)],
                grpc.StatusCode.UNAUTHENTICATED,
            ),
            ("not in policy", srv.channel_for("mallory"), [], grpc.StatusCode.PERMISSION_DENIED),
            ("tenant override", srv.channel_for("bob"), [("x-tenant", "tenant-a")], grpc.StatusCode.PERMISSION_DENIED),
            ("salt override", srv.channel_for("bob"), [("x-cache-salt", "abc")], grpc.StatusCode.PERMISSION_DENIED),
            (
                "bastion header",
                srv.channel_for("bob"),
                [("x-bastion-principal", "alice")],
                grpc.StatusCode.PERMISSION_DENIED,
            ),
            (
                "too many entries",
                srv.channel_for("bob"),
                [(f"x-k{i}", "v") for i in range(70)],
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
        ]
        for what, channel, md, want in cases:
            stub = pb_grpc.InferenceStub(channel)
            code, details, _ = await code_of(stub.Generate(prompt_request(), metadata=md, timeout=5))
            assert code == want, what
            assert "bst_" not in details and "tenant-a" not in details, what
            await channel.close()
        assert engine.requests == []
    # Refusals from one peer with the same key are coalesced: the first in full, the rest counted in one
    # record written when the window closes (here: at shutdown).
    recs = records(srv.audit_dir)
    assert calls(recs) == len(cases)
    assert all(r["kind"] == "decision" and r["decision"] == "deny" for r in recs)
    assert calls(recs, event="identity_override_attempt") == 3
    assert calls(recs, event="authentication_failed") == 5
    # Reasons are categories, never the credential.
    assert all(revoked_key not in json.dumps(r) for r in recs)
    verify(srv.audit_dir)


async def test_smuggled_request_fields_are_refused() -> None:
    engine = FakeEngine()
    async with running_server([engine]) as srv:
        raw = prompt_request().SerializeToString() + b"\xa2\x06\x08tenant-a"  # field 100: a "tenant" string
        call = srv.channel.unary_stream(
            "/bastion.v1.Inference/Generate",
            request_serializer=lambda b: b,
            response_deserializer=pb.GenerateResponse.FromString,
        )
        code, _, _ = await code_of(call(raw, timeout=5))
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert engine.requests == []
        assert records(srv.audit_dir)[-1]["event"] == "identity_override_attempt"


async def test_served_calls_have_one_record_each_with_keyed_content_hmacs() -> None:
    async with running_server([FakeEngine()]) as srv:
        a = pb_grpc.InferenceStub(srv.channel_for("alice"))
        b = pb_grpc.InferenceStub(srv.channel_for("bob"))
        await collect(a.Generate(prompt_request("same prompt", max_tokens=3), timeout=5))
        await collect(b.Generate(prompt_request("same prompt", max_tokens=3), timeout=5))
        await a.Tokenize(pb.TokenizeRequest(model="fake-model", prompt="hi"), timeout=5)
        await b.ListModels(pb.ListModelsRequest(), timeout=5)
        recs = records(srv.audit_dir)
        assert [r["method"].rsplit("/", 1)[1] for r in recs] == ["Generate", "Generate", "Tokenize", "ListModels"]
        ra, rb = recs[0], recs[1]
        assert ra["tenant"] == "tenant-a" and rb["tenant"] == "tenant-b"
        assert ra["principal"] == srv.identity.principals["alice"]
        assert ra["status"] == "OK" and ra["finish_reason"] == "length" and ra["completion_tokens"] == 3
        assert ra["model_digest"].startswith("blake3:")
        # Same prompt, different tenants: different keyed HMACs; no content in the record.
        assert ra["prompt_hmac"].startswith("hmac-sha256:") and ra["prompt_hmac"] != rb["prompt_hmac"]
        assert ra["completion_hmac"].startswith("hmac-sha256:") and ra["completion_hmac"] != rb["completion_hmac"]
        assert "same prompt" not in json.dumps(recs)
    report = verify(srv.audit_dir)
    assert report["unsigned_tail"] == 0  # closed with a checkpoint


async def test_tenant_cannot_use_another_tenants_model() -> None:
    ident_dir = Path(__import__("tempfile").mkdtemp())
    ident = make_identity(ident_dir, tenants={"tenant-b": {"models": ["model-b"]}, "tenant-a": {"models": ["model-a"]}})
    engines = [FakeEngine("model-a"), FakeEngine("model-b")]
    async with running_server(engines, settings=make_settings(identity=ident)) as srv:
        bob = pb_grpc.InferenceStub(srv.channel_for("bob"))
        code, details, _ = await code_of(bob.Generate(prompt_request(model="model-a"), timeout=5))
        assert code == grpc.StatusCode.PERMISSION_DENIED and "model-a" not in details
        code, _, _ = await code_of(bob.Tokenize(pb.TokenizeRequest(model="model-a", prompt="x"), timeout=5))
        assert code == grpc.StatusCode.PERMISSION_DENIED
        listed = await bob.ListModels(pb.ListModelsRequest(), timeout=5)
        assert [m.name for m in listed.models] == ["model-b"]  # another tenant's model is not even listed
        await collect(bob.Generate(prompt_request(model="model-b", max_tokens=2), timeout=5))
        assert [r.prompt_token_ids for r in engines[0].requests] == []
        assert len(engines[1].requests) == 1
        recs = records(srv.audit_dir)
        assert [r.get("event", "") for r in recs[:2]] == ["authorization_denied"] * 2


async def test_rate_limit_flood_gets_resource_exhausted_with_retry_info() -> None:
    ident = make_identity(
        Path(__import__("tempfile").mkdtemp()), tenants={"tenant-b": {"requests_per_s": 1.0, "request_burst": 3}}
    )
    engine = FakeEngine()
    async with running_server([engine], settings=make_settings(identity=ident)) as srv:
        bob = pb_grpc.InferenceStub(srv.channel_for("bob"))
        alice = pb_grpc.InferenceStub(srv.channel_for("alice"))
        results = await asyncio.gather(
            *[code_of(bob.Generate(prompt_request(max_tokens=1), timeout=5)) for _ in range(20)]
        )
        codes = [c for c, _, _ in results]
        assert codes.count(grpc.StatusCode.OK) == 3
        assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 17
        md = dict(next(t for c, _, t in results if c == grpc.StatusCode.RESOURCE_EXHAUSTED))
        status = status_pb2.Status.FromString(md["grpc-status-details-bin"])
        info = error_details_pb2.RetryInfo()
        assert status.details[0].Unpack(info)
        assert 0 < info.retry_delay.ToMilliseconds() <= 1000
        assert int(md["grpc-retry-pushback-ms"]) == info.retry_delay.ToMilliseconds()  # what gRPC retries honour
        # The flood of one tenant does not limit another.
        assert (await code_of(alice.Generate(prompt_request(max_tokens=1), timeout=5)))[0] == grpc.StatusCode.OK
        assert len(engine.requests) == 4
    recs = records(srv.audit_dir)
    assert calls(recs) == 21
    assert calls(recs, event="rate_limited") == 17
    # One full record for the first, one coalesced record for the other 16 (same principal, same window).
    assert sum(r.get("event") == "rate_limited" for r in recs) == 2


async def test_per_tenant_token_cap_and_stream_limit() -> None:
    ident = make_identity(
        Path(__import__("tempfile").mkdtemp()),
        tenants={"tenant-b": {"max_tokens_per_request": 8, "max_concurrent_streams": 1}},
    )
    engine = FakeEngine(token_delay=0.05)
    async with running_server([engine], settings=make_settings(identity=ident)) as srv:
        bob = pb_grpc.InferenceStub(srv.channel_for("bob"))
        code, details, _ = await code_of(bob.Generate(prompt_request(max_tokens=9), timeout=5))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "sampling.max_tokens" in details and "8" in details
        first = bob.Generate(prompt_request(max_tokens=8), timeout=10)
        await engine.started.wait()
        code, _, _ = await code_of(bob.Generate(prompt_request(max_tokens=1), timeout=5))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert len(await collect(first)) > 1


async def test_admin_service_needs_the_admin_role_and_works() -> None:
    engine = FakeEngine()
    async with running_server([engine]) as srv:
        bob_admin = apb_grpc.AdminStub(srv.channel_for("bob"))
        code, _, _ = await code_of(bob_admin.ListTenants(apb.ListTenantsRequest(), timeout=5))
        assert code == grpc.StatusCode.PERMISSION_DENIED
        admin = apb_grpc.AdminStub(srv.channel_for("alice"))
        await collect(pb_grpc.InferenceStub(srv.channel_for("bob")).Generate(prompt_request(max_tokens=2), timeout=5))
        listing = await admin.ListTenants(apb.ListTenantsRequest(), timeout=5)
        tb = {t.tenant: t for t in listing.tenants}["tenant-b"]
        assert tb.requests == 1 and tb.completion_tokens == 2
        models = await admin.ModelStatus(apb.ModelStatusRequest(), timeout=5)
        assert [(m.name, m.state) for m in models.models] == [("fake-model", "ready")]
        # Revocation through the Admin service takes effect on the next call.
        await admin.RevokeApiKey(apb.RevokeApiKeyRequest(key_id=srv.identity.key_ids["bob"]), timeout=5)
        code, _, _ = await code_of(
            pb_grpc.InferenceStub(srv.channel_for("bob")).ListModels(pb.ListModelsRequest(), timeout=5)
        )
        assert code == grpc.StatusCode.UNAUTHENTICATED
        code, _, _ = await code_of(admin.RevokeApiKey(apb.RevokeApiKeyRequest(key_id="nosuchkey1"), timeout=5))
        assert code == grpc.StatusCode.NOT_FOUND
        # A bad policy is refused and the running one stays.
        good = srv.identity.policy_file.read_text()
        srv.identity.policy_file.write_text(good + "\n[tenants.bad]\nbogus = 1\n")
        code, details, _ = await code_of(admin.ReloadPolicy(apb.ReloadPolicyRequest(), timeout=5))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "tenants.bad.bogus" in details
        srv.identity.policy_file.write_text(good)
        reloaded = await admin.ReloadPolicy(apb.ReloadPolicyRequest(), timeout=5)
        assert reloaded.tenants == 4 and reloaded.policy_digest.startswith("sha256:")
        methods = [r["method"].rsplit("/", 1)[1] for r in records(srv.audit_dir)]
        assert methods.count("ListTenants") == 2 and "RevokeApiKey" in methods and "ReloadPolicy" in methods
    verify(srv.audit_dir)


async def test_health_is_public_only_when_configured() -> None:
    async with running_server([FakeEngine()]) as srv:
        ch = srv.channel_for(None)
        reply = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        await ch.close()
    settings = make_settings(extra={"auth": {"public_health": False}})
    async with running_server([FakeEngine()], settings=settings, wait_ready=False) as srv:
        ch = srv.channel_for(None)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        await ch.close()
        await srv.wait_health(health_pb2.HealthCheckResponse.SERVING)  # with credentials it answers


async def test_audit_failure_fails_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    from bastion.audit import files

    engine = FakeEngine()
    async with running_server([engine]) as srv:
        await collect(srv.stub.Generate(prompt_request(max_tokens=1), timeout=5))

        def broken(fd: int, data: Any) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(files, "write_all", broken)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await collect(srv.stub.Generate(prompt_request(max_tokens=2), timeout=5))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        # The stream never got its final message: no call is answered without its record.
        assert len(engine.requests) == 2
        await srv.wait_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        code, _, _ = await code_of(srv.stub.ListModels(pb.ListModelsRequest(), timeout=5))
        assert code == grpc.StatusCode.UNAVAILABLE


async def test_audit_records_are_exported_as_otel_logs_and_spans_carry_ids() -> None:
    async with running_server([FakeEngine()]) as srv:
        bob = pb_grpc.InferenceStub(srv.channel_for("bob"))
        await collect(bob.Generate(prompt_request("a private prompt", max_tokens=2), timeout=5))
        rid = records(srv.audit_dir)[-1]["request_id"]
        exported = [r.log_record for r in srv.logs.get_finished_logs()]
        mine = [r for r in exported if (r.attributes or {}).get("audit.request_id") == rid]
        # The stream's begin record, then its one record.
        assert [(r.attributes or {}).get("audit.event", "") for r in mine] == [BEGIN, ""]
        attrs = dict(mine[-1].attributes or {})
        assert attrs["audit.tenant"] == "tenant-b" and attrs["audit.kind"] == "request"
        assert "a private prompt" not in json.dumps({k: str(v) for k, v in attrs.items()})
        span = next(s for s in srv.spans.get_finished_spans() if s.attributes.get("bastion.request_id") == rid)
        assert span.attributes["bastion.tenant"] == "tenant-b"
        assert span.attributes["bastion.principal"] == srv.identity.principals["bob"]
        assert srv.identity.keys["bob"] not in json.dumps({k: str(v) for k, v in span.attributes.items()})


async def test_content_logging_is_a_per_tenant_opt_in_with_retention() -> None:
    import datetime as dt
    import stat

    from bastion.audit.content import ContentStore

    ident = make_identity(
        Path(__import__("tempfile").mkdtemp()),
        tenants={"tenant-b": {"content_logging": {"enabled": True, "retention_days": 7}}},
    )
    async with running_server([FakeEngine()], settings=make_settings(identity=ident)) as srv:
        await collect(
            pb_grpc.InferenceStub(srv.channel_for("alice")).Generate(prompt_request("alice's", max_tokens=2), timeout=5)
        )
        await collect(
            pb_grpc.InferenceStub(srv.channel_for("bob")).Generate(prompt_request("bob's", max_tokens=2), timeout=5)
        )
        content = srv.audit_dir / "content"
        assert not (content / "tenant-a").exists()  # no opt-in: nothing kept
        (day,) = (content / "tenant-b").iterdir()
        assert stat.S_IMODE(day.stat().st_mode) == 0o600
        line = json.loads(day.read_text())
        assert line["prompt"] == "bob's" and line["completion"] == "w0 w1 "
        ra, rb = records(srv.audit_dir)[-2:]
        assert "retention" not in ra and rb["retention"] == "7d" and rb["request_id"] == line["request_id"]
    # Retention: day files older than the tenant's retention go; a tenant without opt-in loses all.
    store = ContentStore(content)
    today = dt.datetime.now(dt.UTC).date()
    old = content / "tenant-b" / f"{today - dt.timedelta(days=7):%Y-%m-%d}.jsonl"
    old.write_text("{}\n")
    assert store.prune({"tenant-b": 7}) == 1 and day.exists() and not old.exists()
    assert store.prune({}) == 1 and not day.exists()
