"""The EngineCore block hasher (bastion.engine.vllm.block_hasher) on real vLLM Request objects."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from vllm.lora.request import LoRARequest
from vllm.sampling_params import SamplingParams
from vllm.v1.request import Request

from bastion._native import BlockKeyer
from bastion.engine.process import ENV_VAR, EngineProcessEnv
from bastion.engine.vllm import block_hasher
from bastion.isolation.tag import PartitionTag
from bastion.tenancy.partition import PartitionKeys

BS = 16
KA, KB = "a" * 64, "b" * 64


def _request(tokens: list[int], salt: str | None, rid: str = "r", lora: LoRARequest | None = None) -> Request:
    hasher = block_hasher.make_request_block_hasher(BS, BlockKeyer(b"k" * 32))
    return Request(
        rid, tokens, SamplingParams(max_tokens=4), None, cache_salt=salt, lora_request=lora, block_hasher=hasher
    )


def _tag(key: str, public: int = 0) -> str:
    return PartitionTag(key, public).encode()


PROMPT = list(range(100, 100 + 5 * BS + 3))  # five full blocks and a partial one


def test_same_tenant_same_keys_other_tenant_none_shared() -> None:
    a1, a2, b = _request(PROMPT, _tag(KA)), _request(PROMPT, _tag(KA), "r2"), _request(PROMPT, _tag(KB))
    assert len(a1.block_hashes) == 5
    assert a1.block_hashes == a2.block_hashes
    assert not set(a1.block_hashes) & set(b.block_hashes)


def test_public_prefix_blocks_are_shared_then_private() -> None:
    public = 2 * BS + 5  # two whole blocks are public; the partial third is not
    a, b = _request(PROMPT, _tag(KA, public)), _request(PROMPT, _tag(KB, public))
    assert a.block_hashes[:2] == b.block_hashes[:2]
    assert not set(a.block_hashes[2:]) & set(b.block_hashes[2:])
    # Without the declaration nothing is shared, not even the same leading blocks.
    assert not set(_request(PROMPT, _tag(KB)).block_hashes) & set(a.block_hashes)


def _server_tag(keys: PartitionKeys, tenant: str, principal: str, scope: str, public: int = 0) -> str:
    """The tag as the server builds it (bastion.server.servicer._partition_tag)."""
    cache_key = keys.cache_key(tenant, principal, scope)
    return PartitionTag(keys.salt_for(tenant), public, 0, 8, cache_key=cache_key).encode()


def test_principal_scope_gives_each_principal_of_a_tenant_its_own_blocks() -> None:
    keys = PartitionKeys(b"s" * 32)
    alice, carol = "apikey:alice", "apikey:carol"
    # scope "tenant" (the default): two principals of one tenant key the same tokens alike (they share).
    ta, tc = _server_tag(keys, "t", alice, "tenant"), _server_tag(keys, "t", carol, "tenant")
    assert _request(PROMPT, ta).block_hashes == _request(PROMPT, tc, "r2").block_hashes
    # scope "principal": no block in common, while each principal still hits its own blocks.
    pa, pc = _server_tag(keys, "t", alice, "principal"), _server_tag(keys, "t", carol, "principal")
    a, c = _request(PROMPT, pa), _request(PROMPT, pc, "r2")
    assert len(a.block_hashes) == 5 and not set(a.block_hashes) & set(c.block_hashes)
    assert _request(PROMPT, pa, "r3").block_hashes == a.block_hashes
    assert not set(a.block_hashes) & set(_request(PROMPT, ta, "r4").block_hashes)  # nor with the tenant's
    # ... and the budget key (the tag's tenant key) is the same for both.
    assert PartitionTag.decode(pa).tenant_key == PartitionTag.decode(pc).tenant_key == keys.salt_for("t")
    assert PartitionTag.decode(pa).tenant_key == PartitionTag.decode(ta).tenant_key


def test_principal_scope_still_shares_the_declared_public_prefix() -> None:
    keys = PartitionKeys(b"s" * 32)
    public = 2 * BS + 5
    a = _request(PROMPT, _server_tag(keys, "t", "apikey:alice", "principal", public))
    c = _request(PROMPT, _server_tag(keys, "t", "apikey:carol", "principal", public), "r2")
    other = _request(PROMPT, _server_tag(keys, "u", "apikey:bob", "tenant", public), "r3")
    assert a.block_hashes[:2] == c.block_hashes[:2] == other.block_hashes[:2]
    assert not set(a.block_hashes[2:]) & set(c.block_hashes[2:])


def test_blocks_appended_during_decoding_continue_the_chain() -> None:
    whole = _request(PROMPT + [7] * BS, _tag(KA, BS))
    grown = _request(PROMPT, _tag(KA, BS))
    grown.append_output_token_ids([7] * BS)  # decoding fills the sixth block
    assert grown.block_hashes == whole.block_hashes and len(whole.block_hashes) == 6


def test_adapter_is_part_of_the_key() -> None:
    plain = _request(PROMPT, _tag(KA))
    lora = _request(PROMPT, _tag(KA), lora=LoRARequest("support", 1, "/adapters/support"))
    moved = _request(PROMPT, _tag(KA), lora=LoRARequest("support", 1, "/adapters/other"))
    assert not set(plain.block_hashes) & set(lora.block_hashes)
    assert not set(lora.block_hashes) & set(moved.block_hashes)


def test_untagged_requests_share_with_nobody() -> None:
    u1, u2 = _request(PROMPT, None, "u1"), _request(PROMPT, "forged-salt", "u2")
    a = _request(PROMPT, _tag(KA))
    assert not set(u1.block_hashes) & set(u2.block_hashes)
    assert not (set(u1.block_hashes) | set(u2.block_hashes)) & set(a.block_hashes)


def test_install_replaces_vllms_hasher_only_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import vllm.v1.engine.core as core

    original = core.get_request_block_hasher
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert block_hasher.install() is False and core.get_request_block_hasher is original

    key = tmp_path / "partition.key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    monkeypatch.setenv(ENV_VAR, EngineProcessEnv(partition_key_file=key).to_env()[ENV_VAR])
    monkeypatch.setattr(core, "get_request_block_hasher", original)
    assert block_hasher.install() is True
    hasher = core.get_request_block_hasher(BS, None)
    req = Request("x", PROMPT, SamplingParams(max_tokens=1), None, cache_salt=_tag(KA), block_hasher=hasher)
    assert len(req.block_hashes) == 5 and all(len(h) == 32 for h in req.block_hashes)


def test_an_unreadable_key_file_stops_the_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import vllm.v1.engine.core as core

    from bastion.errors import ConfigError

    monkeypatch.setattr(core, "get_request_block_hasher", core.get_request_block_hasher)
    monkeypatch.setenv(ENV_VAR, EngineProcessEnv(partition_key_file=tmp_path / "missing.key").to_env()[ENV_VAR])
    with pytest.raises(ConfigError, match="partition_key_file"):
        block_hasher.install()


def test_keyer_takes_lists_and_u32_arrays_alike_and_refuses_bad_ids() -> None:
    from array import array

    from bastion.errors import InvalidArgument

    k, tenant = BlockKeyer(b"k" * 32), b"t" * 32
    ids = list(range(40_000, 40_064))
    assert k.chain(None, ids, BS, 0, tenant) == k.chain(None, array("I", ids), BS, 0, tenant)
    assert k.block_key(None, ids[:BS], tenant) == k.block_key(None, array("I", ids[:BS]), tenant)
    for bad in ([1, -2], [2**32], ["x"], array("d", [1.0])):
        with pytest.raises(InvalidArgument, match="tokens"):
            k.chain(None, bad, BS, 0, tenant)
    with pytest.raises(InvalidArgument, match="block_size"):
        k.chain(None, ids, 0, 0, tenant)
    with pytest.raises(InvalidArgument, match="tenant_key: must be exactly 32 bytes"):
        k.chain(None, ids, BS, 0, b"short")
