from __future__ import annotations

from pathlib import Path

import pytest

from bastion.config import load_settings
from bastion.errors import ConfigError


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("BASTION_") or key == "_BASTION_CONFIG_FILE":
            monkeypatch.delenv(key)


def test_secure_defaults() -> None:
    s = load_settings()
    assert s.server.listen == "127.0.0.1:50051"
    assert not s.server.reflection
    assert not s.server.tls.enabled
    assert s.server.max_receive_message_bytes == 1 << 20
    assert s.observability.metrics_listen == "127.0.0.1:9464"
    assert s.limits.max_tokens == 4096 and s.limits.default_max_tokens == 256


@pytest.mark.parametrize("listen", ["0.0.0.0:50051", "10.1.2.3:443", "[::]:50051", "example.com:1"])
def test_tls_required_off_loopback(listen: str) -> None:
    with pytest.raises(ConfigError, match="TLS is required"):
        load_settings(overrides={"server": {"listen": listen}})


def test_tls_allows_any_listener(tmp_path: Path) -> None:
    s = load_settings(
        overrides={
            "server": {"listen": "0.0.0.0:443", "tls": {"cert_file": tmp_path / "c", "key_file": tmp_path / "k"}}
        }
    )
    assert s.server.tls.enabled


def test_loopback_and_unix_need_no_tls() -> None:
    assert load_settings(overrides={"server": {"listen": "[::1]:1"}}).server.listen == "[::1]:1"
    assert load_settings(overrides={"server": {"listen": "unix:/tmp/b.sock"}}).server.listen == "unix:/tmp/b.sock"


def test_env_override_and_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "bastion.toml"
    cfg.write_text('[server]\nlisten = "127.0.0.1:7000"\ngrace_period_s = 3\n[limits]\nmax_tokens = 100\n')
    assert load_settings(cfg).server.listen == "127.0.0.1:7000"
    monkeypatch.setenv("BASTION_SERVER__LISTEN", "127.0.0.1:7001")
    s = load_settings(cfg)
    assert s.server.listen == "127.0.0.1:7001" and s.server.grace_period_s == 3 and s.limits.max_tokens == 100
    s = load_settings(cfg, {"server": {"listen": "unix:/tmp/x.sock"}})
    assert s.server.listen == "unix:/tmp/x.sock" and s.server.grace_period_s == 3


def test_errors_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nmax_inflight_requests = 0\nbogus = 1\n")
    with pytest.raises(ConfigError) as info:
        load_settings(bad)
    assert "server.max_inflight_requests" in str(info.value) and "server.bogus" in str(info.value)


def test_metrics_listen_off_loopback_needs_tls() -> None:
    with pytest.raises(ConfigError, match="metrics_listen"):
        load_settings(overrides={"observability": {"metrics_listen": "0.0.0.0:9464"}})
    assert load_settings(overrides={"observability": {"metrics_listen": ""}}).observability.metrics_listen == ""


def test_adapters_need_unsealed_weights_until_adapters_are_signed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="model.adapters: adapters are not sealed or signed yet"):
        load_settings(overrides={"model": {"adapters": {"support-v1": str(tmp_path)}}})
    s = load_settings(
        overrides={"model": {"adapters": {"support-v1": str(tmp_path)}}, "weights": {"allow_unsealed": True}}
    )
    assert s.model.adapters == {"support-v1": tmp_path}
    with pytest.raises(ConfigError, match="adapter name"):
        load_settings(overrides={"model": {"adapters": {"a/b": str(tmp_path)}}, "weights": {"allow_unsealed": True}})


def test_reflection_is_refused_with_the_descriptor_set_named(tmp_path: Path) -> None:
    """Issue 18: ``server.reflection = true`` was accepted and then failed at start (grpcio-reflection is not in
    the lock). A hardened server does not list its API; clients get the committed descriptor set."""
    cfg = tmp_path / "bastion.toml"
    cfg.write_text("[server]\nreflection = true\n")
    with pytest.raises(ConfigError, match=r"server\.reflection.*bastion_v1\.binpb"):
        load_settings(cfg)
    protoset = Path(__file__).resolve().parents[2] / "python/bastion/v1/bastion_v1.binpb"
    from google.protobuf import descriptor_pb2

    files = descriptor_pb2.FileDescriptorSet.FromString(protoset.read_bytes()).file
    services = {f"{f.package}.{s.name}" for f in files for s in f.service}
    assert {"bastion.v1.Inference", "bastion.v1.Admin"} <= services
