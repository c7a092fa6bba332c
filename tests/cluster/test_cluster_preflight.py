"""The refusals before a node starts: each a ConfigError naming the setting (no Ray process involved)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cluster_util import Pki, node_settings

from bastion.cluster.pki import create_ca, issue
from bastion.cluster.preflight import check_node
from bastion.errors import ConfigError

IP = "127.0.0.2"


def test_a_complete_node_passes_and_gets_subdirectories_for_ray(base: Path, pki: Pki) -> None:
    s = node_settings(base, pki, "head", IP)
    paths = check_node(s)
    assert paths.ray_temp_dir == base / "t-head" / "ray" and paths.ray_spill_dir == base / "s-head" / "ray"
    for d in (base / "t-head", base / "s-head"):  # created private
        assert stat.S_IMODE(os.lstat(d).st_mode) == 0o700
    assert paths.token_file == pki.token and paths.ca_file == pki.ca


@pytest.mark.parametrize(
    "field", ["token_file", "tls_cert_file", "tls_key_file", "tls_ca_file", "temp_dir", "spill_dir"]
)
def test_each_required_setting_is_named_when_missing(base: Path, pki: Pki, field: str) -> None:
    s = node_settings(base, pki, "head", IP, **{field: None})
    with pytest.raises(ConfigError, match=f"cluster.{field} is not set"):
        check_node(s)


def test_node_ip_required(base: Path, pki: Pki) -> None:
    with pytest.raises(ConfigError, match="cluster.node_ip is not set"):
        check_node(node_settings(base, pki, "head", IP, node_ip=""))


def test_token_file_missing(base: Path, pki: Pki) -> None:
    with pytest.raises(ConfigError, match="cluster.token_file: .*No such file"):
        check_node(node_settings(base, pki, "head", IP, token_file=str(base / "nope")))


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_token_file_too_open(base: Path, pki: Pki, mode: int) -> None:
    pki.token.chmod(mode)
    with pytest.raises(ConfigError, match=f"cluster.token_file: .* must have mode 0600 or 0400, not {mode:04o}"):
        check_node(node_settings(base, pki, "head", IP))


def test_token_file_read_only_is_fine(base: Path, pki: Pki) -> None:
    pki.token.chmod(0o400)
    check_node(node_settings(base, pki, "head", IP))


def test_token_file_symlink_refused(base: Path, pki: Pki) -> None:
    link = base / "token-link"
    link.symlink_to(pki.token)
    with pytest.raises(ConfigError, match=r"cluster.token_file: .* \(symbolic links are refused\)"):
        check_node(node_settings(base, pki, "head", IP, token_file=str(link)))


@pytest.mark.parametrize("content", [b"", b"short\n", b"x" * 40 + b"\ny" * 40, b"\xff" * 40])
def test_token_file_must_hold_one_token(base: Path, pki: Pki, content: bytes) -> None:
    bad = base / "bad-token"
    fd = os.open(bad, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, content)
    os.close(fd)
    with pytest.raises(ConfigError, match="cluster.token_file") as info:
        check_node(node_settings(base, pki, "head", IP, token_file=str(bad)))
    assert "x" * 40 not in str(info.value)


def test_tls_files_missing(base: Path, pki: Pki) -> None:
    for field in ("tls_cert_file", "tls_ca_file", "tls_key_file"):
        with pytest.raises(ConfigError, match=f"cluster.{field}: "):
            check_node(node_settings(base, pki, "head", IP, **{field: str(base / "absent.pem")}))


def test_tls_key_too_open(base: Path, pki: Pki) -> None:
    s = node_settings(base, pki, "head", IP)
    assert s.tls_key_file is not None
    Path(s.tls_key_file).chmod(0o644)
    with pytest.raises(ConfigError, match="cluster.tls_key_file: .* must have mode 0600 or 0400"):
        check_node(s)


def test_certificate_from_another_ca_refused(base: Path, pki: Pki) -> None:
    other = create_ca(base / "other-ca")
    s = node_settings(base, pki, "head", IP, tls_ca_file=str(other.cert))
    with pytest.raises(ConfigError, match="cluster.tls_cert_file: not issued by the CA in cluster.tls_ca_file"):
        check_node(s)


def test_certificate_must_name_the_node_ip(base: Path, pki: Pki) -> None:
    files = issue(pki.ca_dir, "elsewhere", ["127.0.0.9"])
    s = node_settings(base, pki, "head", IP, tls_cert_file=str(files.cert), tls_key_file=str(files.key))
    with pytest.raises(ConfigError, match="cluster.tls_cert_file: the certificate does not name cluster.node_ip"):
        check_node(s)


def test_not_a_certificate(base: Path, pki: Pki) -> None:
    junk = base / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="cluster.tls_ca_file: .* is not a PEM certificate"):
        check_node(node_settings(base, pki, "head", IP, tls_ca_file=str(junk)))


@pytest.mark.parametrize("field", ["temp_dir", "spill_dir"])
def test_directory_not_private_refused(base: Path, pki: Pki, field: str) -> None:
    d = base / "shared"
    d.mkdir(mode=0o755)
    d.chmod(0o755)
    with pytest.raises(ConfigError, match=f"cluster.{field}: .* has mode 0755; it must be private"):
        check_node(node_settings(base, pki, "head", IP, **{field: str(d)}))


@pytest.mark.parametrize("field", ["temp_dir", "spill_dir"])
def test_directory_symlink_or_file_refused(base: Path, pki: Pki, field: str) -> None:
    real = base / "real"
    real.mkdir(mode=0o700)
    link = base / "link"
    link.symlink_to(real)
    with pytest.raises(ConfigError, match=f"cluster.{field}: .* is not a directory"):
        check_node(node_settings(base, pki, "head", IP, **{field: str(link)}))


def test_temp_dir_length_and_overlap(base: Path, pki: Pki) -> None:
    with pytest.raises(ConfigError, match="cluster.temp_dir: at most 36 bytes"):
        check_node(node_settings(base, pki, "head", IP, temp_dir="/tmp/" + "x" * 40))
    with pytest.raises(ConfigError, match="must be separate directories"):
        check_node(node_settings(base, pki, "head", IP, spill_dir=str(base / "t-head" / "spill")))


def test_a_driver_needs_no_directories(base: Path, pki: Pki) -> None:
    s = node_settings(base, pki, "head", IP, temp_dir=None, spill_dir=None)
    check_node(s, dirs=False)
    assert not (base / "t-head").exists()


def test_a_ca_bundle_during_rotation(base: Path, pki: Pki) -> None:
    """Old and new cluster CA in one file: a node certificate from either passes (docs/cluster.md)."""
    new = create_ca(base / "new-ca")
    bundle = base / "bundle.pem"
    bundle.write_bytes(pki.ca.read_bytes() + new.cert.read_bytes())
    old_node = node_settings(base, pki, "head", IP, tls_ca_file=str(bundle))
    check_node(old_node)
    files = issue(base / "new-ca", "head2", [IP])
    check_node(old_node.model_copy(update={"tls_cert_file": files.cert, "tls_key_file": files.key}))
