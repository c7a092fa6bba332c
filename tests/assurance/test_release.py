"""bastion.assurance.release, the go-live gate's decisions (red-team finding "the go-live gate releases what
was never approved", issue 14): which attestation releases a bare model (a) and an adapter, the newest verdict
per digest and suite (b), the pinned gate policies (c), quarantine re-derived from the audit log (4), and
attestation files that are FIFOs, symlinks or oversized (5)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import resource
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from attest_util import GATE, LEAKY, signed_attestation
from bastion.assurance.attestation import MAX_ENVELOPE_BYTES
from bastion.assurance.gate import decide, load_gate_policy, parse_gate_policy
from bastion.assurance.release import EVALUATION_ONLY, QUARANTINED, RELEASED, ReleaseBook
from bastion.assurance.settings import AssuranceSettings
from bastion.assurance.stats import family_figures
from bastion.audit import AuditLog, AuditSettings
from bastion.auth.principal import Principal
from bastion.engine.protocol import ModelInfo
from bastion.errors import IntegrityError
from bastion.server.audit_recorder import AuditRecorder
from bastion.weights.signing import create_signing_key

MODEL = "blake3:" + "ab" * 32
OTHER = "blake3:" + "ef" * 32
ADAPTER = "blake3:" + "cd" * 32
T0 = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)
# A gate policy without families: it passes anything (finding (c)).
EMPTY_POLICY = b"version = 1\n"
ADMIN = Principal(id="api-key:admin", method="api_key", subject="admin")


def _info(adapters: tuple[tuple[str, str], ...] = ()) -> ModelInfo:
    return ModelInfo(
        name="m",
        digest=MODEL,
        max_context=256,
        device="cpu",
        adapters=tuple(a for a, _ in adapters),
        adapter_digests=adapters,
    )


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("keys")
    priv = d / "eval.key"
    return priv, create_signing_key(priv)


def _att(key: Path, *, digest: str = MODEL, finished: datetime = T0, **kw: Any) -> bytes:
    """An attestation of model "m" at ``digest``, evaluated in the five minutes up to ``finished`` (the rest:
    :func:`attest_util.signed_attestation`)."""
    started = finished - timedelta(minutes=5)
    return signed_attestation(key, model_name="m", digest=digest, started=started, finished=finished, **kw)


def _book(tmp: Path, pub: Path, **kw: Any) -> ReleaseBook:
    atts = tmp / "attestations"
    atts.mkdir(parents=True, exist_ok=True)
    settings = AssuranceSettings(
        require_attestation=True,
        attestations_dir=atts,
        trusted_keys=[pub],
        accepted_suites=kw.pop("accepted_suites", ["ci"]),
        **kw,
    )
    return ReleaseBook(settings, tmp)


# ------------------------------------------------------------------------- (a) which subjects count


def test_a_model_and_adapter_attestation_does_not_release_the_bare_model(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    """Finding (a), requirement 1: an attestation of model + adapter (``bastion eval --adapter --parent``)
    evaluated the adapted model; it releases the adapter, never the bare model."""
    priv, pub = keys
    book = _book(tmp_path, pub)
    (book.dir / "adapter.intoto.json").write_bytes(_att(priv, adapters=(("support-v1", ADAPTER),), parent=MODEL))
    book.reload([_info(adapters=(("support-v1", ADAPTER),))])
    assert book.release("m").state == EVALUATION_ONLY
    assert book.adapter_release("m", "support-v1").state == RELEASED  # the adapter keeps its rule
    assert "no attestation for this model digest" in book.release("m").attestation


def test_only_a_model_kind_subject_releases_a_model(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    """Requirement 1: an attestation whose model subject is another artefact does not release this model
    because one of its adapter subjects happens to carry this model's digest."""
    priv, pub = keys
    book = _book(tmp_path, pub)
    (book.dir / "swapped.intoto.json").write_bytes(_att(priv, digest=OTHER, adapters=(("x", MODEL),), parent=OTHER))
    book.reload([_info()])
    assert book.release("m").state == EVALUATION_ONLY
    (book.dir / "bare.intoto.json").write_bytes(_att(priv))
    book.reload([_info()])
    assert book.release("m").state == RELEASED


def test_an_adapter_still_needs_its_parent_as_the_baseline(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    """Requirement 1: adapter releases keep their rule (subjects cover model and adapter, baseline is the
    model); a bare-model attestation releases no adapter."""
    priv, pub = keys
    book = _book(tmp_path, pub)
    info = _info(adapters=(("support-v1", ADAPTER),))
    (book.dir / "bare.intoto.json").write_bytes(_att(priv))
    (book.dir / "unpaired.intoto.json").write_bytes(_att(priv, adapters=(("support-v1", ADAPTER),)))
    (book.dir / "other-parent.intoto.json").write_bytes(_att(priv, adapters=(("support-v1", ADAPTER),), parent=OTHER))
    book.reload([info])
    assert book.release("m").state == RELEASED
    assert book.adapter_release("m", "support-v1").state == EVALUATION_ONLY


# ------------------------------------------------------------------------- (b) the newest verdict decides


def test_a_newer_failed_verdict_withdraws_an_older_pass(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    """Finding (b), requirement 2: a re-evaluation of the same digest on the same suite that FAILED
    withdraws the release an older PASSED attestation gave."""
    priv, pub = keys
    book = _book(tmp_path, pub)
    (book.dir / "a-passed.intoto.json").write_bytes(_att(priv, finished=T0))
    book.reload([_info()])
    assert book.release("m").state == RELEASED
    (book.dir / "b-failed.intoto.json").write_bytes(_att(priv, figures=LEAKY, finished=T0 + timedelta(days=1)))
    book.reload([_info()])
    rel = book.release("m")
    assert rel.state == EVALUATION_ONLY and "FAILED" in rel.attestation


def test_a_newer_pass_after_a_failure_releases(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    """Requirement 2: the newest verdict decides both ways: a later PASSED re-evaluation releases."""
    priv, pub = keys
    book = _book(tmp_path, pub)
    (book.dir / "a-failed.intoto.json").write_bytes(_att(priv, figures=LEAKY, finished=T0))
    (book.dir / "b-passed.intoto.json").write_bytes(_att(priv, finished=T0 + timedelta(hours=1)))
    book.reload([_info()])
    assert book.release("m").state == RELEASED


def test_a_tie_between_passed_and_failed_fails_closed(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    """Requirement 2: equal signed timestamps, one PASSED and one FAILED: FAILED wins (whatever the file
    names' order)."""
    priv, pub = keys
    book = _book(tmp_path, pub)
    (book.dir / "a-passed.intoto.json").write_bytes(_att(priv, finished=T0))
    (book.dir / "b-failed.intoto.json").write_bytes(_att(priv, figures=LEAKY, finished=T0))
    book.reload([_info()])
    assert book.release("m").state == EVALUATION_ONLY


def test_a_failed_newest_verdict_on_any_accepted_suite_withholds_the_release(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    """Requirement 2: the newest verdict is taken per (digest, suite); with two accepted suites, a PASSED
    one does not outvote the other's newest FAILED."""
    priv, pub = keys
    book = _book(tmp_path, pub, accepted_suites=["ci", "production"])
    (book.dir / "ci.intoto.json").write_bytes(_att(priv, finished=T0 + timedelta(days=2)))
    (book.dir / "prod.intoto.json").write_bytes(_att(priv, figures=LEAKY, profile="production", finished=T0))
    book.reload([_info()])
    assert book.release("m").state == EVALUATION_ONLY


def test_a_newer_failed_adapter_verdict_withdraws_the_adapter(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    """Requirement 2 for adapters: the newest model + adapter verdict decides the adapter."""
    priv, pub = keys
    book = _book(tmp_path, pub)
    pair = (("support-v1", ADAPTER),)
    (book.dir / "a.intoto.json").write_bytes(_att(priv, adapters=pair, parent=MODEL, finished=T0))
    (book.dir / "b.intoto.json").write_bytes(
        _att(priv, figures=LEAKY, adapters=pair, parent=MODEL, finished=T0 + timedelta(days=1))
    )
    book.reload([_info(adapters=pair)])
    assert book.adapter_release("m", "support-v1").state == EVALUATION_ONLY


# ------------------------------------------------------------------------- (c) pinned gate policies


def test_an_attestation_under_an_unpinned_gate_policy_releases_nothing(
    tmp_path: Path, keys: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    """Finding (c), requirement 3: an evaluation gated by a policy with no families PASSES anything; its
    signed attestation is refused (logged with the file name and the reason) unless the server pins that
    policy."""
    priv, pub = keys
    empty = parse_gate_policy(EMPTY_POLICY)
    assert decide(family_figures(LEAKY), empty).verdict == "PASSED"  # the gate itself passes it
    book = _book(tmp_path, pub)
    (book.dir / "lax.intoto.json").write_bytes(_att(priv, figures=LEAKY, policy=empty))
    with caplog.at_level(logging.WARNING, logger="bastion.assurance.release"):
        files, rejected = book.reload([_info()])
    assert (files, rejected) == (1, 1)
    assert book.release("m").state == EVALUATION_ONLY
    line = next(r.getMessage() for r in caplog.records if "lax.intoto.json" in r.getMessage())
    assert "gate policy" in line and "not pinned" in line and empty.digest in line

    # An operator who pins that policy deliberately gets what it says.
    pinned = _book(tmp_path / "pinned", pub, accepted_gate_policies=[empty.digest])
    (pinned.dir / "lax.intoto.json").write_bytes(_att(priv, figures=LEAKY, policy=empty))
    assert pinned.reload([_info()]) == (1, 0)
    assert pinned.release("m").state == RELEASED


def test_the_default_pin_is_the_bundled_production_policy() -> None:
    """Requirement 3: the default of assurance.accepted_gate_policies is the digest of the bundled production
    gate policy (what ``bastion eval`` uses by default); changing that file means changing the pin."""
    from bastion.assurance.settings import PRODUCTION_GATE_POLICY_DIGEST
    from bastion.cli.evaluate import DEFAULT_POLICY

    digest = "sha256:" + hashlib.sha256(DEFAULT_POLICY.read_bytes()).hexdigest()
    assert DEFAULT_POLICY == GATE / "production.toml"
    assert PRODUCTION_GATE_POLICY_DIGEST == digest == load_gate_policy(DEFAULT_POLICY).digest
    assert AssuranceSettings().accepted_gate_policies == [digest]


@pytest.mark.parametrize("bad", [[], ["sha256:abc"], ["md5:" + "00" * 16], ["sha256:" + "AB" * 32 + " "]])
def test_accepted_gate_policies_are_validated(bad: list[str]) -> None:
    """Requirement 3: the setting holds one or more "sha256:<64 hex>" digests; anything else is a config
    error naming the field."""
    with pytest.raises(ValidationError, match="accepted_gate_policies"):
        AssuranceSettings(accepted_gate_policies=bad)


# ------------------------------------------------------------------------- 4: quarantine from the audit log


async def _audit(tmp: Path, *events: tuple[str, str]) -> Path:
    """An audit log holding ``(action, model)`` alerts / lifts as the server writes them; returns its directory."""
    log = AuditLog.open(AuditSettings(dir=tmp / "audit"), tmp)
    recorder = AuditRecorder(log)
    try:
        for action, model in events:
            if action == "quarantine_lifted":
                await recorder.admin_decision(
                    action,
                    request_id="r1",
                    method="/bastion.v1.Admin/LiftQuarantine",
                    peer="ipv4:127.0.0.1:1",
                    principal=ADMIN,
                    model=model,
                    model_digest=MODEL,
                    reason="re-evaluated",
                )
            else:
                await recorder.alert(event="drift", model=model, model_digest=MODEL, reason="drift 0.3", action=action)
    finally:
        log.close()
    return log.directory


async def test_a_quarantine_survives_a_restart_and_deleted_attestations(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    """Requirement 4: a quarantine recorded in the audit log (and not lifted) is in force after a restart,
    whatever the attestations directory holds or lost."""
    priv, pub = keys
    audit_dir = await _audit(tmp_path, ("alert", "m"), ("quarantine", "m"), ("quarantine", "gone-model"))
    book = _book(tmp_path, pub)
    (book.dir / "good.intoto.json").write_bytes(_att(priv))
    assert book.restore_quarantines(audit_dir) == 2
    book.reload([_info()])
    rel = book.release("m")
    assert rel.state == QUARANTINED and "drift 0.3" in rel.attestation
    for f in book.dir.iterdir():
        f.unlink()
    book.reload([_info()])
    assert book.release("m").state == QUARANTINED
    # ... and for tenants the book refuses it, with require_attestation off too.
    open_book = ReleaseBook(AssuranceSettings(require_attestation=False), tmp_path)
    open_book.restore_quarantines(audit_dir)
    open_book.reload([_info()])
    assert open_book.release("m").state == QUARANTINED


async def test_only_a_recorded_lift_ends_a_quarantine(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    """Requirement 4: the audit log's last word per model decides: quarantine, lifted, quarantined again."""
    _, pub = keys
    lifted = await _audit(tmp_path / "one", ("quarantine", "m"), ("quarantine_lifted", "m"))
    book = _book(tmp_path / "one", pub)
    assert book.restore_quarantines(lifted) == 0 and book.release("m").state != QUARANTINED
    again = await _audit(tmp_path / "two", ("quarantine", "m"), ("quarantine_lifted", "m"), ("quarantine", "m"))
    book = _book(tmp_path / "two", pub)
    assert book.restore_quarantines(again) == 1 and book.release("m").state == QUARANTINED
    # Lifting in memory needs the model to be quarantined.
    assert book.lift_quarantine("m") and not book.lift_quarantine("m")
    assert book.release("m").state != QUARANTINED


async def test_an_unreadable_audit_log_fails_closed(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    """Requirement 4: a log whose records cannot all be read back (here a record cut out of the middle) is
    an IntegrityError, never an empty quarantine set."""
    _, pub = keys
    audit_dir = await _audit(tmp_path, ("quarantine", "m"))
    seg = audit_dir / "audit-00000000.jsonl"
    lines = seg.read_bytes().splitlines(keepends=True)
    victim = next(i for i, line in enumerate(lines) if b'"quarantine"' in line)
    seg.write_bytes(b"".join(lines[:victim] + lines[victim + 1 :]))
    book = _book(tmp_path, pub)
    with pytest.raises(IntegrityError, match="seq"):
        book.restore_quarantines(audit_dir)


# ------------------------------------------------------------------------- 5: hostile files


_CHILD = """
import json, logging, sys
from pathlib import Path
from bastion.assurance.release import ReleaseBook
from bastion.assurance.settings import AssuranceSettings
from bastion.engine.protocol import ModelInfo
logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
tmp, pub = Path(sys.argv[1]), Path(sys.argv[2])
s = AssuranceSettings(attestations_dir=tmp / "attestations", trusted_keys=[pub], accepted_suites=["ci"])
book = ReleaseBook(s, tmp)
files, rejected = book.reload([ModelInfo(name="m", digest=sys.argv[3], max_context=256, device="cpu")])
print(json.dumps({"files": files, "rejected": rejected, "state": book.release("m").state}))
"""


def _limit_memory() -> None:  # a regression that reads /dev/zero must fail, not eat the machine
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))


def test_a_fifo_a_dev_zero_symlink_and_an_oversized_file_are_refused_quickly(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    """Requirement 5: attestation files are opened O_NOFOLLOW|O_NONBLOCK, must be regular files and are read
    with a bound: a FIFO (which blocked the start), a symlink to /dev/zero (read forever) and an oversized
    file are each refused at once, logged by name, and the other attestations still load. One child process
    (memory-capped) loads all three, so a regression fails by timeout instead of hanging or eating the host."""
    priv, pub = keys
    atts = tmp_path / "attestations"
    atts.mkdir()
    os.mkfifo(atts / "a-fifo.intoto.json")
    (atts / "b-zero.intoto.json").symlink_to("/dev/zero")
    (atts / "c-big.intoto.json").write_bytes(b" " * (MAX_ENVELOPE_BYTES + 1))
    (atts / "z-good.intoto.json").write_bytes(_att(priv))
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(tmp_path), str(pub), MODEL],
        capture_output=True,
        text=True,
        timeout=30,  # a start that hangs is the failure; the child needs a few seconds to import
        preexec_fn=_limit_memory,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout) == {"files": 4, "rejected": 3, "state": RELEASED}
    for name in ("a-fifo", "b-zero", "c-big"):
        assert f"{name}.intoto.json refused" in proc.stderr


def test_attestation_files_are_opened_without_following_or_blocking(
    tmp_path: Path, keys: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requirement 5: the open flags are O_RDONLY|O_NOFOLLOW|O_NONBLOCK|O_CLOEXEC."""
    priv, pub = keys
    book = _book(tmp_path, pub)
    (book.dir / "good.intoto.json").write_bytes(_att(priv))
    seen: list[int] = []
    real_open = os.open

    def spy(path: Any, flags: int, *a: Any, **kw: Any) -> int:
        if str(path).endswith(".intoto.json"):
            seen.append(flags)
        return real_open(path, flags, *a, **kw)

    monkeypatch.setattr(os, "open", spy)
    book.reload([_info()])
    want = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    assert seen and all(f & want == want and f & (os.O_WRONLY | os.O_RDWR) == 0 for f in seen)
    assert book.release("m").state == RELEASED


async def test_quarantine_decisions_are_applied_in_the_order_they_are_recorded(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    """A lift whose record is being written and a new quarantine racing it. Before, both ran at once: the
    quarantine's record came after the lift's, but the lift was applied last in memory, so the running server
    served a model the audit log (and so the next start) held quarantined. Now one decision at a time."""
    book = _book(tmp_path, keys[1])
    book.quarantine("fake-model", "red team")
    recorded: list[str] = []
    lift_record_written = asyncio.Event()

    async def lift() -> None:
        assert book.release("fake-model").state == QUARANTINED
        await lift_record_written.wait()  # the lift's audit record is being made durable
        recorded.append("quarantine_lifted")
        book.lift_quarantine("fake-model")

    async def quarantine_again() -> None:
        recorded.append("quarantine")
        book.quarantine("fake-model", "drift")

    lifting = asyncio.ensure_future(book.decide(lift))
    await asyncio.sleep(0)
    again = asyncio.ensure_future(book.decide(quarantine_again))
    await asyncio.sleep(0.05)
    assert recorded == []  # the new quarantine waits for the lift in progress
    lift_record_written.set()
    await asyncio.gather(lifting, again)
    assert recorded == ["quarantine_lifted", "quarantine"]  # the log's order ...
    assert book.release("fake-model").state == QUARANTINED  # ... is the state in memory
