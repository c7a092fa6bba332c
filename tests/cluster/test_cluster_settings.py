"""``[cluster]`` settings: addresses, ports, and the refusal of anything secret that Ray would ship."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from pydantic import ValidationError

from bastion.cluster.settings import ClusterSettings, looks_like_secret
from bastion.config import Settings, load_settings
from bastion.errors import ConfigError


def test_defaults_are_valid_and_name_no_cluster() -> None:
    s = Settings().cluster
    assert not s.configured
    assert s.token_file is None and s.replica_env == {}
    assert s.health_check_failure_threshold > 5 and s.health_check_timeout_ms > 10000  # above Ray's defaults


def test_frozen_and_unknown_keys_refused() -> None:
    s = ClusterSettings(node_ip="10.0.0.5")
    with pytest.raises(ValidationError):
        s.node_ip = "10.0.0.6"  # type: ignore[misc]  # frozen: the assignment is the point of the test
    with pytest.raises(ValidationError, match="extra"):
        ClusterSettings(dashboard=True)  # type: ignore[call-arg]  # an unknown key is the point of the test


def test_loaded_from_toml_and_unknown_key_names_the_section(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[cluster]\nnode_ip = "10.1.2.3"\nhead_address = "10.1.2.1:6379"\ngcs_port = 7000\n')
    s = load_settings(cfg).cluster
    assert (s.node_ip, s.head_address, s.gcs_port) == ("10.1.2.3", "10.1.2.1:6379", 7000)
    cfg.write_text("[cluster]\ninclude_dashboard = true\n")
    with pytest.raises(ConfigError, match="cluster.include_dashboard"):
        load_settings(cfg)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("node1.example", "IPv4 or IPv6 address"),
        ("0.0.0.0", "wildcard"),
        ("::", "wildcard"),
        ("127.0.0.1", "127.0.0.2"),
        ("224.0.0.1", "multicast"),
    ],
)
def test_node_ip_refused(value: str, problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        ClusterSettings(node_ip=value)


@pytest.mark.parametrize("value", ["127.0.0.2", "10.0.0.5", "fd00::5"])
def test_node_ip_accepted(value: str) -> None:
    assert ClusterSettings(node_ip=value).node_ip == value


@pytest.mark.parametrize("value", ["10.0.0.1", "10.0.0.1:", "head:6379", "10.0.0.1:99999", "127.0.0.1:6379"])
def test_head_address_refused(value: str) -> None:
    with pytest.raises(ValidationError, match="cluster.head_address"):
        ClusterSettings(head_address=value)


def test_head_address_ipv6() -> None:
    assert ClusterSettings(head_address="[fd00::1]:6379").head_address == "[fd00::1]:6379"


def test_ports_distinct_outside_worker_range_and_unprivileged() -> None:
    with pytest.raises(ValidationError, match="cluster.node_manager_port and cluster.gcs_port are the same port"):
        ClusterSettings(node_manager_port=6379)
    with pytest.raises(ValidationError, match="cluster.metrics_export_port lies inside"):
        ClusterSettings(metrics_export_port=10500)
    with pytest.raises(ValidationError, match="min_worker_port must be below"):
        ClusterSettings(min_worker_port=20000, max_worker_port=20000)
    with pytest.raises(ValidationError):
        ClusterSettings(gcs_port=80)


SECRET_VALUES = {
    "pem": "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n-----END PRIVATE KEY-----",
    "ray_token": secrets.token_hex(32),
    "jwt": "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl",
    "bearer": "Bearer abc.def",
    "vault": "hvs.CAESIJ6dzKx0q1b2c3d4e5f6g7h8",
    # Fixed strings: the entropy rule is a heuristic (a random 32-byte key escapes it about 2 in 10,000).
    "b64_key": "q3J8vX2mN7pL0sT4wY6zA1bC5dE9fG3hK8jM2nP4rS6u",
    "urlsafe_key": "kX9-2mQ_pL0sT4wY6zA1bC5dE9fG3hK8jM2nP4rS6uVw7yB1cD3eF5gH7iJ9kL",
}


@pytest.mark.parametrize("kind", sorted(SECRET_VALUES))
def test_replica_env_refuses_key_material_without_echoing_it(kind: str) -> None:
    value = SECRET_VALUES[kind]
    with pytest.raises(ValidationError, match="cluster.replica_env.OPTION: the value looks like key material"):
        ClusterSettings(replica_env={"OPTION": value})
    # The operator's error (bastion.config's one message) names the variable, never the value.
    with pytest.raises(ConfigError, match="cluster.replica_env.OPTION") as info:
        load_settings(None, {"cluster": {"replica_env": {"OPTION": value}}})
    assert value not in str(info.value) and value not in (info.value.detail or "")


@pytest.mark.parametrize("name", ["API_KEY", "HF_HUB_TOKEN", "DB_PASSWORD", "MY_SECRET", "HSM_PIN"])
def test_replica_env_refuses_secret_names_unless_they_hold_a_path(name: str) -> None:
    with pytest.raises(ValidationError, match=f"cluster.replica_env.{name}: the name says secret"):
        ClusterSettings(replica_env={name: "short"})
    with pytest.raises(ValidationError, match="the name says secret"):
        ClusterSettings(replica_env={name + "_FILE": "relative/path"})
    ok = ClusterSettings(replica_env={name + "_FILE": "/run/secrets/x"})
    assert ok.replica_env == {name + "_FILE": "/run/secrets/x"}


@pytest.mark.parametrize(
    "name", ["RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE", "BAO_TOKEN", "HF_TOKEN", "BASTION_PKCS11_PIN"]
)
def test_replica_env_refuses_credential_variables_outright(name: str) -> None:
    with pytest.raises(ValidationError, match=f"cluster.replica_env.{name}"):
        ClusterSettings(replica_env={name: "/some/path"})


def test_replica_env_accepts_paths_and_plain_options() -> None:
    env = {
        "VLLM_CPU_OMP_THREADS_BIND": "0-15|16-31",
        "VLLM_CPU_KVCACHE_SPACE": "4",
        "BASTION_PARTITION_KEY_FILE": "/etc/bastion/node/partition.key",
        "MODEL_DIR": "/var/lib/bastion/models/meta-llama-Llama-3.1-70B-Instruct-awq-int4-gs128",
        "HF_HUB_OFFLINE": "1",
    }
    assert ClusterSettings(replica_env=env).replica_env == env


@pytest.mark.parametrize("name", ["1ABC", "A-B", "A B", ""])
def test_replica_env_refuses_bad_names(name: str) -> None:
    with pytest.raises(ValidationError, match="not an environment variable name"):
        ClusterSettings(replica_env={name: "x"})


def test_looks_like_secret_leaves_names_and_paths_alone() -> None:
    for ok in (
        "SmolLM2-135M-Instruct-converted-float32-v2",
        "/nix/store/0c5jp9d6pz0y4bk6xqj4ra6frvjsk1ka-python3-3.11.9/bin",
        "/root/.cache/huggingface/hub/models--x--y/snapshots/" + "0123456789abcdef" * 2 + "01234567",
        "en_US.UTF-8",
        "nvidia_a100_80gb_pcie_x8_node_pool_eu_west_4",
    ):
        assert not looks_like_secret(ok), ok


@pytest.mark.parametrize(
    "field", ["token_file", "tls_cert_file", "tls_key_file", "tls_ca_file", "temp_dir", "spill_dir"]
)
def test_paths_must_be_absolute(field: str) -> None:
    with pytest.raises(ValidationError, match=f"cluster.{field} must be an absolute path"):
        ClusterSettings(**{field: "relative/file"})
