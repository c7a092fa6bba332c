"""Helpers for the cluster tests: a short private base directory (Ray's Unix sockets must fit in 107 bytes,
so pytest's long tmp_path will not do), a cluster CA with node certificates, a token, and ``[cluster]``
settings or TOML for one node."""

from __future__ import annotations

import random
import shutil
import socket
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bastion.cluster.pki import create_ca, issue
from bastion.cluster.settings import ClusterSettings
from bastion.cluster.token import write_token


@contextmanager
def short_dir(prefix: str = "bc-") -> Iterator[Path]:
    """A fresh 0700 directory directly under /tmp, removed afterwards."""
    d = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@dataclass(frozen=True)
class Pki:
    ca_dir: Path
    ca: Path
    token: Path

    def node(self, name: str, ip: str) -> tuple[Path, Path]:
        """The node's certificate and key (issued on first use)."""
        cert, key = self.ca_dir / f"{name}.pem", self.ca_dir / f"{name}.key"
        if not cert.exists():
            issue(self.ca_dir, name, [ip])
        return cert, key


def make_pki(base: Path) -> Pki:
    ca = create_ca(base / "ca")
    token = write_token(base / "token")
    return Pki(base / "ca", ca.cert, token)


def node_fields(base: Path, pki: Pki, name: str, ip: str, **overrides: Any) -> dict[str, Any]:
    """The ``[cluster]`` fields of a complete, valid node ``name`` at ``ip`` under ``base``."""
    cert, key = pki.node(name, ip)
    fields: dict[str, Any] = {
        "node_ip": ip,
        "token_file": str(pki.token),
        "tls_cert_file": str(cert),
        "tls_key_file": str(key),
        "tls_ca_file": str(pki.ca),
        "temp_dir": str(base / f"t-{name}"),
        "spill_dir": str(base / f"s-{name}"),
    }
    fields.update(overrides)
    return fields


def node_settings(base: Path, pki: Pki, name: str, ip: str, **overrides: Any) -> ClusterSettings:
    return ClusterSettings(**node_fields(base, pki, name, ip, **overrides))


def toml(fields: Mapping[str, Any]) -> str:
    """A config file with one ``[cluster]`` section."""
    lines = ["[cluster]"]
    for k, v in fields.items():
        lines.append(f"{k} = {v}" if isinstance(v, int) else f'{k} = "{v}"')
    return "\n".join(lines) + "\n"


def free_port_block(count: int, *, start: int = 20000, stop: int = 32000, step: int = 97) -> int:
    """A port ``p`` such that ``p .. p+count-1`` can all be bound on every interface now (Ray binds 0.0.0.0
    whatever its node address), below Linux's ephemeral range (32768 up) so no outgoing connection takes one
    meanwhile; tried at random so parallel runs rarely collide."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(start, stop - count, step)
        socks = []
        try:
            for p in range(base, base + count):
                s = socket.socket()
                socks.append(s)
                s.bind(("0.0.0.0", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free block of ports")
