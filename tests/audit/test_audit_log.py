"""The audit-log writer: durable, ordered, checkpointed, rotated, and failing closed."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import time
from pathlib import Path

import pytest
from audit_util import public_key, records, segments, settings

from bastion.audit import AuditLog, AuditSettings, AuditUnavailable, verify
from bastion.audit import files as audit_files
from bastion.errors import ConfigError, IntegrityError, InvalidArgument, Unavailable


async def test_records_verify_after_close_and_the_chain_continues(tmp_path: Path) -> None:
    log = AuditLog.open(settings(tmp_path), tmp_path)
    hmac = log.content_hmac("acme", "what is the secret?")
    seqs = [
        await log.append("request", {"request_id": f"r{i}", "tenant": "acme", "prompt_tokens": i, "prompt_hmac": hmac})
        for i in range(5)
    ]
    seqs.append(await log.append("decision", {"request_id": "d", "decision": "deny", "event": "rate_limited"}))
    await log.aclose()
    d = log.directory
    # 0: start, 1: the opening checkpoint; then each awaited record is signed by its own group commit.
    assert seqs == list(range(2, 14, 2))
    recs = records(d)
    kinds = ["start"] + ["request"] * 5 + ["decision", "stop"]
    assert [r["kind"] for r in recs if r["kind"] != "checkpoint"] == kinds
    assert all(recs[s + 1]["kind"] == "checkpoint" for s in seqs)
    assert recs[0]["version"] and "recovered_bytes" not in recs[0]
    assert all("secret" not in json.dumps(r) for r in recs)
    assert recs[2]["prompt_hmac"] == hmac and hmac != log.content_hmac("globex", "what is the secret?")
    r = verify(d, public_key(d), d / "witness.json")
    assert r.ok, r.problem_line()
    assert (r.records, r.last_checkpoint, r.unsigned_tail) == (16, 15, 0)
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert stat.S_IMODE(segments(d)[0].stat().st_mode) == 0o600
    assert stat.S_IMODE((d / "witness.json").stat().st_mode) == 0o600

    again = AuditLog.open(settings(tmp_path), tmp_path)
    assert again.log_id == log.log_id
    assert await again.append("request", {"request_id": "after restart"}) == 18
    again.close()
    r = verify(d, public_key(d), d / "witness.json")
    assert r.ok, r.problem_line()
    assert r.records == 22 and r.witness is not None and r.witness.seq == 21


async def test_concurrent_appends_keep_order_and_count_in_few_fsyncs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    syncs = 0
    real = audit_files._SYNC

    def counting(fd: int) -> None:
        nonlocal syncs
        syncs += 1
        real(fd)

    monkeypatch.setattr(audit_files, "_SYNC", counting)
    log = AuditLog.open(settings(tmp_path, checkpoint_every_records=100_000), tmp_path)
    got: dict[str, int] = {}

    async def worker(w: int) -> list[int]:
        mine = []
        for i in range(40):
            rid = f"w{w}-{i}"
            got[rid] = await log.append("request", {"request_id": rid})
            mine.append(got[rid])
        return mine

    per_task = await asyncio.gather(*(worker(w) for w in range(50)))
    log.close()
    assert len(got) == 2000 and len(set(got.values())) == 2000 and min(got.values()) == 2
    assert all(a < b for mine in per_task for a, b in zip(mine, mine[1:], strict=False))
    on_disk = {r["request_id"]: r["seq"] for r in records(log.directory) if r["kind"] == "request"}
    assert on_disk == got
    # Group commit: many records per write + fsync.
    assert syncs < 2000 / 4, syncs
    assert verify(log.directory, public_key(log.directory)).ok


async def test_the_latest_checkpoint_covers_a_record_as_soon_as_its_append_returns(tmp_path: Path) -> None:
    """What a replica's join report carries (bastion.cluster.node_audit): read right after the append, never
    the checkpoint before it; and it is one the verifier finds as a witness."""
    log = AuditLog.open(settings(tmp_path, checkpoint_every_records=1000, checkpoint_every_s=3600), tmp_path)
    for i in range(20):
        seq = await log.append("decision", {"event": "model_loaded", "decision": "verified", "model": f"m{i}"})
        w = log.latest_checkpoint
        assert w is not None and w.seq > seq and w.log_id == log.log_id
    log.close()
    assert verify(log.directory, public_key(log.directory), None).ok
    assert audit_files.read_witness(log.witness_path).seq >= w.seq


async def test_rotation_produces_segments_that_verify(tmp_path: Path) -> None:
    s = settings(tmp_path, segment_max_bytes=64 * 1024)
    log = AuditLog.open(s, tmp_path)
    for i in range(500):
        await log.append("request", {"request_id": f"r{i}", "reason": "x" * 300})
    log.close()
    segs = segments(log.directory)
    assert len(segs) >= 3
    for seg in segs[:-1]:
        assert seg.stat().st_size < 64 * 1024 + 2 * 1024
        assert json.loads(seg.read_bytes().splitlines()[-1])["kind"] == "checkpoint"
    r = verify(log.directory, public_key(log.directory), log.witness_path)
    assert r.ok, r.problem_line()
    assert r.segments == [p.name for p in segs]
    assert sum(1 for x in records(log.directory) if x["kind"] == "request") == 500


async def test_the_witness_follows_every_n_records(tmp_path: Path) -> None:
    """Every group commit is signed; the witness (another fsynced file) is replaced every N records."""
    log = AuditLog.open(settings(tmp_path, checkpoint_every_records=10, commit_max_delay_ms=0), tmp_path)
    seqs = [await log.append("request", {"request_id": f"r{i}"}) for i in range(35)]
    kinds = [r["kind"] for r in records(log.directory)]
    assert kinds.count("checkpoint") == 1 + 35
    # The 30th request's checkpoint is the last one witnessed; the last 5 wait for the witness's pace.
    assert json.loads(log.witness_path.read_text())["seq"] == seqs[29] + 1
    log.close()
    assert json.loads(log.witness_path.read_text())["seq"] == max(r["seq"] for r in records(log.directory))


async def test_the_witness_follows_after_t_seconds_when_idle(tmp_path: Path) -> None:
    log = AuditLog.open(settings(tmp_path, checkpoint_every_s=0.2), tmp_path)
    seq = await log.append("request", {"request_id": "lonely"})
    recs = records(log.directory)
    assert recs[-1]["kind"] == "checkpoint" and recs[-1]["seq"] == seq + 1  # signed before it was acknowledged
    await asyncio.sleep(0.7)
    assert json.loads(log.witness_path.read_text())["seq"] == seq + 1
    log.close()


def _break_write(log: AuditLog, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    if how == "write":  # EPIPE on the next write: the segment's descriptor now is a pipe nobody reads
        r, w = os.pipe()
        os.close(r)
        os.dup2(w, log._fd)
        os.close(w)
    else:  # fsync reports EIO

        def eio(fd: int) -> None:
            raise OSError(5, "Input/output error")

        monkeypatch.setattr(audit_files, "_SYNC", eio)


@pytest.mark.parametrize("how", ["write", "fsync"])
async def test_write_failure_fails_closed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    calls: list[int] = []
    log = AuditLog.open(settings(tmp_path), tmp_path, on_failure=lambda: calls.append(1))
    assert await log.append("request", {"request_id": "before"}) == 2
    _break_write(log, monkeypatch, how)
    results = await asyncio.gather(
        *(log.append("request", {"request_id": f"r{i}"}) for i in range(20)), return_exceptions=True
    )
    assert all(isinstance(r, AuditUnavailable) for r in results), results
    err = results[0]
    assert isinstance(err, Unavailable) and err.public_message == "audit log unavailable"
    with pytest.raises(AuditUnavailable):
        await log.append("request", {"request_id": "after"})
    with pytest.raises(AuditUnavailable):
        log.append_sync("request", {"request_id": "after"})
    assert calls == [1] and log.failed
    log.close()
    monkeypatch.undo()
    # What was acknowledged is still there and the log still verifies (a torn tail is cut on restart).
    AuditLog.open(settings(tmp_path), tmp_path).close()
    assert "before" in {r.get("request_id") for r in records(log.directory)}
    assert verify(log.directory, public_key(log.directory), log.witness_path).ok


async def test_bad_fields_are_refused_and_the_log_goes_on(tmp_path: Path) -> None:
    log = AuditLog.open(settings(tmp_path), tmp_path)
    with pytest.raises(InvalidArgument) as e:
        await log.append("request", {"prompt": "top secret text"})
    assert e.value.field == "fields" and "prompt" in str(e.value) and "secret" not in str(e.value)
    with pytest.raises(InvalidArgument) as e:
        await log.append("request", {"latency_ms": -1})
    assert "latency_ms" in str(e.value)
    with pytest.raises(InvalidArgument):
        await log.append("request", {"request_id": object()})
    with pytest.raises(InvalidArgument) as e:
        await log.append("checkpoint", {})
    assert e.value.field == "kind"
    assert await log.append("request", {"request_id": "ok"}) == 2
    log.close()
    assert verify(log.directory, public_key(log.directory)).ok


def test_torn_tail_is_cut_and_noted_in_the_start_record(tmp_path: Path) -> None:
    log = AuditLog.open(settings(tmp_path), tmp_path)
    log.append_sync("request", {"request_id": "r"})
    log.close()
    with segments(log.directory)[-1].open("ab") as f:
        f.write(b'{"hash":"0123')
    again = AuditLog.open(settings(tmp_path), tmp_path)
    again.close()
    starts = [r for r in records(log.directory) if r["kind"] == "start"]
    assert [s.get("recovered_bytes") for s in starts] == [None, 13]
    assert verify(log.directory, public_key(log.directory), log.witness_path).ok


def test_restart_refuses_a_log_truncated_or_replaced_behind_its_witness(tmp_path: Path) -> None:
    log = AuditLog.open(settings(tmp_path), tmp_path)
    for i in range(5):
        log.append_sync("request", {"request_id": f"r{i}"})
    log.close()
    seg = segments(log.directory)[0]
    lines = seg.read_bytes().splitlines(keepends=True)
    seg.write_bytes(b"".join(lines[:4]))
    with pytest.raises(IntegrityError, match="does not extend its witness: .*from the witness is missing"):
        AuditLog.open(settings(tmp_path), tmp_path)
    seg.unlink()
    with pytest.raises(IntegrityError, match="holds no log"):
        AuditLog.open(settings(tmp_path), tmp_path)


def test_keys_are_generated_once_and_checked(tmp_path: Path) -> None:
    AuditLog.open(settings(tmp_path), tmp_path).close()
    keys = tmp_path / "audit" / "keys"
    assert {p.name for p in keys.iterdir()} == {"signing.pk8", "signing.pub", "content.key"}
    assert stat.S_IMODE((keys / "signing.pk8").stat().st_mode) == 0o600
    # A key that is configured must exist: nothing is generated for it.
    with pytest.raises(ConfigError, match="audit.signing_key_file"):
        AuditLog.open(settings(tmp_path, signing_key_file=tmp_path / "absent.pk8"), tmp_path)
    # The public key must belong to the signing key.
    other = tmp_path / "other"
    from bastion.audit import keygen

    keygen(other)
    with pytest.raises(ConfigError, match="is not the public key"):
        AuditLog.open(settings(tmp_path, public_key_file=other / "signing.pub"), tmp_path)
    # One default key missing (the others present) is not silently replaced.
    (keys / "content.key").unlink()
    with pytest.raises(ConfigError, match="content_key_file"):
        AuditLog.open(settings(tmp_path), tmp_path)


def test_directory_open_to_others_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "audit"
    d.mkdir(mode=0o755)
    d.chmod(0o755)
    with pytest.raises(ConfigError, match="must be 0700"):
        AuditLog.open(settings(tmp_path), tmp_path)


def test_settings_defaults_and_bounds(tmp_path: Path) -> None:
    s = AuditSettings()
    assert (s.segment_max_bytes, s.checkpoint_every_records, s.checkpoint_every_s, s.commit_max_delay_ms) == (
        64 << 20,
        1000,
        10.0,
        0.0,  # natural group commit: no call waits for company that is not coming
    )
    assert s.resolved_dir(tmp_path) == tmp_path / "audit"
    assert s.resolved_witness(tmp_path / "audit") == tmp_path / "audit" / "witness.json"
    for bad in (
        {"commit_max_delay_ms": 101},
        {"segment_max_bytes": 1024},
        {"checkpoint_every_records": 0},
        {"checkpoint_every_s": 0},
        {"unknown": 1},
    ):
        with pytest.raises(ValueError):
            AuditSettings(**bad)
    with pytest.raises(ValueError):
        s.dir = tmp_path


async def test_cancelled_caller_does_not_withdraw_its_record(tmp_path: Path) -> None:
    log = AuditLog.open(settings(tmp_path, commit_max_delay_ms=50), tmp_path)
    task = asyncio.create_task(log.append("request", {"request_id": "cancelled"}))
    await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await log.append("request", {"request_id": "next"})
    log.close()
    assert [r["request_id"] for r in records(log.directory) if r["kind"] == "request"] == ["cancelled", "next"]
    time.sleep(0)


async def test_concurrent_records_share_commits_without_a_delay(tmp_path: Path) -> None:
    """With the default (no group-commit delay) the batch is what queued during the previous write and fsync:
    64 concurrent appends must not make 64 commits (each commit ends with its own signed checkpoint)."""
    log = AuditLog.open(settings(tmp_path), tmp_path)
    seqs = await asyncio.gather(*(log.append("request", {"request_id": f"r{i}"}) for i in range(64)))
    await log.aclose()
    kinds = [r["kind"] for r in records(log.directory)]
    assert kinds.count("request") == 64 and len(set(seqs)) == 64
    commits = kinds.count("checkpoint") - 1  # less the opening one
    assert 1 <= commits <= 32, commits
