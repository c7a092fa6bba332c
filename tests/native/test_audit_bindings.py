"""The audit bindings' contract: bastion.errors classes, field-naming refusals, keys that stay in Rust."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bastion import _native as n
from bastion.errors import ConfigError, IntegrityError, InvalidArgument, NativeIOError

NOW = 1_700_000_000_000


@pytest.fixture()
def keys(tmp_path: Path) -> dict[str, Path]:
    k = {"signing": tmp_path / "s.pk8", "public": tmp_path / "s.pub", "content": tmp_path / "c.key"}
    n.audit_keygen(k["signing"], k["public"], k["content"])
    return k


def test_keygen_and_key_ids(keys: dict[str, Path]) -> None:
    sk = n.AuditSigningKey.from_file(keys["signing"])
    assert sk.key_id.startswith("ed25519:") and len(sk.key_id) == 8 + 32
    assert n.AuditPublicKey.from_file(keys["public"]).key_id == sk.key_id
    assert oct(keys["signing"].stat().st_mode & 0o777) == oct(0o600)
    with pytest.raises(NativeIOError):
        n.audit_keygen(keys["signing"], keys["public"], keys["content"])  # never overwrites
    assert not hasattr(sk, "to_bytes") and "ed25519" not in repr(sk).lower()


def test_key_files_are_checked(keys: dict[str, Path], tmp_path: Path) -> None:
    keys["signing"].chmod(0o644)
    with pytest.raises(ConfigError) as e:
        n.AuditSigningKey.from_file(keys["signing"])
    assert "0644" in str(e.value) and e.value.public_message == "invalid configuration"
    with pytest.raises(NativeIOError):
        n.AuditContentKey.from_file(tmp_path / "absent")
    link = tmp_path / "link"
    os.symlink(keys["content"], link)
    with pytest.raises(IntegrityError):
        n.AuditContentKey.from_file(link)
    with pytest.raises(ConfigError):
        n.AuditPublicKey.from_file(keys["content"])  # not `ed25519:<hex>`


def test_content_mac_is_per_tenant(keys: dict[str, Path]) -> None:
    ck = n.AuditContentKey.from_file(keys["content"])
    a = ck.mac_for("acme", b"hello")
    assert a.startswith("hmac-sha256:") and len(a) == 12 + 64
    assert a == ck.mac_for("acme", b"hello")
    assert a != ck.mac_for("globex", b"hello")
    big = b"x" * (1 << 20)  # takes the GIL-released path
    assert ck.mac_for("acme", big) == ck.mac_for("acme", bytes(big))
    with pytest.raises(TypeError):
        ck.mac_for("acme", "text")


def test_chain_seals_and_refuses_bad_fields_by_name(tmp_path: Path, keys: dict[str, Path]) -> None:
    d = tmp_path / "log"
    d.mkdir()
    chain, info = n.AuditChain.recover(d)
    assert info == {"fresh": True, "segment": 0, "segment_len": 0, "truncated": 0}
    assert len(chain.log_id) == 32 and chain.next_seq == 0
    seq, start = chain.seal("start", b'{"version":"t"}', NOW)
    assert seq == 0 and start.endswith(b"\n")
    for kind, fields, field, named in [
        ("request", b'{"prompt":"the secret"}', "fields", "unknown field prompt"),
        ("request", '{"latency_ms":"slow"}', "fields", "latency_ms"),
        ("request", b'{"seq":9}', "fields", "seq"),
        ("request", b"[]", "fields", "JSON object"),
        ("checkpoint", b"{}", "kind", "request, decision, start, stop"),
    ]:
        with pytest.raises(InvalidArgument) as e:
            chain.seal(kind, fields, NOW)
        assert e.value.field == field and named in str(e.value) and "secret" not in str(e.value)
    with pytest.raises(InvalidArgument):
        chain.seal("request", 5, NOW)
    assert chain.next_seq == 1  # refusals change nothing
    seq, line = chain.seal("request", '{"request_id":"r1","prompt_tokens":3}', NOW + 1)
    assert seq == 1 and chain.since_checkpoint == 2
    cp_seq, cp_hash, cp = chain.checkpoint(n.AuditSigningKey.from_file(keys["signing"]), NOW + 2)
    assert (cp_seq, len(cp_hash), chain.since_checkpoint) == (2, 64, 0)
    (d / n.audit_segment_name(0)).write_bytes(start + line + cp)

    r = n.audit_verify_dir(d, keys["public"], cp_seq, cp_hash)
    assert r["problem"] is None
    assert (r["records"], r["last_seq"], r["last_hash"], r["last_checkpoint"], r["log_id"]) == (
        3,
        2,
        cp_hash,
        2,
        chain.log_id,
    )
    bad = n.audit_verify_dir(d, keys["public"], 2, "0" * 64)["problem"]
    reason = "checkpoint seq 2 from the witness differs (log rewritten, or the witness is of another log)"
    assert bad == {"segment": "audit-00000000.jsonl", "line": 3, "seq": 2, "reason": reason}
    with pytest.raises(InvalidArgument) as e:
        n.audit_verify_dir(d, keys["public"], 2)
    assert e.value.field == "witness"
    with pytest.raises(InvalidArgument) as e:
        n.audit_verify_dir(d, keys["public"], 2, "XYZ")
    assert e.value.field == "witness_hash"

    again, info = n.AuditChain.recover(d)
    assert (again.log_id, again.next_seq, info["fresh"], info["segment_len"]) == (
        chain.log_id,
        3,
        False,
        len(start + line + cp),
    )


def test_recover_refuses_a_log_not_starting_with_a_start_record(tmp_path: Path) -> None:
    d = tmp_path / "log"
    d.mkdir()
    chain, _ = n.AuditChain.recover(d)
    chain.seal("start", b"{}", NOW)
    _, line = chain.seal("request", b"{}", NOW)
    (d / n.audit_segment_name(0)).write_bytes(line)
    with pytest.raises(IntegrityError):
        n.AuditChain.recover(d)
    assert n.audit_segment_name(12) == "audit-00000012.jsonl"
