"""Signed attestations of a model security evaluation: in-toto Statement v1 in a DSSE envelope.

``bastion eval`` writes one attestation per evaluated artefact set; the server releases a model to
tenants only while a verified one covers exactly its digest (:mod:`bastion.assurance.release`).

**Statement** (``_type`` ``https://in-toto.io/Statement/v1``):

- ``subject``: the model (``{"sha256": hex}``, its OMS subject digest, when it is signed; otherwise
  ``{"blake3": hex}``, its directory digest; both may be given), then each adapter evaluated with it.
  Each subject carries the annotation ``bastion.kind`` = ``model`` / ``adapter``.
- ``predicateType`` ``https://in-toto.io/attestation/test-result/v0.1`` with the standard fields
  ``result`` (PASSED / WARNED / FAILED), ``configuration`` (ResourceDescriptors of the probe suite
  manifest ``suite:<name>``, the gate policy ``gate-policy`` and the evaluation report ``report``, each
  by digest), ``passedTests`` / ``failedTests`` / ``warnedTests`` (probe family names), and one extension
  key, ``bastion``: ``suite`` {name, version, digest}, ``figures`` per family {n, hits, rate, ci_low,
  ci_high, p_value} (the interval is Clopper-Pearson at ``confidence``, the gate policy's level;
  ``p_value`` is the raw one-sided regression p-value or null), ``confidence``, ``regression_alpha``,
  ``failed_reasons``, ``baseline`` (the baseline model's digest set, or null), ``evaluator`` (the
  principal id that ran the evaluation), ``started`` / ``finished`` (RFC 3339 UTC, ``...Z``, whole
  seconds, so they sort as strings; ``finished`` is the signed time that orders verdicts for the release
  gate, and verification requires it in exactly that form) and ``bastion_version``.

Digests given to :func:`build_statement` are ``"algo:hex"`` strings (as :mod:`bastion.digest`,
:mod:`bastion.weights.signing` and the gate policy write them) or ``{algo: hex}`` maps; hex is stored
lower-case. Both the statement and the test-result predicate are checked against the in-toto
attestation protobuf schemas (``in_toto_attestation``) when built and again when verified.

**Envelope**: DSSE (``securesystemslib.dsse``; its PAE, never a hand-written one), ``payloadType``
``application/vnd.in-toto+json``, signed by an EC P-256 or P-384 key (PKCS#8 PEM as written by
:func:`bastion.weights.signing.create_signing_key`) with ECDSA over SHA-256 / SHA-384. The signature's
``keyid`` is :func:`key_id`: the lower-case hex SHA-256 of the public key's DER SubjectPublicKeyInfo
(the same value for the private key and its ``.pub`` file; ``openssl pkey -pubin -outform DER | sha256sum``
reproduces it).

**Verification** (:func:`verify_attestation`) fails closed, with :class:`~bastion.errors.IntegrityError`
and a one-line reason that never quotes the payload: size limit, JSON shape of the envelope, payload
type, a valid signature by one of the trusted public keys (threshold 1; signatures under other keyids
are ignored), then the statement type, the predicate type and both schemas, and the bastion extension.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bastion
from bastion.assurance.gate import GateDecision
from bastion.assurance.stats import clopper_pearson
from bastion.errors import ConfigError, IntegrityError

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://in-toto.io/attestation/test-result/v0.1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
RESULTS = ("PASSED", "WARNED", "FAILED")
EXTENSION = "bastion"
SUITE_PREFIX = "suite:"
POLICY_NAME = "gate-policy"
REPORT_NAME = "report"
KIND_ANNOTATION = "bastion.kind"
MODEL_KIND = "model"
ADAPTER_KIND = "adapter"
MAX_ENVELOPE_BYTES = 1 << 20
MAX_SIGNATURES = 16
MAX_KEY_BYTES = 64 * 1024

_ALGO = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
_HEX = re.compile(r"^[0-9a-f]{16,256}$")
_HEX_LEN = {"sha256": 64, "sha384": 96, "sha512": 128, "blake3": 64, "blake2b": 128}
_TIMESTAMP = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$")


# ----------------------------------------------------------------------------------------- digests


def _digest_map(value: str | Mapping[str, str], what: str) -> dict[str, str]:
    """``"algo:hex"`` or ``{algo: hex}`` as a validated ``{algo: lower-case hex}``; ValueError if bad."""
    pairs: list[tuple[str, str]]
    if isinstance(value, str):
        algo, sep, hexval = value.partition(":")
        if not sep:
            raise ValueError(f"{what}: a digest is 'algorithm:hex'")
        pairs = [(algo, hexval)]
    else:
        pairs = list(value.items())
    if not pairs:
        raise ValueError(f"{what}: at least one digest is required")
    out: dict[str, str] = {}
    for algo, hexval in pairs:
        if not isinstance(algo, str) or not isinstance(hexval, str):
            raise ValueError(f"{what}: digest algorithm and value must be strings")
        algo, hexval = algo.lower(), hexval.lower()
        if not _ALGO.match(algo) or not _HEX.match(hexval) or len(hexval) % 2:
            raise ValueError(f"{what}: malformed digest")
        if algo in _HEX_LEN and len(hexval) != _HEX_LEN[algo]:
            raise ValueError(f"{what}: a {algo} digest has {_HEX_LEN[algo]} hex digits")
        out[algo] = hexval
    return out


def _digest_str(value: str | Mapping[str, str], what: str) -> str:
    """One ``"algo:hex"`` string (the first entry of a map)."""
    algo, hexval = next(iter(_digest_map(value, what).items()))
    return f"{algo}:{hexval}"


def _rd(name: str, digest: str | Mapping[str, str], what: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "digest": _digest_map(digest, what), **extra}


def digests_match(subject: Mapping[str, str], digests: Mapping[str, str]) -> bool:
    """True when the two digest sets share an algorithm and agree on every algorithm they share."""
    a = {k.lower(): v.lower() for k, v in subject.items()}
    b = {k.lower(): v.lower() for k, v in digests.items()}
    common = set(a) & set(b)
    return bool(common) and all(a[k] == b[k] for k in common)


# ----------------------------------------------------------------------------------------- building


def _as_datetime(t: datetime | str, what: str) -> datetime:
    if isinstance(t, str):
        try:
            t = datetime.fromisoformat(t)
        except ValueError:
            raise ValueError(f"{what}: not an RFC 3339 timestamp") from None
    if t.tzinfo is None or t.utcoffset() is None:
        raise ValueError(f"{what}: a timestamp must be timezone-aware")
    return t


def _timestamp(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _schema_check(statement: Mapping[str, Any]) -> None:
    """Checks ``statement`` against the in-toto Statement v1 and test-result v0.1 schemas (ValueError)."""
    from google.protobuf import json_format
    from in_toto_attestation.predicates.test_result.v0 import test_result_pb2
    from in_toto_attestation.v1 import statement_pb2
    from in_toto_attestation.v1.statement import Statement

    try:
        pb = json_format.ParseDict(dict(statement), statement_pb2.Statement())
        Statement.copy_from_pb(pb).validate()
        predicate = {k: v for k, v in statement["predicate"].items() if k != EXTENSION}
        json_format.ParseDict(predicate, test_result_pb2.TestResult())
    except (json_format.ParseError, ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
        if isinstance(exc, json_format.ParseError):
            raise ValueError("does not match the in-toto Statement v1 / test-result schema") from None
        raise ValueError(f"does not match the in-toto schema ({exc})") from None


def build_statement(
    *,
    decision: GateDecision,
    model_name: str,
    model_digest: str | Mapping[str, str],
    suite_name: str,
    suite_version: str,
    suite_digest: str,
    report_digest: str,
    evaluator: str,
    started: datetime | str,
    finished: datetime | str,
    adapters: Sequence[tuple[str, str | Mapping[str, str]]] = (),
    baseline_digest: str | Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The in-toto statement (a JSON-ready dict) for one evaluation and the gate's ``decision``.

    ``model_digest``: ``"sha256:<hex>"`` (OMS digest of a signed model), ``"blake3:<hex>"`` (directory
    digest) or a map with both; ``adapters``: ``(name, digest)`` per adapter evaluated with the model;
    ``suite_digest`` / ``report_digest``: ``"algo:hex"``; the policy digest comes from ``decision``.
    ``started`` / ``finished``: timezone-aware datetimes or RFC 3339 strings (stored as UTC ``...Z``).
    Raises ``ValueError`` for malformed input (bad digest, naive timestamp, finished before started).
    """
    if not model_name or not suite_name or not suite_version or not evaluator:
        raise ValueError("model_name, suite_name, suite_version and evaluator are required")
    if not decision.policy_digest:
        raise ValueError("decision: the gate policy digest is missing (load the policy with load_gate_policy)")
    started, finished = _as_datetime(started, "started"), _as_datetime(finished, "finished")
    started_at, finished_at = _timestamp(started), _timestamp(finished)
    if finished < started:
        raise ValueError("finished is before started")
    subjects = [_rd(model_name, model_digest, "model_digest", annotations={KIND_ANNOTATION: MODEL_KIND})]
    for name, digest in adapters:
        subjects.append(_rd(name, digest, f"adapter {name}", annotations={KIND_ANNOTATION: ADAPTER_KIND}))
    if len({s["name"] for s in subjects}) != len(subjects):
        raise ValueError("subject names (model and adapters) must be distinct")

    figures: dict[str, dict[str, Any]] = {}
    for fam, row in decision.rows.items():
        if row.figures is None:
            continue
        f = row.figures
        low, high = clopper_pearson(f.hits, f.n, decision.confidence)
        figures[fam] = {
            "n": f.n,
            "hits": f.hits,
            "rate": f.rate,
            "ci_low": low,
            "ci_high": high,
            "p_value": row.p_value,
        }

    statement: dict[str, Any] = {
        "_type": STATEMENT_TYPE,
        "subject": subjects,
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "result": decision.verdict,
            "configuration": [
                _rd(SUITE_PREFIX + suite_name, suite_digest, "suite_digest"),
                _rd(POLICY_NAME, decision.policy_digest, "policy digest"),
                _rd(REPORT_NAME, report_digest, "report_digest"),
            ],
            "passedTests": decision.passed_families,
            "failedTests": decision.failed_families,
            "warnedTests": [],
            EXTENSION: {
                "suite": {
                    "name": suite_name,
                    "version": suite_version,
                    "digest": _digest_str(suite_digest, "suite_digest"),
                },
                "figures": figures,
                "confidence": decision.confidence,
                "regression_alpha": decision.regression_alpha,
                "failed_reasons": list(decision.failed_reasons),
                "baseline": _digest_map(baseline_digest, "baseline_digest") if baseline_digest is not None else None,
                "evaluator": evaluator,
                "started": started_at,
                "finished": finished_at,
                "bastion_version": bastion.__version__,
            },
        },
    }
    _schema_check(statement)
    return statement


# ----------------------------------------------------------------------------------------- keys


def key_id(public_key: Any) -> str:
    """The DSSE keyid of an EC public key (a ``cryptography`` key object): hex SHA-256 of its DER SPKI."""
    from cryptography.hazmat.primitives import serialization

    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def _check_curve(key: Any) -> bool:
    from cryptography.hazmat.primitives.asymmetric import ec

    return isinstance(key, (ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey)) and isinstance(
        key.curve, (ec.SECP256R1, ec.SECP384R1)
    )


def _sslib_key(public_key: Any) -> Any:
    from securesystemslib.signer import SSlibKey

    return SSlibKey.from_crypto(public_key, keyid=key_id(public_key))


def _trusted_key(path: Path) -> Any:
    from cryptography.hazmat.primitives import serialization

    p = Path(path)
    try:
        data = p.read_bytes()[: MAX_KEY_BYTES + 1]
    except OSError as exc:
        raise IntegrityError(f"trusted key {p.name}: cannot read ({exc.strerror})") from None
    try:
        if len(data) > MAX_KEY_BYTES:
            raise ValueError
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        raise IntegrityError(f"trusted key {p.name}: not a PEM public key") from None
    if not _check_curve(key):
        raise IntegrityError(f"trusted key {p.name}: not an EC P-256 / P-384 public key")
    return _sslib_key(key)


# ----------------------------------------------------------------------------------------- signing


def sign_statement(statement: Mapping[str, Any], key_pem: Path) -> bytes:
    """The DSSE envelope (JSON bytes) of ``statement`` signed with the EC private key in ``key_pem``.

    The statement is schema-checked first; ``ConfigError`` for an unreadable or unsuitable key,
    ``ValueError`` for a statement that is not an in-toto test-result statement.
    """
    from cryptography.hazmat.primitives import serialization
    from securesystemslib.dsse import Envelope
    from securesystemslib.signer import CryptoSigner

    _schema_check(statement)
    p = Path(key_pem).expanduser()
    try:
        pem = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"attestation signing key: cannot read {p} ({exc.strerror})") from None
    try:
        private = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise ConfigError(f"attestation signing key: {p} is not an unencrypted PKCS#8 PEM private key") from None
    if not _check_curve(private):
        raise ConfigError(f"attestation signing key: {p} is not an EC P-256 / P-384 key")
    signer = CryptoSigner(private, _sslib_key(private.public_key()))
    payload = json.dumps(statement, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    envelope = Envelope(payload=payload, payload_type=PAYLOAD_TYPE, signatures={})
    envelope.sign(signer)
    return json.dumps(envelope.to_dict(), sort_keys=True, indent=2).encode("utf-8") + b"\n"


# ----------------------------------------------------------------------------------------- verifying


@dataclass(frozen=True)
class Attestation:
    """A verified attestation: what it says, and who signed it (``signer_keyid``, see :func:`key_id`).

    ``kinds`` holds each subject's ``bastion.kind`` annotation (``model`` / ``adapter``; ``""`` when absent),
    in the order of ``subjects``; ``finished`` is the signed end time of the evaluation (``...Z``, sorts as
    a string)."""

    subjects: tuple[tuple[str, dict[str, str]], ...]
    result: str
    suite_name: str
    suite_version: str
    suite_digest: str  # "algo:hex"
    policy_digest: str  # "algo:hex"
    report_digest: str  # "algo:hex"
    figures: dict[str, Any]
    signer_keyid: str
    statement: dict[str, Any]
    kinds: tuple[str, ...] = ()
    finished: str = ""

    def covers(self, name: str | None, digests: Mapping[str, str]) -> bool:
        """True when a subject (named ``name``, or any subject for None) has a matching digest set:
        at least one common algorithm, and the same value for every common algorithm."""
        return any((name is None or n == name) and digests_match(d, digests) for n, d in self.subjects)

    def covers_kind(self, kind: str, digests: Mapping[str, str]) -> bool:
        """True when a subject annotated ``bastion.kind`` = ``kind`` has a matching digest set."""
        return any(k == kind and digests_match(d, digests) for (_, d), k in zip(self.subjects, self.kinds, strict=True))

    @property
    def only_models(self) -> bool:
        """Every subject is of kind ``model``: no adapter (nor unannotated artefact) was evaluated with it."""
        return bool(self.kinds) and all(k == MODEL_KIND for k in self.kinds)


def _fail(reason: str) -> IntegrityError:
    return IntegrityError(f"attestation refused: {reason}")


def _envelope_shape(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict) or set(raw) != {"payload", "payloadType", "signatures"}:
        raise _fail("not a DSSE envelope (needs exactly payload, payloadType, signatures)")
    if not isinstance(raw["payload"], str) or not isinstance(raw["payloadType"], str):
        raise _fail("DSSE payload and payloadType must be strings")
    sigs = raw["signatures"]
    if not isinstance(sigs, list) or not sigs:
        raise _fail("DSSE envelope has no signatures")
    if len(sigs) > MAX_SIGNATURES:
        raise _fail(f"DSSE envelope has more than {MAX_SIGNATURES} signatures")
    for s in sigs:
        if not isinstance(s, dict) or not isinstance(s.get("keyid"), str) or not isinstance(s.get("sig"), str):
            raise _fail("a DSSE signature needs string keyid and sig")
    return raw


def _config_digest(configuration: list[Any], name: str) -> str:
    found = [c for c in configuration if isinstance(c, dict) and c.get("name") == name]
    if len(found) != 1:
        raise _fail(f"predicate configuration needs exactly one '{name}' entry")
    try:
        return _digest_str(found[0].get("digest") or {}, name)
    except (ValueError, AttributeError):
        raise _fail(f"predicate configuration '{name}' has a malformed digest") from None


def _statement_fields(statement: Any) -> dict[str, Any]:
    """Checks the statement's types, schemas and bastion extension; returns the Attestation fields."""
    if not isinstance(statement, dict):
        raise _fail("payload is not a JSON object")
    if statement.get("_type") != STATEMENT_TYPE:
        raise _fail("payload is not an in-toto Statement v1")
    if statement.get("predicateType") != PREDICATE_TYPE:
        raise _fail("predicate type is not test-result v0.1")
    predicate = statement.get("predicate")
    if not isinstance(predicate, dict):
        raise _fail("predicate is not a JSON object")
    try:
        _schema_check(statement)
    except ValueError as exc:
        raise _fail(f"statement {exc}") from None
    result = predicate.get("result")
    if result not in RESULTS:
        raise _fail("predicate result is not PASSED, WARNED or FAILED")

    subjects: list[tuple[str, dict[str, str]]] = []
    kinds: list[str] = []
    for s in statement["subject"]:
        name = s.get("name", "")
        try:
            subjects.append((name if isinstance(name, str) else "", _digest_map(s.get("digest") or {}, "subject")))
        except (ValueError, AttributeError):
            raise _fail("a subject has a malformed digest") from None
        annotations = s.get("annotations")
        kind = annotations.get(KIND_ANNOTATION) if isinstance(annotations, dict) else None
        kinds.append(kind if isinstance(kind, str) else "")

    ext = predicate.get(EXTENSION)
    if not isinstance(ext, dict):
        raise _fail(f"predicate has no '{EXTENSION}' object")
    suite = ext.get("suite")
    if not isinstance(suite, dict) or not all(
        isinstance(suite.get(k), str) and suite.get(k) for k in ("name", "version", "digest")
    ):
        raise _fail(f"{EXTENSION}.suite needs string name, version and digest")
    figures = ext.get("figures")
    if not isinstance(figures, dict):
        raise _fail(f"{EXTENSION}.figures is not a JSON object")
    configuration = predicate.get("configuration") or []
    suite_digest = _config_digest(configuration, SUITE_PREFIX + suite["name"])
    try:
        ext_suite_digest = _digest_str(suite["digest"], "suite")
    except ValueError:
        raise _fail(f"{EXTENSION}.suite.digest is malformed") from None
    if ext_suite_digest != suite_digest:
        raise _fail("the suite digest in the configuration and in the bastion extension differ")
    finished = ext.get("finished")
    if not isinstance(finished, str) or not _TIMESTAMP.match(finished):
        raise _fail(f"{EXTENSION}.finished is not an RFC 3339 UTC timestamp (YYYY-MM-DDTHH:MM:SSZ)")
    return {
        "subjects": tuple(subjects),
        "kinds": tuple(kinds),
        "finished": finished,
        "result": result,
        "suite_name": suite["name"],
        "suite_version": suite["version"],
        "suite_digest": suite_digest,
        "policy_digest": _config_digest(configuration, POLICY_NAME),
        "report_digest": _config_digest(configuration, REPORT_NAME),
        "figures": figures,
    }


def verify_attestation(
    envelope: bytes, trusted_keys: Sequence[Path], *, max_bytes: int = MAX_ENVELOPE_BYTES
) -> Attestation:
    """Verifies a DSSE envelope (JSON bytes) signed by one of ``trusted_keys`` (PEM public key files).

    Raises ``IntegrityError`` with a one-line reason for anything short of a well-formed bastion
    test-result statement with a valid signature by a trusted key.
    """
    from securesystemslib import exceptions as sslib_exceptions
    from securesystemslib.dsse import Envelope

    if not isinstance(envelope, (bytes, bytearray, memoryview)):
        raise _fail("the envelope must be bytes")
    if len(envelope) > max_bytes:
        raise _fail(f"larger than {max_bytes} bytes")
    if not trusted_keys:
        raise _fail("no trusted keys are configured")
    try:
        raw = json.loads(bytes(envelope).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _fail("not valid UTF-8 JSON") from None
    raw = _envelope_shape(raw)
    if raw["payloadType"] != PAYLOAD_TYPE:
        raise _fail(f"payloadType is not {PAYLOAD_TYPE}")
    keys = [_trusted_key(p) for p in trusted_keys]
    try:
        env = Envelope.from_dict(copy.deepcopy(raw))
    except (KeyError, ValueError, TypeError, sslib_exceptions.Error):
        raise _fail("malformed DSSE envelope (base64 or signature fields)") from None
    try:
        accepted = env.verify(keys, 1)
    except (sslib_exceptions.Error, ValueError):
        raise _fail("no valid signature by a trusted key") from None
    signer_keyid = next(iter(accepted))
    try:
        statement = json.loads(env.payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _fail("signed payload is not valid UTF-8 JSON") from None
    return Attestation(**_statement_fields(statement), signer_keyid=signer_keyid, statement=statement)
