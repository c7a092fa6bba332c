"""How a node is started (without starting one): the ``ray start`` command line and environment, the
start hook, the token and CA commands, and refusals through the command line."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cluster_util import Pki, node_fields, node_settings, toml
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from bastion.cli.main import main
from bastion.cluster import node, start_hook
from bastion.cluster.preflight import check_node, check_token_file
from bastion.cluster.settings import ClusterSettings
from bastion.cluster.token import write_token
from bastion.errors import ConfigError

IP = "127.0.0.2"


def _start_argv(s: ClusterSettings, *, head: bool) -> list[str]:
    return node.ray_start_argv(s, check_node(s), head=head, head_address=None if head else "127.0.0.2:6379")


def test_head_command_line_is_locked_down_and_holds_no_secret(base: Path, pki: Pki) -> None:
    s = node_settings(base, pki, "head", IP, num_cpus=1, object_store_bytes=100_000_000)
    argv = _start_argv(s, head=True)
    assert argv[0].endswith("/ray") and argv[1] == "start"
    for flag in (
        "--head",
        "--port=6379",
        "--include-dashboard=false",
        "--disable-usage-stats",
        f"--node-ip-address={IP}",
        "--node-manager-port=6380",
        "--object-manager-port=6381",
        "--dashboard-agent-listen-port=6382",
        "--dashboard-agent-grpc-port=6383",
        "--runtime-env-agent-port=6384",
        "--metrics-export-port=6385",
        "--min-worker-port=10002",
        "--max-worker-port=10999",
        f"--temp-dir={base / 't-head' / 'ray'}",
        f"--object-spilling-directory={base / 's-head' / 'ray'}",
        "--num-cpus=1",
        "--object-store-memory=100000000",
    ):
        assert flag in argv, flag
    token = pki.token.read_text().strip()
    assert not any(token in a for a in argv)
    assert not any("ray-client-server" in a or "dashboard-host" in a for a in argv)


def test_worker_command_line_joins_the_head(base: Path, pki: Pki) -> None:
    argv = _start_argv(node_settings(base, pki, "worker", "127.0.0.3"), head=False)
    assert "--address=127.0.0.2:6379" in argv and "--head" not in argv
    assert not any(a.startswith("--port=") for a in argv)


def test_node_environment_token_and_tls_from_files_only(base: Path, pki: Pki) -> None:
    s = node_settings(base, pki, "head", IP)
    paths = check_node(s)
    inherited = {
        "PATH": "/usr/bin",
        "HOME": "/root",
        "RAY_AUTH_MODE": "disabled",  # would turn token auth off
        "RAY_USE_TLS": "0",
        "RAY_AUTH_TOKEN": "f" * 64,
        "BASTION_API_KEY": "bk_secret",
        "BAO_TOKEN": "hvs.AAAAAAAAAAAAAAAAAAAAAAAA",
        "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "SOME_OPTION": "-----BEGIN PRIVATE KEY-----",
        "CUDA_VISIBLE_DEVICES": "0,1",
        "SSL_CERT_FILE": "/etc/ssl/certs/ca.pem",
        "VLLM_CPU_OMP_THREADS_BIND": "0-15",
    }
    env, dropped = node.node_env(s, paths, inherited)
    assert set(dropped) == {
        "RAY_AUTH_MODE",
        "RAY_USE_TLS",
        "RAY_AUTH_TOKEN",
        "BASTION_API_KEY",
        "BAO_TOKEN",
        "AWS_SECRET_ACCESS_KEY",
        "SOME_OPTION",
    }
    for kept in ("PATH", "HOME", "CUDA_VISIBLE_DEVICES", "SSL_CERT_FILE", "VLLM_CPU_OMP_THREADS_BIND"):
        assert env[kept] == inherited[kept]
    assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN_PATH"] == str(pki.token)
    assert env["RAY_USE_TLS"] == "1"
    tls = (env["RAY_TLS_SERVER_CERT"], env["RAY_TLS_SERVER_KEY"], env["RAY_TLS_CA_CERT"])
    assert tls == (str(paths.cert_file), str(paths.key_file), str(pki.ca))
    assert env["RAY_USAGE_STATS_ENABLED"] == "0"
    assert env["RAY_health_check_failure_threshold"] == "10"
    assert env["RAY_START_HOOK"] == "bastion.cluster.start_hook.lock_down"
    assert env[node.MARKER] == str(base / "t-head")
    assert "RAY_AUTH_TOKEN" not in env
    token = pki.token.read_text().strip()
    key = Path(env["RAY_TLS_SERVER_KEY"]).read_text()
    assert not any(token in v or "PRIVATE KEY" in v or key in v for v in env.values())


def test_start_refuses_before_running_anything(base: Path, pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_run(*a: Any, **kw: Any) -> None:
        raise AssertionError("ray start must not run")

    monkeypatch.setattr(subprocess, "run", no_run)
    pki.token.chmod(0o644)
    with pytest.raises(ConfigError, match="cluster.token_file"):
        node.start_node(node_settings(base, pki, "head", IP), head=True)
    pki.token.chmod(0o600)
    with pytest.raises(ConfigError, match="cluster.head_address"):
        node.start_node(node_settings(base, pki, "worker", "127.0.0.3"), head=False)


def test_start_failure_names_the_log(base: Path, pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(node, "ray_executable", lambda: Path("/bin/false"))
    from bastion.errors import BastionError

    with pytest.raises(BastionError, match=r"ray start failed \(exit status 1\); its output is in .*ray-start.log"):
        node.start_node(node_settings(base, pki, "head", IP), head=True, timeout_s=20)
    log = base / "t-head" / "ray-start.log"
    assert stat.S_IMODE(log.stat().st_mode) == 0o600


def test_stop_finds_no_node_when_none_runs(base: Path) -> None:
    assert node.node_processes(base / "t-none") == []
    assert node.stop_node(base / "t-none", grace_s=0.1) == 0


def test_stop_ends_exactly_the_marked_processes(base: Path) -> None:
    marked = {**os.environ, node.MARKER: str(base / "t-a")}
    other = {**os.environ, node.MARKER: str(base / "t-b")}
    # A marked parent with an unmarked child (a worker that cleared its environment), and another node.
    a = subprocess.Popen(["sh", "-c", "env -i sleep 60 & wait"], env=marked)
    b = subprocess.Popen(["sleep", "60"], env=other)
    try:
        for _ in range(50):
            if len(node.node_processes(base / "t-a")) == 2:
                break
            import time

            time.sleep(0.05)
        assert len(node.node_processes(base / "t-a")) == 2
        assert node.stop_node(base / "t-a", grace_s=5) == 2
        assert a.wait(timeout=5) is not None
        assert node.node_processes(base / "t-a") == []
        assert b.poll() is None  # the other node's process is untouched
    finally:
        b.kill()
        b.wait()
        a.kill()
        a.wait()


class _Params:
    ray_client_server_port: int | None = 10001
    include_dashboard: bool | None = None
    dashboard_agent_listen_port = 6382


def test_start_hook_turns_the_client_server_off_and_tells_the_raylet_the_agent_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ray._private import services

    seen: list[tuple[list[str], str]] = []
    monkeypatch.setattr(
        services, "start_ray_process", lambda command, process_type, *a, **kw: seen.append((command, process_type))
    )
    params = _Params()
    start_hook.lock_down(params, True)
    assert params.ray_client_server_port is None and params.include_dashboard is False
    services.start_ray_process(["raylet", "--x"], "raylet")
    services.start_ray_process(["gcs_server"], "gcs_server")
    assert seen == [(["raylet", "--x", "--dashboard_agent_listen_port=6382"], "raylet"), (["gcs_server"], "gcs_server")]


def test_token_file_is_0600_whatever_the_umask_and_never_replaced_silently(base: Path) -> None:
    old = os.umask(0)
    try:
        path = write_token(base / "cluster.token")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    check_token_file(path)
    first = path.read_text()
    assert len(first.strip()) == 64
    with pytest.raises(ConfigError, match="already exists"):
        write_token(path)
    write_token(path, rotate=True)
    assert path.read_text() != first and stat.S_IMODE(path.stat().st_mode) == 0o600
    link = base / "link.token"
    link.symlink_to(path)
    with pytest.raises(ConfigError, match="symbolic link"):
        write_token(link, rotate=True)


def test_cli_token_ca_issue(base: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cluster", "token", "--file", str(base / "tok")]) == 0
    assert main(["cluster", "ca", str(base / "ca")]) == 0
    assert main(["cluster", "issue", str(base / "ca"), "n1", "--ip", "10.0.0.5", "--ip", "fd00::5"]) == 0
    out = capsys.readouterr().out
    assert (base / "tok").read_text().strip() not in out
    cert = x509.load_pem_x509_certificate((base / "ca" / "n1.pem").read_bytes())
    ca = x509.load_pem_x509_certificate((base / "ca" / "ca.pem").read_bytes())
    cert.verify_directly_issued_by(ca)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["10.0.0.5", "fd00::5"]
    usages = set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    assert usages == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    for f in ("ca.key", "n1.key"):
        assert stat.S_IMODE((base / "ca" / f).stat().st_mode) == 0o600
    assert main(["cluster", "ca", str(base / "ca")]) == 2  # never overwrites
    assert main(["cluster", "issue", str(base / "ca"), "n1", "--ip", "10.0.0.5"]) == 2
    assert main(["cluster", "issue", str(base / "ca"), "n2", "--ip", "node.example"]) == 2
    assert main(["cluster", "token", "--file", str(base / "tok")]) == 2


@pytest.mark.parametrize(
    ("change", "names"),
    [
        ({"token_file": "/nonexistent/token"}, "cluster.token_file"),
        ({"tls_ca_file": "/nonexistent/ca.pem"}, "cluster.tls_ca_file"),
        ({"spill_dir": "SHARED"}, "cluster.spill_dir"),
    ],
)
def test_cli_start_refusals_are_one_line_exit_2(
    base: Path, pki: Pki, capsys: pytest.CaptureFixture[str], change: dict[str, str], names: str
) -> None:
    shared = base / "shared"
    shared.mkdir()
    shared.chmod(0o755)
    change = {k: str(shared) if v == "SHARED" else v for k, v in change.items()}
    cfg = base / "node.toml"
    cfg.write_text(toml(node_fields(base, pki, "head", IP, **change)))
    assert main(["cluster", "start-head", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {names}") and "\n" not in err
    assert not (base / "t-head" / "ray-start.log").exists()
