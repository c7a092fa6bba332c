"""LoRA adapters over the HTTP API: ``"model": "<model>@<adapter>"``, scoped to tenants by the same policy as
the gRPC API's ``adapter`` field (policy before existence), listed by GET /v1/models, named in the audit
record with the adapter's digest."""

from __future__ import annotations

import tempfile
from pathlib import Path

from http_harness import chat_body, client, http_server, records

from fakes import FakeEngine
from identity import make_identity


async def test_adapters_over_http_are_scoped_to_tenants() -> None:
    engine = FakeEngine(adapters=("support-v1", "legal-v1"))
    ident = make_identity(
        Path(tempfile.mkdtemp(prefix="bastion-id-")), tenants={"tenant-a": {"adapters": ["support-*"]}}
    )
    async with (
        http_server([engine], identity=ident) as srv,
        client(srv, "alice") as alice,
        client(srv, "bob") as bob,
    ):
        listed = (await alice.get("/v1/models")).json()["data"]
        assert [(m["id"], m.get("parent")) for m in listed] == [
            ("fake-model", None),
            ("fake-model@support-v1", "fake-model"),
        ]
        assert [m["id"] for m in (await bob.get("/v1/models")).json()["data"]] == ["fake-model"]
        ok = await alice.post("/v1/chat/completions", json=chat_body(model="fake-model@support-v1", max_tokens=2))
        assert ok.status_code == 200 and ok.json()["model"] == "fake-model@support-v1"
        base = await alice.post("/v1/completions", json={"model": "fake-model", "prompt": "hi", "max_tokens": 1})
        assert base.status_code == 200 and base.json()["model"] == "fake-model"
        answers = {}
        for who, c, name in (
            ("alice", alice, "fake-model@legal-v1"),
            ("alice", alice, "fake-model@support-v9"),
            ("bob", bob, "fake-model@support-v1"),
            ("bob", bob, "fake-model@nope"),
            ("alice", alice, "fake-model@bad/name"),
            ("alice", alice, "fake-model@"),
        ):
            r = await c.post("/v1/chat/completions", json=chat_body(model=name, max_tokens=1))
            answers[(who, name)] = (r.status_code, r.json()["error"]["message"], r.json()["error"]["param"])
    assert [r.adapter for r in engine.requests] == ["support-v1", None]
    assert answers[("alice", "fake-model@legal-v1")][0] == 403  # exists, not allowed
    assert answers[("alice", "fake-model@support-v9")][0] == 404  # allowed, does not exist
    # A tenant without adapters learns nothing about which exist: the same answer for both.
    assert answers[("bob", "fake-model@support-v1")] == answers[("bob", "fake-model@nope")]
    assert answers[("bob", "fake-model@nope")][0] == 403
    for name in ("fake-model@bad/name", "fake-model@"):
        status, message, param = answers[("alice", name)]
        assert (status, param) == (400, "model") and "[A-Za-z0-9._-]" in message and "bad/name" not in message
    served = [r for r in records(srv.audit_dir) if r.get("status") == "OK" and r["method"].startswith("POST")]
    assert [(r["model"], r.get("adapter"), r.get("adapter_digest", "")[:7]) for r in served] == [
        ("fake-model", "support-v1", "blake3:"),
        ("fake-model", None, ""),
    ]
    assert served[0]["adapter_digest"] == engine.info.adapter_digest("support-v1")
