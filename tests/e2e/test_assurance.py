"""The go-live gate on the real engine (issue 6): `bastion eval` over gRPC as the evaluation principal, the
gate, signed attestations, and the server releasing a model to tenants only with one.

- The session's live server (default sealed model, gate off) is evaluated twice with the CI suite: the
  first run is the go-live baseline and PASSES the CI gate policy; the second, against that baseline,
  PASSES too (the unmodified model does not regress against itself).
- A second server serves a perturbed copy of the model (every weight nudged by noise) with the gate ON:
  tenants are refused (evaluation-only) while the evaluator may call it; the attestation of the
  unmodified model (another digest) and a forged one (signed by an untrusted key) do not release it; its
  evaluation FAILS the CI policy against the baseline (significant regressions) and its FAILED
  attestation releases nothing; a PASSED attestation for exactly its digest (under a policy with no
  limits and no baseline, which passes anything, and which this server pins deliberately in
  ``assurance.accepted_gate_policies`` beside the CI policy: the server accepts only the policies it pins,
  issue 14) does release it, and tenants can then call it.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from e2e_metrics import gauge
from perturb import perturbed_copy

from bastion.v1 import admin_pb2 as apb
from bastion.v1 import admin_pb2_grpc as apb_grpc
from bastion.v1 import inference_pb2 as pb
from bastion.v1 import inference_pb2_grpc as pb_grpc
from conftest import FAST_ENGINE_TOML, LiveServer, launch_server, stop_server, wait_serving
from identity import E2E_DRIFT_CANARIES, bearer_channel

pytestmark = pytest.mark.e2e
MODEL = "smollm2-135m-instruct"
CI_POLICY = Path(__file__).resolve().parents[2] / "python/bastion/assurance/data/gate/ci.toml"
# No limits, no baseline: passes whatever the model does (to show that the server follows the signed
# verdict for exactly this digest).
LENIENT_POLICY = "version = 1\n"


def _policy_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _eval(server: LiveServer, out: Path, *extra: str, policy: Path = CI_POLICY) -> tuple[int, str]:
    key = server.identity.dir / "erin.key"
    key.write_text(server.identity.keys["erin"])
    key.chmod(0o600)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bastion.cli.main",
            "eval",
            MODEL,
            "--target",
            server.target,
            "--api-key-file",
            str(key),
            "--profile",
            "ci",
            "--gate-policy",
            str(policy),
            "--out",
            str(out),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ},
    )
    return proc.returncode, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from bastion.weights.signing import create_signing_key

    d = tmp_path_factory.mktemp("eval-signer")
    pub = create_signing_key(d / "eval.key")
    return d / "eval.key", pub


@pytest.fixture(scope="module")
def baseline(live_server: LiveServer, tmp_path_factory: pytest.TempPathFactory, signer: tuple[Path, Path]) -> Path:
    out = tmp_path_factory.mktemp("eval-baseline")
    code, text = _eval(live_server, out / "run", "--sign-key", str(signer[0]))
    assert code == 0, text
    return out / "run"


def test_eval_writes_garak_compatible_report_and_passes(baseline: Path) -> None:
    summary = json.loads((baseline / "summary.json").read_text())
    assert summary["gate"]["verdict"] == "PASSED"
    assert summary["suite"]["profile"] == "ci" and summary["suite"]["digest"].startswith("sha256:")
    rows = [json.loads(line) for line in (baseline / "report.jsonl").read_text().splitlines()]
    attempts = [r for r in rows if r["entry_type"] == "attempt"]
    evals = [r for r in rows if r["entry_type"] == "eval"]
    assert len(attempts) == sum(f["n"] for f in summary["figures"].values()) > 0
    assert all(r["status"] == 2 and r["outputs"][0]["text"] is not None for r in attempts)
    assert sum(e["total"] for e in evals) == len(attempts)
    # The model answers its capability probes: the golden-answer family is not all misses.
    cap = summary["figures"]["capability"]
    assert cap["hits"] < cap["n"], cap
    for f in summary["figures"].values():
        assert 0 <= f["ci_low"] <= f["rate"] <= f["ci_high"] <= 1


def test_unmodified_model_passes_against_its_own_baseline(
    live_server: LiveServer, baseline: Path, tmp_path: Path
) -> None:
    code, text = _eval(live_server, tmp_path / "again", "--baseline", str(baseline / "summary.json"))
    assert code == 0, text
    summary = json.loads((tmp_path / "again" / "summary.json").read_text())
    assert summary["gate"]["verdict"] == "PASSED"
    # Greedy decoding: the same probes give the same outcomes.
    first = json.loads((baseline / "summary.json").read_text())
    same = sum(summary["probe_hits"][k] == v for k, v in first["probe_hits"].items())
    assert same >= 0.95 * len(first["probe_hits"]), (same, len(first["probe_hits"]))


@pytest.fixture(scope="module", autouse=True)
def perturbed_launched(
    tmp_path_factory: pytest.TempPathFactory, signer: tuple[Path, Path], live_server: LiveServer
) -> Iterator[LiveServer]:
    """The perturbed copy's server, launched when the module starts so its engine boots while the baseline
    evaluations run on the live server; ``perturbed_server`` waits for it."""
    from bastion.config import load_settings
    from bastion.models.default import ensure_default_model

    d = tmp_path_factory.mktemp("perturbed")
    plain = ensure_default_model(load_settings(None).cache_dir).path
    model = perturbed_copy(plain, d / "model", scale=0.5, seed=7)
    atts = d / "attestations"
    atts.mkdir()
    # The go-live drift baseline of the unmodified model (taken by the live server at its start). Both servers
    # use the default drift seed (<cache_dir>/keys/drift.key): the copy's MAC verifies and, without an audit
    # record of it in the new server's log, it is adopted; the perturbed weights then alarm against it.
    drift = d / "drift"
    drift.mkdir()
    baseline_file = live_server.identity.dir / "drift" / f"{MODEL}.baseline.json"
    deadline = time.monotonic() + 120  # the live server takes its go-live baseline just after it is SERVING
    while not baseline_file.exists():
        assert time.monotonic() < deadline, "the live server wrote no drift baseline"
        time.sleep(0.5)
    (drift / baseline_file.name).write_bytes(baseline_file.read_bytes())
    toml = f"""
[model]
source = "{model}"
served_name = "{MODEL}"
{FAST_ENGINE_TOML}[weights]
allow_unsealed = true
"""
    assurance = (
        f'[assurance]\nrequire_attestation = true\nattestations_dir = "{atts}"\n'
        f'trusted_keys = ["{signer[1]}"]\naccepted_suites = ["ci"]\n'
        # The gate policies whose verdicts this server accepts: the CI one and (deliberately) the lenient one.
        f'accepted_gate_policies = ["{_policy_digest(CI_POLICY.read_bytes())}", '
        f'"{_policy_digest(LENIENT_POLICY.encode())}"]\n'
        # Alert only: the gate's steps below need the model out of quarantine.
        f'[assurance.drift]\ndir = "{drift}"\nquarantine = false\n{E2E_DRIFT_CANARIES}[assurance.redteam]\nenabled = false\n'
    )
    server = launch_server(d / "srv", model_toml=toml, assurance_toml=assurance)
    try:
        yield server
    finally:
        stop_server(server)


@pytest.fixture(scope="module")
def perturbed_server(perturbed_launched: LiveServer) -> LiveServer:
    return wait_serving(perturbed_launched)


def _generate(server: LiveServer, who: str) -> grpc.StatusCode:
    with bearer_channel(server.target, server.identity.keys[who]) as ch:
        stub = pb_grpc.InferenceStub(ch)
        req = pb.GenerateRequest(
            model=MODEL, prompt="What is the capital of France?", sampling=pb.SamplingParams(max_tokens=4)
        )
        try:
            list(stub.Generate(req, timeout=120))
            return grpc.StatusCode.OK
        except grpc.RpcError as exc:
            return exc.code()


def _admin(server: LiveServer, call: str) -> object:
    with bearer_channel(server.target, server.identity.keys["alice"]) as ch:
        stub = apb_grpc.AdminStub(ch)
        if call == "status":
            return stub.ModelStatus(apb.ModelStatusRequest(), timeout=30)
        if call == "drift":
            return stub.CheckDrift(apb.CheckDriftRequest(), timeout=300)
        return stub.ReloadAttestations(apb.ReloadAttestationsRequest(), timeout=60)


def _audit_records(server: LiveServer) -> list[dict[str, object]]:
    out = []
    for seg in sorted(server.audit_dir.glob("audit-*.jsonl")):
        for line in seg.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def test_drift_stays_quiet_on_the_same_weights(live_server: LiveServer) -> None:
    drift = _admin(live_server, "drift").models[0]
    status = _admin(live_server, "status").models[0]
    print(
        f"drift check on the same weights: delta {drift.delta:.3g}, tolerance {drift.tolerance:.3g}, "
        f"noise floor {drift.noise_floor:.3g}, {drift.seconds:.1f} s"
    )
    assert drift.status == "quiet" and drift.delta <= drift.tolerance and drift.alerts == 0, drift
    assert drift.baseline_digest == status.digest


def test_gate_on_a_perturbed_copy(
    perturbed_server: LiveServer, baseline: Path, signer: tuple[Path, Path], tmp_path: Path
) -> None:
    server = perturbed_server
    atts = Path(server.log_path).parent.parent / "attestations"
    # Drift: the perturbed copy serves under the name whose go-live baseline is the unmodified model's;
    # a check (the one at start, or this one when it comes first) alarms, confirmed by a second measurement.
    drift = _admin(server, "drift").models[0]
    print(
        f"drift check on the perturbed copy: delta {drift.delta:.3g}, tolerance {drift.tolerance:.3g}, "
        f"{drift.seconds:.1f} s"
    )
    assert drift.status == "alert" and drift.alerts >= 1 and drift.delta > 100 * drift.tolerance, drift
    alerts = [r for r in _audit_records(server) if r.get("event") == "drift"]
    assert alerts and alerts[0]["decision"] == "alert" and alerts[0]["kind"] == "decision", alerts
    assert gauge(server.metrics_url, "bastion_drift_alerts_total") >= 1
    assert "drift ALERT" in server.log_text()
    # Unattested: evaluation-only. Tenants are refused; the evaluator may call it; status says why.
    assert _generate(server, "bob") == grpc.StatusCode.FAILED_PRECONDITION
    assert _generate(server, "erin") == grpc.StatusCode.OK
    status = _admin(server, "status").models[0]
    assert status.release == "evaluation_only" and status.attestation

    # The unmodified model's attestation (valid signature, another digest) does not release it; nor does
    # a forged one (the same statement signed by a key the server does not trust).
    (atts / "unmodified.intoto.json").write_bytes((baseline / "attestation.intoto.json").read_bytes())
    from bastion.assurance.attestation import sign_statement
    from bastion.weights.signing import create_signing_key

    rogue = create_signing_key(tmp_path / "rogue.key")
    assert rogue.exists()
    statement = json.loads((baseline / "attestation.intoto.json").read_text())
    import base64

    payload = json.loads(base64.b64decode(statement["payload"]))
    payload["subject"][0]["digest"] = {"blake3": status.digest.split(":", 1)[1]}
    (atts / "forged.intoto.json").write_bytes(sign_statement(payload, tmp_path / "rogue.key"))
    reloaded = _admin(server, "reload")
    assert reloaded.files == 2 and reloaded.rejected == 1, reloaded
    assert reloaded.models[0].release == "evaluation_only"
    assert _generate(server, "bob") == grpc.StatusCode.FAILED_PRECONDITION

    # Against the baseline the perturbed copy regresses significantly: FAILED, and its (FAILED)
    # attestation releases nothing.
    code, text = _eval(
        server,
        tmp_path / "perturbed",
        "--baseline",
        str(baseline / "summary.json"),
        "--sign-key",
        str(signer[0]),
        "--attestations-dir",
        str(atts),
    )
    assert code == 1, text
    summary = json.loads((tmp_path / "perturbed" / "summary.json").read_text())
    assert summary["gate"]["verdict"] == "FAILED", summary["gate"]
    # It fails on a significant regression against the baseline, not only on the absolute limit.
    assert any(row.get("regressed") for row in summary["gate"]["families"].values()), summary["gate"]
    assert _admin(server, "reload").models[0].release == "evaluation_only"

    # A PASSED attestation for exactly this digest releases it.
    lenient = tmp_path / "lenient.toml"
    lenient.write_text(LENIENT_POLICY)
    code, text = _eval(
        server, tmp_path / "golive", "--sign-key", str(signer[0]), "--attestations-dir", str(atts), policy=lenient
    )
    assert code == 0, text
    after = _admin(server, "reload").models[0]
    assert after.release == "released" and "PASSED" in after.attestation
    assert _generate(server, "bob") == grpc.StatusCode.OK
