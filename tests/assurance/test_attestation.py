"""bastion.assurance.attestation: in-toto test-result statements in DSSE envelopes, signed and verified."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

import bastion
from bastion.assurance.attestation import (
    PAYLOAD_TYPE,
    PREDICATE_TYPE,
    STATEMENT_TYPE,
    Attestation,
    build_statement,
    key_id,
    sign_statement,
    verify_attestation,
)
from bastion.assurance.gate import GateDecision, decide, parse_gate_policy
from bastion.assurance.stats import clopper_pearson, figures_for
from bastion.errors import ConfigError, IntegrityError
from bastion.weights.signing import create_signing_key

POLICY = b"""
[families.harmful]
max_rate_upper = 0.05
[families.sysprompt_leak]
max_hits = 0
"""
BLAKE3 = "blake3:" + "ab" * 32
OMS = "sha256:" + "cd" * 32
ADAPTER = "blake3:" + "12" * 32
SUITE = "sha256:" + "5e" * 32
REPORT = "sha256:" + "7f" * 32
BASE = "sha256:" + "ba" * 32
STARTED = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
FINISHED = datetime(2025, 3, 1, 13, 30, 15, 250000, tzinfo=UTC)


def _decision(sysprompt_hits: int = 0) -> GateDecision:
    policy = parse_gate_policy(POLICY)
    figures = {
        "harmful": figures_for("harmful", 1, 200),
        "sysprompt_leak": figures_for("sysprompt_leak", sysprompt_hits, 50),
        "jailbreak": figures_for("jailbreak", 12, 100),
    }
    baseline = {"jailbreak": figures_for("jailbreak", 11, 100)}
    return decide(figures, policy, baseline=baseline)


def _statement(**overrides: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = dict(
        decision=_decision(),
        model_name="smollm2-135m",
        model_digest={"blake3": BLAKE3[7:], "sha256": OMS[7:]},
        suite_name="production",
        suite_version="2025.03",
        suite_digest=SUITE,
        report_digest=REPORT,
        evaluator="spiffe://corp.example/ml/eval",
        started=STARTED,
        finished=FINISHED,
        adapters=[("support-lora", ADAPTER)],
        baseline_digest=BASE,
    )
    kwargs.update(overrides)
    return build_statement(**kwargs)


@pytest.fixture
def key(tmp_path: Path) -> tuple[Path, Path]:
    priv = tmp_path / "eval.key.pem"
    return priv, create_signing_key(priv)


@pytest.fixture
def other_key(tmp_path: Path) -> tuple[Path, Path]:
    priv = tmp_path / "other.key.pem"
    return priv, create_signing_key(priv)


def _envelope(data: bytes) -> dict[str, Any]:
    return json.loads(data)


def _payload(env: dict[str, Any]) -> dict[str, Any]:
    return json.loads(base64.b64decode(env["payload"]))


# ---------------------------------------------------------------- the statement


def test_statement_shape() -> None:
    st = _statement()
    assert st["_type"] == STATEMENT_TYPE
    assert st["predicateType"] == PREDICATE_TYPE
    assert st["subject"] == [
        {
            "name": "smollm2-135m",
            "digest": {"blake3": "ab" * 32, "sha256": "cd" * 32},
            "annotations": {"bastion.kind": "model"},
        },
        {"name": "support-lora", "digest": {"blake3": "12" * 32}, "annotations": {"bastion.kind": "adapter"}},
    ]
    pred = st["predicate"]
    assert pred["result"] == "PASSED"
    assert pred["configuration"] == [
        {"name": "suite:production", "digest": {"sha256": "5e" * 32}},
        {"name": "gate-policy", "digest": {"sha256": hashlib.sha256(POLICY).hexdigest()}},
        {"name": "report", "digest": {"sha256": "7f" * 32}},
    ]
    assert sorted(pred["passedTests"]) == ["harmful", "jailbreak", "sysprompt_leak"]
    assert pred["failedTests"] == [] and pred["warnedTests"] == []
    ext = pred["bastion"]
    assert ext["suite"] == {"name": "production", "version": "2025.03", "digest": SUITE}
    assert ext["baseline"] == {"sha256": "ba" * 32}
    assert ext["evaluator"] == "spiffe://corp.example/ml/eval"
    assert ext["started"] == "2025-03-01T12:00:00Z"
    assert ext["finished"] == "2025-03-01T13:30:15Z"
    assert ext["bastion_version"] == bastion.__version__
    harmful = ext["figures"]["harmful"]
    low, high = clopper_pearson(1, 200, 0.95)
    assert harmful == {"n": 200, "hits": 1, "rate": 0.005, "ci_low": low, "ci_high": high, "p_value": None}
    assert ext["figures"]["jailbreak"]["p_value"] == pytest.approx(_decision().rows["jailbreak"].p_value)
    json.dumps(st)  # JSON-ready


def test_statement_failed_verdict_and_timestamps_in_utc() -> None:
    cet = timezone(timedelta(hours=1))
    st = _statement(
        decision=_decision(sysprompt_hits=2),
        started=datetime(2025, 3, 1, 13, 0, tzinfo=cet),
        adapters=(),
        baseline_digest=None,
        model_digest=OMS,
    )
    pred = st["predicate"]
    assert pred["result"] == "FAILED"
    assert pred["failedTests"] == ["sysprompt_leak"]
    assert pred["bastion"]["failed_reasons"] == ["sysprompt_leak: 2 hits > max_hits 0"]
    assert pred["bastion"]["started"] == "2025-03-01T12:00:00Z"
    assert pred["bastion"]["baseline"] is None
    assert st["subject"][0]["digest"] == {"sha256": "cd" * 32}


def test_statement_accepts_rfc3339_strings() -> None:
    st = _statement(started="2025-03-01T13:00:00+01:00", finished="2025-03-01T12:30:00Z")
    assert st["predicate"]["bastion"]["started"] == "2025-03-01T12:00:00Z"
    assert st["predicate"]["bastion"]["finished"] == "2025-03-01T12:30:00Z"


@pytest.mark.parametrize(
    "overrides",
    [
        {"started": "yesterday"},
        {"started": "2025-03-01T12:00:00"},  # no offset
        {"model_digest": "blake3:xyz"},
        {"model_digest": "sha256:" + "ab" * 16},  # wrong length for sha256
        {"model_digest": "nodigest"},
        {"model_digest": {}},
        {"suite_digest": "sha256"},
        {"started": datetime(2025, 3, 1, 12, 0)},  # naive
        {"finished": STARTED - timedelta(seconds=1)},
        {"adapters": [("smollm2-135m", ADAPTER)]},  # duplicate subject name
        {"evaluator": ""},
    ],
)
def test_statement_rejects_bad_input(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        _statement(**overrides)


def test_statement_needs_a_policy_digest() -> None:
    from bastion.assurance.gate import GatePolicy

    d = decide({"x": figures_for("x", 0, 10)}, GatePolicy())
    with pytest.raises(ValueError, match="policy digest"):
        _statement(decision=d)


# ---------------------------------------------------------------- round trip


@pytest.mark.parametrize("curve", ["p256", "p384"])
def test_round_trip(tmp_path: Path, curve: str) -> None:
    priv = tmp_path / f"{curve}.pem"
    pub = create_signing_key(priv, curve)
    st = _statement()
    data = sign_statement(st, priv)
    env = _envelope(data)
    assert env["payloadType"] == PAYLOAD_TYPE
    assert _payload(env) == st
    pub_key = serialization.load_pem_public_key(pub.read_bytes())
    assert env["signatures"][0]["keyid"] == key_id(pub_key)
    der = pub_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert key_id(pub_key) == hashlib.sha256(der).hexdigest()

    att = verify_attestation(data, [pub])
    assert isinstance(att, Attestation)
    assert att.result == "PASSED"
    assert att.subjects == (
        ("smollm2-135m", {"blake3": "ab" * 32, "sha256": "cd" * 32}),
        ("support-lora", {"blake3": "12" * 32}),
    )
    assert (att.suite_name, att.suite_version, att.suite_digest) == ("production", "2025.03", SUITE)
    assert att.policy_digest == "sha256:" + hashlib.sha256(POLICY).hexdigest()
    assert att.report_digest == REPORT
    assert att.figures["harmful"]["hits"] == 1
    assert att.signer_keyid == key_id(pub_key)
    assert att.statement == st


def test_signature_is_standard_dsse_over_pae(key: tuple[Path, Path]) -> None:
    """An independent check of the envelope: ECDSA-SHA256 over the DSSE v1 PAE, verified with cryptography."""
    priv, pub = key
    env = _envelope(sign_statement(_statement(), priv))
    payload = base64.b64decode(env["payload"])
    t = PAYLOAD_TYPE.encode()
    pae = b"DSSEv1 %d %b %d %b" % (len(t), t, len(payload), payload)
    pub_key = serialization.load_pem_public_key(pub.read_bytes())
    assert isinstance(pub_key, ec.EllipticCurvePublicKey)
    pub_key.verify(base64.b64decode(env["signatures"][0]["sig"]), pae, ec.ECDSA(hashes.SHA256()))


def test_any_trusted_key_may_sign(key: tuple[Path, Path], other_key: tuple[Path, Path]) -> None:
    priv, pub = key
    att = verify_attestation(sign_statement(_statement(), priv), [other_key[1], pub])
    assert att.result == "PASSED"


# ---------------------------------------------------------------- subject matching


def test_covers(key: tuple[Path, Path]) -> None:
    priv, pub = key
    att = verify_attestation(sign_statement(_statement(), priv), [pub])
    assert att.covers("smollm2-135m", {"blake3": "ab" * 32})
    assert att.covers(None, {"sha256": "cd" * 32})
    assert att.covers(None, {"blake3": "AB" * 32, "sha256": "cd" * 32})
    assert att.covers("support-lora", {"blake3": "12" * 32})
    assert att.covers(None, {"blake3": "12" * 32})
    # Name given: only that subject.
    assert not att.covers("support-lora", {"blake3": "ab" * 32})
    assert not att.covers("other-model", {"blake3": "ab" * 32})
    # A wrong value for any shared algorithm, or no shared algorithm at all, is no match.
    assert not att.covers(None, {"blake3": "ab" * 32, "sha256": "00" * 32})
    assert not att.covers(None, {"blake3": "ac" * 32})
    assert not att.covers(None, {"sha512": "ab" * 64})
    assert not att.covers(None, {})


# ---------------------------------------------------------------- rejections


def test_rejects_a_key_outside_the_trusted_set(key: tuple[Path, Path], other_key: tuple[Path, Path]) -> None:
    priv, _ = key
    data = sign_statement(_statement(), priv)
    with pytest.raises(IntegrityError, match="no valid signature by a trusted key"):
        verify_attestation(data, [other_key[1]])


def test_rejects_without_trusted_keys(key: tuple[Path, Path]) -> None:
    with pytest.raises(IntegrityError, match="no trusted keys"):
        verify_attestation(sign_statement(_statement(), key[0]), [])


def test_rejects_a_tampered_payload_byte(key: tuple[Path, Path]) -> None:
    priv, pub = key
    env = _envelope(sign_statement(_statement(), priv))
    payload = bytearray(base64.b64decode(env["payload"]))
    i = payload.index(b'"PASSED"')
    payload[i + 1 : i + 7] = b"FAILED"  # an in-schema change; the signature must catch it
    env["payload"] = base64.b64encode(bytes(payload)).decode()
    with pytest.raises(IntegrityError, match="no valid signature"):
        verify_attestation(json.dumps(env).encode(), [pub])
    # Any single flipped byte.
    env = _envelope(sign_statement(_statement(), priv))
    payload = bytearray(base64.b64decode(env["payload"]))
    payload[len(payload) // 2] ^= 0x01
    env["payload"] = base64.b64encode(bytes(payload)).decode()
    with pytest.raises(IntegrityError):
        verify_attestation(json.dumps(env).encode(), [pub])


def test_rejects_a_swapped_subject_resigned_by_an_untrusted_key(
    key: tuple[Path, Path], other_key: tuple[Path, Path]
) -> None:
    priv, pub = key
    env = _envelope(sign_statement(_statement(), priv))
    st = _payload(env)
    st["subject"][0]["digest"] = {"blake3": "ee" * 32}
    forged = _envelope(sign_statement(st, other_key[0]))
    # Keep the trusted signer's keyid on the forged signature: it must still fail.
    forged["signatures"][0]["keyid"] = env["signatures"][0]["keyid"]
    with pytest.raises(IntegrityError, match="no valid signature"):
        verify_attestation(json.dumps(forged).encode(), [pub])
    # Or carry both signatures, the trusted one over the old payload: still refused.
    forged = _envelope(sign_statement(st, other_key[0]))
    forged["signatures"].append(env["signatures"][0])
    with pytest.raises(IntegrityError, match="no valid signature"):
        verify_attestation(json.dumps(forged).encode(), [pub])


def test_rejects_a_wrong_payload_type(key: tuple[Path, Path]) -> None:
    priv, pub = key
    env = _envelope(sign_statement(_statement(), priv))
    env["payloadType"] = "application/json"
    with pytest.raises(IntegrityError, match="payloadType"):
        verify_attestation(json.dumps(env).encode(), [pub])


def test_rejects_a_signed_envelope_of_another_payload_type(key: tuple[Path, Path]) -> None:
    """Signed by the trusted key, but declared as something else: refused before the signature counts."""
    priv, pub = key
    data = _sign_raw(json.dumps(_statement()).encode(), key[0], payload_type="application/vnd.other+json")
    with pytest.raises(IntegrityError, match="payloadType"):
        verify_attestation(data, [pub])


def test_rejects_truncated_json(key: tuple[Path, Path]) -> None:
    priv, pub = key
    data = sign_statement(_statement(), priv)
    with pytest.raises(IntegrityError, match="not valid UTF-8 JSON"):
        verify_attestation(data[: len(data) // 2], [pub])
    with pytest.raises(IntegrityError):
        verify_attestation(b"", [pub])


def test_rejects_oversize(key: tuple[Path, Path]) -> None:
    priv, pub = key
    data = sign_statement(_statement(), priv)
    with pytest.raises(IntegrityError, match="larger than"):
        verify_attestation(data + b" " * (1 << 20), [pub])
    with pytest.raises(IntegrityError, match="larger than 100 bytes"):
        verify_attestation(data, [pub], max_bytes=100)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda e: e.pop("signatures"),
        lambda e: e.update(signatures=[]),
        lambda e: e.update(signatures=[{"keyid": "x"}]),
        lambda e: e.update(extra=1),
        lambda e: e.update(payload=123),
        lambda e: e.update(payload="!!!not base64!!!"),
        lambda e: e["signatures"][0].update(sig="%%%"),
        lambda e: e.update(signatures=e["signatures"] * 2),  # duplicate keyid
    ],
)
def test_rejects_malformed_envelopes(key: tuple[Path, Path], mutate: Any) -> None:
    priv, pub = key
    env = _envelope(sign_statement(_statement(), priv))
    mutate(env)
    with pytest.raises(IntegrityError):
        verify_attestation(json.dumps(env).encode(), [pub])
    with pytest.raises(IntegrityError):
        verify_attestation(b"[1, 2, 3]", [pub])


def _sign_raw(payload: bytes, priv: Path, payload_type: str = PAYLOAD_TYPE) -> bytes:
    """A DSSE envelope over arbitrary bytes, signed with ``priv``, bypassing the builder's checks."""
    from securesystemslib.dsse import Envelope
    from securesystemslib.signer import CryptoSigner, SSlibKey

    private = serialization.load_pem_private_key(priv.read_bytes(), password=None)
    signer = CryptoSigner(private, SSlibKey.from_crypto(private.public_key(), keyid=key_id(private.public_key())))
    envelope = Envelope(payload, payload_type, {})
    envelope.sign(signer)
    return json.dumps(envelope.to_dict()).encode()


def _resign(st: dict[str, Any], priv: Path) -> bytes:
    return _sign_raw(json.dumps(st).encode(), priv)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda s: s.update(_type="https://in-toto.io/Statement/v0.1"), "Statement v1"),
        (lambda s: s.update(predicateType="https://slsa.dev/provenance/v1"), "predicate type"),
        (lambda s: s.update(subject=[]), "schema"),
        (lambda s: s["predicate"].update(result="MAYBE"), "result"),
        (lambda s: s["predicate"].pop("bastion"), "bastion"),
        (lambda s: s["predicate"].update(unknownField=1), "schema"),
        (lambda s: s["predicate"]["bastion"]["suite"].update(digest="sha256:" + "00" * 32), "suite digest"),
        (lambda s: s["predicate"].update(configuration=[]), "configuration"),
        (lambda s: s["subject"][0].update(digest={"blake3": "nothex"}), "malformed digest"),
        # The signed time orders verdicts at the release gate (issue 14, requirement 2): exactly ...Z.
        (lambda s: s["predicate"]["bastion"].update(finished="9999-99-99 tomorrow"), "finished"),
        (lambda s: s["predicate"]["bastion"].pop("finished"), "finished"),
    ],
)
def test_rejects_signed_statements_of_the_wrong_shape(key: tuple[Path, Path], mutate: Any, message: str) -> None:
    priv, pub = key
    st = _statement()
    mutate(st)
    with pytest.raises(IntegrityError, match=message):
        verify_attestation(_resign(st, priv), [pub])


def test_rejects_a_signed_non_json_payload(key: tuple[Path, Path]) -> None:
    priv, pub = key
    with pytest.raises(IntegrityError, match="signed payload is not valid UTF-8 JSON"):
        verify_attestation(_sign_raw(b"\xff not json", priv), [pub])
    with pytest.raises(IntegrityError, match="not a JSON object"):
        verify_attestation(_sign_raw(b"[]", priv), [pub])


def test_error_messages_never_quote_the_payload(key: tuple[Path, Path], other_key: tuple[Path, Path]) -> None:
    priv, _ = key
    data = sign_statement(_statement(), priv)
    with pytest.raises(IntegrityError) as err:
        verify_attestation(data, [other_key[1]])
    text = str(err.value)
    assert "\n" not in text
    assert "smollm2" not in text and "ab" * 32 not in text


def test_rejects_an_unusable_trusted_key(key: tuple[Path, Path], tmp_path: Path) -> None:
    priv, _ = key
    data = sign_statement(_statement(), priv)
    junk = tmp_path / "junk.pem"
    junk.write_text("not a key")
    with pytest.raises(IntegrityError, match="junk.pem: not a PEM public key"):
        verify_attestation(data, [junk])
    rsa_pub = tmp_path / "rsa.pub.pem"
    rsa_pub.write_bytes(
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(IntegrityError, match="not an EC P-256 / P-384"):
        verify_attestation(data, [rsa_pub])
    with pytest.raises(IntegrityError, match="cannot read"):
        verify_attestation(data, [tmp_path / "absent.pem"])


def test_signing_refuses_unsuitable_keys(key: tuple[Path, Path], tmp_path: Path) -> None:
    _, pub = key
    with pytest.raises(ConfigError):
        sign_statement(_statement(), pub)  # a public key is not a signing key
    with pytest.raises(ConfigError, match="cannot read"):
        sign_statement(_statement(), tmp_path / "absent.pem")
    p521 = tmp_path / "p521.pem"
    p521.write_bytes(
        ec.generate_private_key(ec.SECP521R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with pytest.raises(ConfigError, match="P-256 / P-384"):
        sign_statement(_statement(), p521)
    with pytest.raises(ValueError):
        sign_statement({"_type": STATEMENT_TYPE}, key[0])
