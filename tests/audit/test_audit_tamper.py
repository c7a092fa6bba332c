"""Red-team (issue 14, part 1): the audit log rewritten across a restart must not verify.

The attacker can write the log directory but holds neither the signing key nor the witness (both kept
elsewhere: the recommended deployment). Each test is one attack; each failed on the writer of issue 4.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
from audit_util import records, segments, settings

from bastion.audit import AuditLog, AuditSettings
from bastion.audit.files import Witness, write_witness
from bastion.audit.verifier import verify
from bastion.errors import IntegrityError
from bastion.native import AuditChain, audit_keygen

FIELDS = {"request_id": "r", "principal": "apikey:k", "tenant": "t", "method": "/m", "status": "OK"}


def _outside(tmp: Path, **kw: object) -> AuditSettings:
    """Keys and witness outside the log directory (the recommended deployment)."""
    keys = tmp / "keys"
    if not keys.exists():
        keys.mkdir(mode=0o700)
        audit_keygen(keys / "signing.pk8", keys / "signing.pub", keys / "content.key")
    return settings(
        tmp,
        signing_key_file=keys / "signing.pk8",
        public_key_file=keys / "signing.pub",
        content_key_file=keys / "content.key",
        witness_file=tmp / "witness" / "witness.json",
        **kw,
    )


def _write(s: AuditSettings, tmp: Path, n: int) -> None:
    (tmp / "witness").mkdir(exist_ok=True)
    log = AuditLog.open(s, tmp)
    for i in range(n):
        log.append_sync("request", {**FIELDS, "request_id": f"r{i}"})
    log.close()


def _forge_tail(log_dir: Path, extra: int) -> None:
    """What the attacker can do without the key: continue the chain from its last record with `seal`."""
    chain, info = AuditChain.recover(log_dir)
    seg = log_dir / f"audit-{info['segment']:08d}.jsonl"
    with seg.open("ab") as f:
        for i in range(extra):
            _, line = chain.seal("request", json.dumps({**FIELDS, "request_id": f"forged{i}"}).encode(), 1)
            f.write(line)


def _cut_after_checkpoint(log_dir: Path, keep_seq: int) -> None:
    """Keep every record up to the signed checkpoint at ``keep_seq``; drop the rest."""
    for seg in segments(log_dir):
        kept = []
        for line in seg.read_bytes().splitlines(keepends=True):
            if json.loads(line)["seq"] <= keep_seq:
                kept.append(line)
        seg.write_bytes(b"".join(kept))


def test_a_forged_tail_past_the_witness_refuses_the_start(tmp_path: Path) -> None:
    """Keep a prefix that ends in a signed checkpoint, drop the rest, append records made with
    AuditChain.recover + seal until past the witnessed seq: the next start must refuse, not sign over it."""
    s = _outside(tmp_path)
    _write(s, tmp_path, 30)
    log_dir = tmp_path / "audit"
    witnessed = json.loads(s.witness_file.read_text())["seq"]  # type: ignore[union-attr]
    first_checkpoint = next(r["seq"] for r in records(log_dir) if r["kind"] == "checkpoint")
    _cut_after_checkpoint(log_dir, first_checkpoint)
    _forge_tail(log_dir, witnessed - first_checkpoint + 5)
    with pytest.raises(IntegrityError, match="witness|unsigned"):
        AuditLog.open(s, tmp_path)
    # Nothing was signed over the forgery, and the witness still names the genuine checkpoint.
    assert json.loads(s.witness_file.read_text())["seq"] == witnessed  # type: ignore[union-attr]
    assert not verify(log_dir, s.public_key_file, s.witness_file).ok  # type: ignore[arg-type]


def test_a_deleted_witness_and_a_truncated_log_refuse_the_start(tmp_path: Path) -> None:
    """Deleting the witness and truncating the log back to an early checkpoint must not pass."""
    s = _outside(tmp_path)
    _write(s, tmp_path, 30)
    log_dir = tmp_path / "audit"
    first_checkpoint = next(r["seq"] for r in records(log_dir) if r["kind"] == "checkpoint")
    _cut_after_checkpoint(log_dir, first_checkpoint)
    s.witness_file.unlink()  # type: ignore[union-attr]
    with pytest.raises(IntegrityError, match="witness"):
        AuditLog.open(s, tmp_path)


def test_a_witness_whose_hash_differs_refuses_the_start(tmp_path: Path) -> None:
    """The record at the witness's seq must carry the witness's hash (not just exist)."""
    s = _outside(tmp_path)
    _write(s, tmp_path, 5)
    w = json.loads(s.witness_file.read_text())  # type: ignore[union-attr]
    write_witness(s.witness_file, Witness(w["log_id"], w["seq"], "00" * 32))  # type: ignore[arg-type]
    with pytest.raises(IntegrityError, match="witness"):
        AuditLog.open(s, tmp_path)


def test_an_unsigned_tail_is_never_signed_over(tmp_path: Path) -> None:
    """Records appended after the last checkpoint (not past the witness) are not adopted either."""
    s = _outside(tmp_path)
    _write(s, tmp_path, 5)
    _forge_tail(tmp_path / "audit", 2)
    with pytest.raises(IntegrityError, match="unsigned"):
        AuditLog.open(s, tmp_path)


async def test_every_acknowledged_record_is_signed(tmp_path: Path) -> None:
    """No acknowledged record sits in a forgeable tail: each group commit ends with a signed checkpoint,
    whatever checkpoint_every_records and checkpoint_every_s say (they pace the witness)."""
    s = _outside(tmp_path, checkpoint_every_records=1000, checkpoint_every_s=3600)
    (tmp_path / "witness").mkdir()
    log = AuditLog.open(s, tmp_path)
    try:
        for i in range(3):
            await log.append("request", {**FIELDS, "request_id": f"r{i}"})
            r = verify(log.directory, s.public_key_file)  # type: ignore[arg-type]
            assert r.ok and r.unsigned_tail == 0, r
    finally:
        await log.aclose()


def test_the_witness_is_never_overwritten_by_a_log_that_does_not_extend_it(tmp_path: Path) -> None:
    """A witness for another log (or an older seq) is refused, the file left as it was."""
    s = _outside(tmp_path)
    _write(s, tmp_path, 3)
    before = s.witness_file.read_bytes()  # type: ignore[union-attr]
    other = tmp_path / "other"
    shutil.copytree(tmp_path / "audit", other)
    shutil.rmtree(tmp_path / "audit")
    # A fresh, empty log directory must not take over the witness of the deleted one.
    with pytest.raises(IntegrityError, match="witness"):
        AuditLog.open(s, tmp_path)
    assert s.witness_file.read_bytes() == before  # type: ignore[union-attr]


@pytest.mark.parametrize("inside", ["signing key", "witness"])
def test_keys_or_witness_inside_the_log_directory_warn(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, inside: str
) -> None:
    """The defaults (everything under the log directory) work but are not tamper-evident: say so."""
    s = settings(tmp_path) if inside == "signing key" else _outside(tmp_path).model_copy(update={"witness_file": None})
    with caplog.at_level(logging.WARNING, logger="bastion.audit.log"):
        AuditLog.open(s, tmp_path).close()
    assert any(inside in r.getMessage() and "audit directory" in r.getMessage() for r in caplog.records)


def test_the_operator_resumes_after_a_refusal_and_the_reset_is_audited(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The documented procedure: `bastion audit resume --reason` verifies the whole log, moves the unsigned
    records aside (kept, not deleted), and continues with a start record that names the reset."""
    from bastion.cli.main import main

    s = _outside(tmp_path)
    _write(s, tmp_path, 4)
    _forge_tail(tmp_path / "audit", 3)
    with pytest.raises(IntegrityError, match="bastion audit resume"):
        AuditLog.open(s, tmp_path)
    config = tmp_path / "bastion.toml"
    config.write_text(
        f'cache_dir = "{tmp_path}"\n[audit]\n'
        + "".join(f'{k} = "{v}"\n' for k, v in s.model_dump(exclude_none=True).items() if isinstance(v, Path))
    )
    assert main(["audit", "resume", "--config", str(config), "--reason", "INC-42: forged tail set aside"]) == 0, (
        capsys.readouterr().err
    )
    (side,) = (tmp_path / "audit").glob("unsigned-*.jsonl")
    assert [json.loads(x)["request_id"] for x in side.read_bytes().splitlines()] == ["forged0", "forged1", "forged2"]
    starts = [r for r in records(tmp_path / "audit") if r["kind"] == "start"]
    assert starts[-1]["event"] == "witness_reset" and starts[-1]["reason"].startswith("INC-42")
    assert starts[-1]["records"] == 3
    r = verify(tmp_path / "audit", s.public_key_file, s.witness_file)  # type: ignore[arg-type]
    assert r.ok and r.unsigned_tail == 0, r.problem_line()
    AuditLog.open(s, tmp_path).close()  # and the server starts normally again


def test_a_rotated_log_restarts_reading_only_from_the_witnessed_segment(tmp_path: Path) -> None:
    """Across segments: the start check anchors at the segment holding the witnessed checkpoint, verifies
    from there (links, signatures, the witness's hash), and refuses a record modified after the anchor."""
    s = _outside(tmp_path, segment_max_bytes=64 * 1024)
    (tmp_path / "witness").mkdir()
    log = AuditLog.open(s, tmp_path)
    for i in range(400):
        log.append_sync("request", {**FIELDS, "request_id": f"r{i}", "reason": "x" * 300})
    log.close()
    segs = segments(tmp_path / "audit")
    assert len(segs) >= 3
    AuditLog.open(s, tmp_path).close()  # an intact rotated log continues
    last = segments(tmp_path / "audit")[-1]
    lines = last.read_bytes().splitlines(keepends=True)
    mid = len(lines) // 2
    lines[mid] = lines[mid].replace(b'"r', b'"R', 1)
    last.write_bytes(b"".join(lines))
    with pytest.raises(IntegrityError, match="does not extend its witness"):
        AuditLog.open(s, tmp_path)
