"""`bastion audit verify` / `keygen` as an operator runs them: each kind of tampering is found and named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from audit_util import public_key, segments, settings

from bastion.audit import AuditLog
from bastion.cli.main import main


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Runs ``bastion`` exactly as an operator does (errors through the one CLI table, bastion.cli.errors)."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A closed log: start, checkpoint, 20 requests each signed by its own group commit's checkpoint, stop,
    checkpoint."""
    tmp = tmp_path_factory.mktemp("log")
    log = AuditLog.open(settings(tmp, checkpoint_every_records=5), tmp)
    for i in range(20):
        log.append_sync("request", {"request_id": f"r{i:02}", "tenant": "acme", "prompt_tokens": i})
    log.close()
    return log.directory


@pytest.fixture()
def logdir(pristine: Path, tmp_path: Path) -> Path:
    d = tmp_path / "copy"
    shutil.copytree(pristine, d)
    return d


def lines(d: Path) -> list[bytes]:
    return segments(d)[0].read_bytes().splitlines(keepends=True)


def rewrite(d: Path, new: list[bytes]) -> None:
    segments(d)[0].write_bytes(b"".join(new))


def verify_args(d: Path, *extra: str) -> list[str]:
    return ["audit", "verify", str(d), "--public-key", str(public_key(d)), *extra]


def test_intact_log_passes(logdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, *verify_args(logdir, "--witness", str(logdir / "witness.json")))
    n = len(lines(logdir))
    assert code == 0, err
    assert out.startswith(f"OK {logdir}: {n} records verified in 1 segments")
    assert f"last checkpoint seq {n - 1}" in out and "witness: checkpoint seq" in out and "warning" not in out
    code, out, _ = cli(capsys, *verify_args(logdir, "--json"))
    report = json.loads(out)
    assert code == 0 and report["ok"] and report["records"] == n and report["problem"] is None


def _problem(capsys: pytest.CaptureFixture[str], d: Path, *extra: str) -> str:
    code, out, err = cli(capsys, *verify_args(d, *extra))
    assert code == 1, (out, err)
    assert out.startswith("FAILED")
    assert err.count("\n") == 1 and err.startswith("bastion audit verify: audit-00000000.jsonl line ")
    return err


def test_modified_record(logdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ls = lines(logdir)
    i = next(n for n, line in enumerate(ls) if b'"r07"' in line)
    ls[i] = ls[i].replace(b'"r07"', b'"r08"')
    rewrite(logdir, ls)
    err = _problem(capsys, logdir)
    assert f"line {i + 1} (seq {i}): hash does not match the record (record modified)" in err


def test_deleted_record(logdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ls = lines(logdir)
    del ls[6]
    rewrite(logdir, ls)
    err = _problem(capsys, logdir)
    assert "line 7 (seq 7): seq 7 where 6 was expected: records missing (deleted)" in err


def test_inserted_record(logdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ls = lines(logdir)
    ls.insert(9, ls[4])
    rewrite(logdir, ls)
    err = _problem(capsys, logdir)
    assert "line 10 (seq 4): seq 4 where 9 was expected: record duplicated, inserted or reordered" in err


def test_swapped_records(logdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ls = lines(logdir)
    ls[3], ls[4] = ls[4], ls[3]
    rewrite(logdir, ls)
    err = _problem(capsys, logdir)
    assert "line 4 (seq 4): seq 4 where 3 was expected" in err


def test_truncated_tail_is_caught_only_with_the_witness(logdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ls = lines(logdir)
    checkpoints = [i for i, line in enumerate(ls) if b'"kind":"checkpoint"' in line]
    keep = checkpoints[-2] + 1  # cut back to the checkpoint before the witnessed (last) one
    rewrite(logdir, ls[:keep])
    code, out, err = cli(capsys, *verify_args(logdir))
    assert code == 0, err  # on its own the cut log is a valid, shorter log
    err = _problem(capsys, logdir, "--witness", str(logdir / "witness.json"))
    want = f"line {keep + 1} (seq {keep}): log truncated: checkpoint seq {len(ls) - 1} from the witness is missing"
    assert want in err


def test_unsigned_tail_is_a_warning(logdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ls = lines(logdir)
    checkpoints = [i for i, line in enumerate(ls) if b'"kind":"checkpoint"' in line]
    rewrite(logdir, ls[: checkpoints[2] + 2])
    code, out, _ = cli(capsys, *verify_args(logdir))
    assert code == 0
    assert "warning: 1 records after the last checkpoint are not signed yet" in out


def test_wrong_public_key_and_missing_files(logdir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, _ = cli(capsys, "audit", "keygen", str(tmp_path / "other"))
    assert code == 0
    code, _, err = cli(capsys, "audit", "verify", str(logdir), "--public-key", str(tmp_path / "other" / "signing.pub"))
    assert code == 1 and "checkpoint signed by another key" in err
    code, _, err = cli(capsys, "audit", "verify", str(logdir), "--public-key", str(tmp_path / "absent.pub"))
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    code, _, err = cli(capsys, *verify_args(logdir, "--witness", str(tmp_path / "absent.json")))
    assert code == 2 and "witness file" in err
    code, _, err = cli(capsys, "audit", "verify", str(tmp_path / "nodir"), "--public-key", str(public_key(logdir)))
    assert code == 2 and "not a directory" in err


def test_keygen_creates_keys_and_never_overwrites(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "keys"
    code, out, err = cli(capsys, "audit", "keygen", str(d))
    assert code == 0, err
    assert "key id ed25519:" in out
    assert (d / "signing.pub").read_text().startswith("ed25519:")
    assert (d / "signing.pk8").stat().st_mode & 0o777 == 0o600
    assert (d / "content.key").stat().st_size == 32
    before = (d / "signing.pk8").read_bytes()
    code, _, err = cli(capsys, "audit", "keygen", str(d))
    assert code == 2 and "never overwrites" in err
    assert (d / "signing.pk8").read_bytes() == before


LEGACY = Path(__file__).parent / "fixtures" / "legacy-v1"


def test_a_log_written_before_per_batch_signing_still_verifies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A committed log written by the writer of issue 4 (a checkpoint every 50 records, three segments,
    two server runs) verifies with today's `bastion audit verify`, witness included."""
    d = tmp_path / "log"
    shutil.copytree(LEGACY / "log", d)
    d.chmod(0o700)
    rc, out, err = cli(
        capsys,
        "audit",
        "verify",
        str(d),
        "--public-key",
        str(LEGACY / "signing.pub"),
        "--witness",
        str(LEGACY / "witness.json"),
    )
    assert rc == 0, err
    assert "364 records verified in 3 segments" in out and "checkpoint seq 363 is present and matches" in out
