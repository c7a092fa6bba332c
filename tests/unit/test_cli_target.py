"""Red team (issue 15, item 9): the CLI sends credentials in clear. A client target that is neither loopback
nor a unix socket gets TLS or nothing: it is refused before any channel exists (ConfigError, exit 2, naming
--ca-file); ``eval`` checks ``--expect-digest`` before it runs anything."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bastion.cli import client
from bastion.cli.main import main
from bastion.config import Settings
from bastion.errors import ConfigError

LOCAL = [
    "127.0.0.1:50051",
    "127.0.0.1",
    "127.255.255.254:1",
    "127.1.2.3:50051",
    "[::1]:50051",
    "[::1]",
    "::1",
    "localhost:50051",
    "localhost",
    "unix:/run/bastion.sock",
    "unix:relative.sock",
    "unix:///run/bastion.sock",
    "unix-abstract:bastion",
]
REMOTE = [
    "10.0.0.5:50051",
    "192.0.2.10:50051",
    "[2001:db8::1]:50051",
    "2001:db8::1",
    "0.0.0.0:50051",  # a wildcard is where a server binds, not a peer a client may trust to be local
    "[::]:50051",
    "localhost.evil.com:50051",
    "localhost.:50051",
    "127.0.0.1.evil.com:50051",
    "evil-localhost:50051",
    "127.1:50051",  # inet_aton shorthand: not an address this check recognises, so not loopback
    "2130706433:50051",
    "evil.com",
    "dns:///localhost:50051",  # other gRPC naming schemes resolve elsewhere: refused without TLS
    "dns:localhost:50051",
    "ipv4:127.0.0.1:50051",
    "ipv6:[::1]:50051",
    "[::1]x:50051",
    "[::1]:port",
    "localhost:port",
    "",
]


@pytest.mark.parametrize("target", LOCAL)
def test_loopback_and_unix_targets_are_local(target: str) -> None:
    assert client.is_local_target(target)


@pytest.mark.parametrize("target", REMOTE)
def test_everything_else_is_not_local(target: str) -> None:
    assert not client.is_local_target(target)


@pytest.fixture
def no_channels(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Fails the test if any channel is opened; returns the targets channels were asked for."""
    opened: list[str] = []

    def refuse(target: str, *args: Any, **kwargs: Any) -> Any:
        opened.append(target)
        raise AssertionError(f"a channel to {target} was opened")

    import grpc

    monkeypatch.setattr(grpc.aio, "insecure_channel", refuse)
    return opened


@pytest.mark.parametrize("target", ["10.0.0.5:50051", "localhost.evil.com:50051", "dns:///localhost:50051"])
def test_plaintext_to_a_remote_target_is_refused_before_any_channel(target: str, no_channels: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        client.open_channel(target, Settings(), bearer="bst_secret")
    assert "--ca-file" in str(err.value) and "bst_secret" not in str(err.value)
    with pytest.raises(ConfigError) as err:
        client.open_health_channel(target, Settings())
    assert "--ca-file" in str(err.value)
    assert no_channels == []


@pytest.mark.parametrize(
    "argv",
    [
        ["generate", "--target", "localhost.evil.com:50051", "--model", "m", "hello"],
        ["health", "--target", "10.0.0.5:50051"],
        ["health", "--health-listener", "--target", "10.0.0.5:50052"],
        ["admin", "tenants", "--target", "10.0.0.5:50051"],
        ["audit-isolation", "--target", "10.0.0.5:50051", "--api-key-file", "A", "--other-api-key-file", "B"],
    ],
)
def test_client_commands_refuse_plaintext_to_a_remote_target(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str], no_channels: list[str], monkeypatch: Any
) -> None:
    monkeypatch.setenv("BASTION_API_KEY", "bst_secret")
    for name in ("A", "B"):
        (tmp_path / name).write_text("bst_secret\n")
    argv = [str(tmp_path / a) if a in ("A", "B") else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--ca-file" in err and "bst_secret" not in err
    assert no_channels == []


def test_eval_refuses_a_remote_target_without_tls_before_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_channels: list[str]
) -> None:
    out = tmp_path / "out"
    assert main(["eval", "m", "--target", "198.51.100.7:50051", "--profile", "ci", "--out", str(out)]) == 2
    assert "--ca-file" in capsys.readouterr().err
    assert not out.exists() and no_channels == []


@pytest.mark.parametrize("digest", ["abc", "blake3:xyz", "blake3:" + "a" * 63, "sha256:" + "a" * 64 + "0"])
def test_eval_expect_digest_must_be_a_digest(tmp_path: Path, capsys: pytest.CaptureFixture[str], digest: str) -> None:
    out = tmp_path / "out"
    argv = ["eval", "m", "--target", "unix:/nonexistent.sock", "--out", str(out), "--expect-digest", digest]
    assert main(argv) == 2
    assert "--expect-digest" in capsys.readouterr().err
    assert not out.exists()
