"""The deployment files are tested, not just shipped (issue 18, item 4): the systemd unit passes
``systemd-analyze verify`` and carries the hardening the README promises; the Kubernetes manifests pass
``kubernetes-validate --strict`` (PyPI, hash-locked in requirements/clients.lock) against the Kubernetes API
schemas; the configurations both embed load as bastion Settings; and the probes name the health listener."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bastion.config import load_settings

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "systemd" / "bastion.service"
MANIFESTS = ROOT / "deploy" / "kubernetes" / "bastion.yaml"
VALIDATE = Path(sys.executable).parent / "kubernetes-validate"


def _directives(unit: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in unit.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_systemd_unit_verifies_and_is_hardened(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze (Debian's systemd) is needed"
    text = UNIT.read_text()
    # verify checks that ExecStart's program exists: point it at this checkout's.
    local = tmp_path / "bastion.service"
    local.write_text(text.replace("/opt/bastion/.venv/bin/bastion", str(Path(sys.executable).parent / "bastion")))
    run = subprocess.run([analyze, "verify", "--man=no", str(local)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and "bastion.service" not in run.stderr, run.stderr
    d = _directives(text)
    for key, value in {
        "User": "bastion",
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "ProtectHome": "yes",
        "CapabilityBoundingSet": "",
        "KillSignal": "SIGTERM",
    }.items():
        assert d.get(key) == [value], key
    assert set(d["ReadWritePaths"][0].split()) == {"/var/lib/bastion", "/var/cache/bastion"}
    creds = {c.split(":", 1)[0] for c in d["LoadCredential"]}
    # Every key file the configuration names under the credentials directory is a LoadCredential= of the unit.
    config = load_settings(ROOT / "deploy" / "systemd" / "bastion.toml")
    prefix = "/run/credentials/bastion.service/"
    named = {
        str(p)[len(prefix) :]
        for p in (
            config.server.tls.key_file,
            config.http.tls.key_file,
            config.weights.kek_file,
            config.audit.signing_key_file,
            config.audit.content_key_file,
        )
        if p is not None and str(p).startswith(prefix)
    }
    assert named and named <= creds, (named, creds)
    assert str(config.audit.dir).startswith("/var/lib/bastion")


def test_systemd_analyze_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check can fail: a misspelt directive is reported."""
    broken = tmp_path / "bastion.service"
    broken.write_text(
        UNIT.read_text()
        .replace("ProtectSystem=strict", "ProtectSystem=strikt")
        .replace("/opt/bastion/.venv/bin/bastion", str(Path(sys.executable).parent / "bastion"))
    )
    run = subprocess.run(["systemd-analyze", "verify", "--man=no", str(broken)], capture_output=True, text=True)
    assert "strikt" in run.stderr, run.stderr  # and the verifying test requires a clean stderr


def _docs() -> list[dict]:
    return [d for d in yaml.safe_load_all(MANIFESTS.read_text()) if d]


def test_kubernetes_manifests_validate_strictly(tmp_path: Path) -> None:
    run = subprocess.run([str(VALIDATE), "--strict", str(MANIFESTS)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count(" passed for resource ") == len(_docs())
    # The check can fail: an unknown field is refused under --strict.
    bad = tmp_path / "bad.yaml"
    bad.write_text(MANIFESTS.read_text().replace("readOnlyRootFilesystem: true", "readOnlyRootFileSystem: true"))
    run = subprocess.run([str(VALIDATE), "--strict", str(bad)], capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and "readOnlyRootFileSystem" in run.stdout + run.stderr


def test_kubernetes_pod_is_locked_down_and_probes_the_health_listener(tmp_path: Path) -> None:
    docs = {d["kind"]: d for d in _docs()}
    assert set(docs) >= {"Deployment", "ConfigMap", "NetworkPolicy", "ServiceAccount", "Service"}
    cfg = tmp_path / "bastion.toml"
    cfg.write_text(docs["ConfigMap"]["data"]["bastion.toml"])
    settings = load_settings(cfg)
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] and pod["automountServiceAccountToken"] is False
    assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"] and sc["capabilities"]["drop"] == ["ALL"]
    health_port = int(settings.health.listen.rsplit(":", 1)[1])
    probes = {k: container[k]["grpc"] for k in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes == {
        "startupProbe": {"port": health_port, "service": "readiness"},
        "livenessProbe": {"port": health_port, "service": "liveness"},
        "readinessProbe": {"port": health_port, "service": "readiness"},
    }
    start = container["startupProbe"]
    assert start["periodSeconds"] * start["failureThreshold"] >= 600  # the first CPU start compiles for minutes
    secrets = next(v for v in pod["volumes"] if v["name"] == "secrets")["secret"]
    assert secrets["defaultMode"] == 0o400
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    for path in (settings.server.tls.key_file, settings.weights.kek_file, settings.audit.signing_key_file):
        assert path is not None and mounts[str(path.parent)]["readOnly"], path
    assert str(settings.audit.dir).startswith("/var/lib/bastion") and not mounts["/var/lib/bastion"].get("readOnly")
    policy = docs["NetworkPolicy"]["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]


@pytest.mark.parametrize("path", [MANIFESTS, UNIT])
def test_no_secret_is_committed_in_the_deployment_files(path: Path) -> None:
    text = path.read_text()
    assert "BEGIN PRIVATE KEY" not in text and "bst_" not in text and "kind: Secret" not in text
