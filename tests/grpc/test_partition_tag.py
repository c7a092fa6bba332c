"""The partition tag the server sends to the engine with every generation (bastion.isolation.tag)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from grpc_harness import collect, make_settings, prompt_request, running_server

from bastion.isolation.tag import PartitionTag
from bastion.tenancy.partition import PartitionKeys, load_or_create
from bastion.v1 import inference_pb2 as pb
from bastion.v1 import inference_pb2_grpc as pb_grpc
from fakes import FakeEngine
from identity import Identity, make_identity

SYSTEM = "You are the support assistant of Example Corp. Answer briefly."


def _identity(public: dict[str, str] | None = None, **tenant_a: object) -> Identity:
    return make_identity(
        Path(tempfile.mkdtemp(prefix="bastion-id-")),
        tenants={"tenant-a": {"kv_reserved_blocks": 8, "kv_max_blocks": 32, **tenant_a}},
        public_prefixes=public,
    )


def _settings(public: dict[str, str] | None = None) -> object:
    return make_settings(identity=_identity(public))


def _chat(system: str, user: str) -> pb.GenerateRequest:
    msgs = [pb.ChatMessage(role=pb.ROLE_SYSTEM, content=system), pb.ChatMessage(role=pb.ROLE_USER, content=user)]
    return pb.GenerateRequest(
        model="fake-model", conversation=pb.Conversation(messages=msgs), sampling=pb.SamplingParams(max_tokens=1)
    )


async def test_tags_carry_the_tenant_key_and_kv_budget() -> None:
    engine = FakeEngine()
    settings = _settings()
    async with running_server([engine], settings=settings) as srv:
        for who in ("alice", "carol", "bob"):  # alice and carol share tenant-a
            await collect(pb_grpc.InferenceStub(srv.channel_for(who)).Generate(prompt_request(max_tokens=1), timeout=5))
    a1, a2, b = (PartitionTag.decode(r.cache_salt) for r in engine.requests)
    assert a1 == a2 and b.tenant_key != a1.tenant_key
    assert a1.cache_key == a1.tenant_key and b.cache_key == b.tenant_key  # prefix_cache_scope "tenant" (default)
    assert (a1.kv_reserved_blocks, a1.kv_max_blocks) == (8, 32) and (b.kv_reserved_blocks, b.kv_max_blocks) == (0, 0)
    # The key is HKDF(server secret, tenant): the same secret file gives the same key, nothing client-side does.
    secret = load_or_create(settings.cache_dir / "keys" / "partition.key", create=False)
    assert a1.tenant_key == PartitionKeys(secret).salt_for("tenant-a")
    assert b.tenant_key == PartitionKeys(secret).salt_for("tenant-b")


async def test_principal_scope_keys_the_cache_per_principal_and_keeps_the_tenant_budget() -> None:
    """tenant-a sets prefix_cache_scope = "principal": alice and carol get cache keys of their own, derived by
    the server from its secret, the tenant and the principal id; the tenant key (their KV budget) and the
    budget itself stay the tenant's. bob's tenant keeps the default."""
    engine = FakeEngine()
    ident = _identity({"support": SYSTEM}, prefix_cache_scope="principal")
    settings = make_settings(identity=ident)
    async with running_server([engine], settings=settings) as srv:
        for who in ("alice", "carol", "bob"):
            stub = pb_grpc.InferenceStub(srv.channel_for(who))
            await collect(stub.Generate(prompt_request(SYSTEM + " Where is my order?", max_tokens=1), timeout=5))
    a, c, b = (PartitionTag.decode(r.cache_salt) for r in engine.requests)
    keys = PartitionKeys(load_or_create(settings.cache_dir / "keys" / "partition.key", create=False))
    assert a.tenant_key == c.tenant_key == keys.salt_for("tenant-a")
    assert (a.kv_reserved_blocks, a.kv_max_blocks) == (c.kv_reserved_blocks, c.kv_max_blocks) == (8, 32)
    assert a.cache_key == keys.principal_key("tenant-a", ident.principals["alice"])
    assert c.cache_key == keys.principal_key("tenant-a", ident.principals["carol"])
    assert len({a.cache_key, c.cache_key, a.tenant_key}) == 3
    assert a.public_tokens == c.public_tokens == b.public_tokens > 0  # the declared prefix is still shared
    assert b.cache_key == b.tenant_key == keys.salt_for("tenant-b")


async def test_only_declared_public_prefixes_are_public() -> None:
    engine = FakeEngine()  # tokenizes to UTF-8 bytes; chat renders "<role>content" + "<assistant>"
    async with running_server([engine], settings=_settings({"support": SYSTEM})) as srv:
        stub = pb_grpc.InferenceStub(srv.channel_for("bob"))
        await collect(stub.Generate(prompt_request(SYSTEM + " Where is my order?", max_tokens=1), timeout=5))
        await collect(stub.Generate(prompt_request("Hi. " + SYSTEM, max_tokens=1), timeout=5))
        await collect(stub.Generate(_chat(SYSTEM, "Where is my order?"), timeout=5))
        await collect(stub.Generate(_chat(SYSTEM + "!", "Where is my order?"), timeout=5))
        await collect(stub.Generate(prompt_request(SYSTEM[:-1], max_tokens=1), timeout=5))
    plain, inside, chat, altered, truncated = (PartitionTag.decode(r.cache_salt).public_tokens for r in engine.requests)
    # Plain prompt: the prefix's tokens but its last (it may merge with what follows).
    assert plain == len(SYSTEM.encode()) - 1
    assert inside == 0  # the text appears, but not as the prefix
    # Chat: "<system>" + text, then the template's "<" shared by "<assistant>" and "<user>".
    assert chat == len(f"<system>{SYSTEM}<".encode())
    assert altered == 0 and truncated == 0


async def test_a_policy_without_public_prefixes_shares_nothing() -> None:
    engine = FakeEngine()
    async with running_server([engine], settings=_settings()) as srv:
        stub = pb_grpc.InferenceStub(srv.channel_for("alice"))
        await collect(stub.Generate(prompt_request(SYSTEM + " x", max_tokens=1), timeout=5))
    assert PartitionTag.decode(engine.requests[0].cache_salt).public_tokens == 0
