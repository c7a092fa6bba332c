"""Red team (issue 15, item 8): calls answered without an audit record. Every call ends with exactly one
record or fails; an Admin failure nobody foresaw is INTERNAL with the request id only, and audited; Admin's
file work never stalls the event loop; a Generate stream sends no text before a durable ``begin`` record."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_harness import collect, make_settings, prompt_request, running_server

from bastion.audit.errors import AuditUnavailable
from bastion.auth.api_keys import list_keys
from bastion.native import audit_verify_dir
from bastion.server.audit_recorder import AuditRecorder
from bastion.v1 import admin_pb2 as apb
from bastion.v1 import admin_pb2_grpc as apb_grpc
from bastion.v1 import inference_pb2 as pb
from bastion.v1 import inference_pb2_grpc as pb_grpc
from fakes import FakeEngine
from identity import make_identity

REVOKE = "/bastion.v1.Admin/RevokeApiKey"


def all_records(audit_dir: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for seg in sorted(audit_dir.glob("audit-*.jsonl")):
        out += [json.loads(line) for line in seg.read_text().splitlines() if line]
    return out


def of_call(audit_dir: Path, request_id: str) -> list[dict[str, Any]]:
    """The records of one call, in seq order."""
    return [r for r in all_records(audit_dir) if r.get("request_id") == request_id]


def request_id_of(trailing: Any) -> str:
    return dict(trailing or ())["x-request-id"]


def verify(audit_dir: Path) -> None:
    report = audit_verify_dir(str(audit_dir), str(audit_dir / "keys" / "signing.pub"))
    assert report["problem"] is None, report["problem"]


# ---- Admin: unexpected errors ---------------------------------------------------------------------------


async def test_admin_os_error_is_internal_with_only_the_request_id_and_audited() -> None:
    """Attack: make the Admin handler's file work fail with an OSError (here the API key store's lock file is a
    directory). Before: the client read ``Unexpected <class 'IsADirectoryError'>: ... '/path/api-keys.json.lock'``
    and the call had no audit record."""
    async with running_server([FakeEngine()]) as srv:
        lock = srv.identity.api_key_store.with_name(srv.identity.api_key_store.name + ".lock")
        lock.unlink(missing_ok=True)
        lock.mkdir()
        admin = apb_grpc.AdminStub(srv.channel_for("alice"))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await admin.RevokeApiKey(apb.RevokeApiKeyRequest(key_id=srv.identity.key_ids["bob"]), timeout=5)
        details = err.value.details() or ""
        assert err.value.code() == grpc.StatusCode.INTERNAL
        assert str(lock) not in details and "Error" not in details and "class" not in details, details
        rid = request_id_of(err.value.trailing_metadata())
        assert details == f"internal error (request_id={rid})"
        (rec,) = of_call(srv.audit_dir, rid)
        assert rec["kind"] == "request" and rec["method"] == REVOKE and rec["status"] == "INTERNAL"
        assert rec["principal"] == srv.identity.principals["alice"]
        assert str(lock) not in json.dumps(rec)  # the record names the failure, not the path
    verify(srv.audit_dir)


async def test_admin_file_work_runs_off_the_event_loop_and_completes_with_its_record() -> None:
    """Attack: hold the API key store's lock while an admin revokes a key. Before: the revocation's flock ran
    on the event loop, and the whole server (every tenant's calls, health) stalled until the lock was released.
    Now the file work runs in a worker thread; a client that gives up does not withdraw the action or its
    record: the key is revoked and the call audited once the lock is free."""
    async with running_server([FakeEngine()]) as srv:
        store = srv.identity.api_key_store
        fd = os.open(store.with_name(store.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        released = threading.Event()

        def release() -> None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            released.set()

        timer = threading.Timer(2.0, release)  # a thread: it runs even while the loop is stalled
        timer.start()
        try:
            admin = apb_grpc.AdminStub(srv.channel_for("alice"))
            key_id = srv.identity.key_ids["bob"]
            call = asyncio.ensure_future(admin.RevokeApiKey(apb.RevokeApiKeyRequest(key_id=key_id), timeout=0.5))
            # Ticks of this (shared) event loop while the revocation waits for the lock.
            gaps: list[float] = []
            last = time.monotonic()
            while time.monotonic() - last < 1.5 and not released.is_set() and len(gaps) < 150:
                await asyncio.sleep(0.01)
                now = time.monotonic()
                gaps.append(now - last)
                last = now
            assert max(gaps) < 0.5, f"the event loop stalled for {max(gaps):.2f} s"
            assert not released.is_set()
            listing = await pb_grpc.InferenceStub(srv.channel_for("bob")).ListModels(pb.ListModelsRequest(), timeout=1)
            assert [m.name for m in listing.models] == ["fake-model"]  # other calls are served meanwhile
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        finally:
            timer.join()
        # The client gave up; the revocation still completes, with its record.
        for _ in range(200):
            recs = [r for r in all_records(srv.audit_dir) if r.get("method") == REVOKE]
            if recs:
                break
            await asyncio.sleep(0.025)
        assert [r["status"] for r in recs] == ["OK"]
        assert next(k for k in list_keys(store) if k.key_id == key_id).revoked_at is not None
    verify(srv.audit_dir)


# ---- content logging ------------------------------------------------------------------------------------


async def test_content_logging_failure_fails_the_call_with_its_record() -> None:
    """Attack: make the opted-in tenant's content store unwritable (here ``content/tenant-b`` is a file). Before:
    the call was marked audited before its content was kept, so the failed write left it without any record
    (Generate had already streamed every delta but the last)."""
    ident = make_identity(
        Path(tempfile.mkdtemp()), tenants={"tenant-b": {"content_logging": {"enabled": True, "retention_days": 7}}}
    )
    async with running_server([FakeEngine()], settings=make_settings(identity=ident)) as srv:
        content = srv.audit_dir / "content"
        content.mkdir(mode=0o700, exist_ok=True)
        (content / "tenant-b").write_text("not a directory\n")
        bob = pb_grpc.InferenceStub(srv.channel_for("bob"))
        seen: list[pb.GenerateResponse] = []
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for msg in bob.Generate(prompt_request("bob's secret", max_tokens=3), timeout=5):
                seen.append(msg)
        rid = request_id_of(err.value.trailing_metadata())
        assert err.value.code() == grpc.StatusCode.INTERNAL
        assert err.value.details() == f"internal error (request_id={rid})"
        assert all(not m.finish_reason for m in seen)  # never answered: no final message
        finals = [r for r in of_call(srv.audit_dir, rid) if r["kind"] == "request"]
        assert [(r["status"], r["tenant"]) for r in finals] == [("INTERNAL", "tenant-b")]
        assert "content logging" in finals[0]["reason"] and "retention" not in finals[0]
        assert finals[0]["completion_tokens"] == 3 and finals[0]["completion_hmac"].startswith("hmac-sha256:")

        with pytest.raises(grpc.aio.AioRpcError) as err:
            await bob.Tokenize(pb.TokenizeRequest(model="fake-model", prompt="bob's secret"), timeout=5)
        rid = request_id_of(err.value.trailing_metadata())
        assert err.value.code() == grpc.StatusCode.INTERNAL
        assert [r["status"] for r in of_call(srv.audit_dir, rid)] == ["INTERNAL"]
        # A tenant without the opt-in is not affected.
        alice = pb_grpc.InferenceStub(srv.channel_for("alice"))
        assert (await collect(alice.Generate(prompt_request(max_tokens=2), timeout=5)))[-1].finish_reason
        assert "bob's secret" not in json.dumps(all_records(srv.audit_dir))
    verify(srv.audit_dir)


# ---- Generate: a durable begin record before the first delta -------------------------------------------


async def test_generate_first_delta_follows_a_durable_begin_record() -> None:
    """Attack: a process that dies mid-stream. Before: the call's only record was written at the end, so text
    streamed before a crash had no record at all. Now a ``decision`` record (``allow``, event ``begin``) is on
    disk before the first delta is sent, and the final record follows it."""
    engine = FakeEngine(hang_after=1)  # one delta, then nothing until cancelled
    async with running_server([engine]) as srv:
        bob = pb_grpc.InferenceStub(srv.channel_for("bob"))
        call = bob.Generate(prompt_request("a prompt", max_tokens=5), timeout=10)
        first = await call.read()
        assert first.text == "w0 "
        # Read the segments as a crash would leave them: the begin record is already there.
        (begin,) = of_call(srv.audit_dir, first.request_id)
        assert begin["kind"] == "decision" and begin["decision"] == "allow" and begin["event"] == "begin"
        assert begin["tenant"] == "tenant-b" and begin["principal"] == srv.identity.principals["bob"]
        assert begin["method"] == "/bastion.v1.Inference/Generate" and begin["model_digest"].startswith("blake3:")
        assert begin["prompt_tokens"] == len(b"a prompt") and begin["prompt_hmac"].startswith("hmac-sha256:")
        call.cancel()
        for _ in range(200):
            recs = of_call(srv.audit_dir, first.request_id)
            if len(recs) == 2:
                break
            await asyncio.sleep(0.025)
        assert [(r["kind"], r.get("event", r.get("status"))) for r in recs] == [
            ("decision", "begin"),
            ("request", "CANCELLED"),
        ]
        assert recs[0]["seq"] < recs[1]["seq"]
        # A completed stream: begin, then its one request record.
        engine.hang_after = None
        done = await collect(bob.Generate(prompt_request(max_tokens=2), timeout=5))
        recs = of_call(srv.audit_dir, done[-1].request_id)
        assert [(r["kind"], r.get("event", r.get("status"))) for r in recs] == [
            ("decision", "begin"),
            ("request", "OK"),
        ]
    verify(srv.audit_dir)


async def test_no_delta_is_sent_when_the_begin_record_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """The begin record's failure is the call's: UNAVAILABLE, and not one token reaches the client."""

    async def failing_begin(self: AuditRecorder, **fields: Any) -> int:
        raise AuditUnavailable("test: the begin record could not be made durable")

    monkeypatch.setattr(AuditRecorder, "begin", failing_begin)
    engine = FakeEngine()
    async with running_server([engine]) as srv:
        seen: list[pb.GenerateResponse] = []
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for msg in srv.stub.Generate(prompt_request(max_tokens=3), timeout=5):
                seen.append(msg)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE and seen == []
        rid = request_id_of(err.value.trailing_metadata())
        assert [r["status"] for r in of_call(srv.audit_dir, rid)] == ["UNAVAILABLE"]
        assert engine.aborted == [rid]  # the engine request is aborted, not left running unseen
