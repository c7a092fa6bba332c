"""Helpers for the cluster tests: a short private base directory (Ray's Unix sockets must fit in 107 bytes,
so pytest's long tmp_path will not do), a cluster CA with node certificates, a token, and ``[cluster]``
settings or TOML for one node; and :func:`running_cluster`, a real two-node cluster on this machine (head
on 127.0.0.2, worker on 127.0.0.3) started with ``bastion cluster start-head`` / ``start-worker``, which a
test module wraps in its own module-scoped fixture (started once per module, stopped whatever happens)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bastion.cluster.node import node_processes, stop_node
from bastion.cluster.pki import create_ca, issue
from bastion.cluster.settings import PORT_FIELDS as NODE_PORT_FIELDS
from bastion.cluster.settings import ClusterSettings
from bastion.cluster.token import write_token
from testkit.ports import free_port_block


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


ROOT = Path(__file__).resolve().parents[2]
HEAD_IP, WORKER_IP = "127.0.0.2", "127.0.0.3"
# A node's single ports but the GCS's (the head's GCS port is chosen apart, shared by both nodes).
PORT_FIELDS = tuple(f for f in NODE_PORT_FIELDS if f != "gcs_port")


@dataclass(frozen=True)
class Node:
    name: str
    ip: str
    config: Path
    fields: dict[str, object]

    @property
    def temp_dir(self) -> Path:
        return Path(str(self.fields["temp_dir"]))

    def port(self, field: str) -> int:
        return int(str(self.fields[field]))

    def ports(self) -> set[int]:
        singles = {self.port(f) for f in PORT_FIELDS} | {self.port("gcs_port")}
        return singles | set(range(self.port("min_worker_port"), self.port("max_worker_port") + 1))


@dataclass(frozen=True)
class Cluster:
    base: Path
    pki: Pki
    head: Node
    worker: Node

    @property
    def address(self) -> str:
        return f"{HEAD_IP}:{self.head.port('gcs_port')}"

    def token(self) -> bytes:
        return self.pki.token.read_bytes().strip()


def child_env() -> dict[str, str]:
    """This environment without bastion's and Ray's variables; bastion, testkit (fake-engine replicas) and
    the tests' helpers importable (Ray workers inherit it from their node)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BASTION_", "RAY_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "python"), str(ROOT), str(Path(__file__).parent)])
    return env


def capturing_factory(settings: Any, spec: Any) -> tuple[Any, list[Any]]:
    """``replica_pool_factory(settings, spec)`` as the server's pool factory, and the list the pool it builds
    is put in (the cases drive its proxies). The server hands it the partition key file: the routing secret's
    root."""
    from bastion.cluster.pool import ReplicaPool, replica_pool_factory

    inner = replica_pool_factory(settings, spec)
    built: list[ReplicaPool] = []

    async def factory(process: Any) -> Any:
        assert process.partition_key_file is not None
        pool = await inner(process)
        assert isinstance(pool, ReplicaPool)
        built.append(pool)
        return pool

    return factory, built


def audit_records(audit_dir: Path) -> list[dict[str, Any]]:
    """Every record of a server's audit log, in order."""
    out: list[dict[str, Any]] = []
    for seg in sorted(audit_dir.glob("audit-*.jsonl")):
        out += [json.loads(line) for line in seg.read_text().splitlines() if line]
    return out


def run_cases(cases: list[Path], timeout: float) -> None:
    """Runs the pytest modules ``cases`` in one process of its own (a Ray driver must set Ray's TLS variables
    before anything imports Ray; in this session other tests import it first) and asserts every case passed."""
    args = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", *map(str, cases)]
    r = run_python(args, timeout=timeout)
    out = r.stdout[-8000:] + r.stderr[-3000:]
    assert r.returncode == 0, out
    summary = [ln for ln in r.stdout.splitlines() if " passed" in ln]
    assert summary and "failed" not in summary[-1] and "error" not in summary[-1], out


def run_python(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], env=child_env(), capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def _node(base: Path, pki: Pki, name: str, ip: str, first_port: int, gcs_port: int) -> Node:
    """A node's config: its own ports from ``first_port`` on (both nodes share this machine's ports)."""
    fields = node_fields(
        base,
        pki,
        name,
        ip,
        head_address=f"{HEAD_IP}:{gcs_port}",
        gcs_port=gcs_port,
        num_cpus=1,
        object_store_bytes=100 * 1024 * 1024,
        # Two nodes and a driver on two cores, with other tests' engines around: be patient with heartbeats.
        health_check_failure_threshold=30,
        health_check_timeout_ms=30000,
        **{f: first_port + i for i, f in enumerate(PORT_FIELDS)},
        min_worker_port=first_port + 10,
        max_worker_port=first_port + 29,
    )
    config = base / f"{name}.toml"
    config.write_text(toml(fields))
    return Node(name, ip, config, fields)


def start_node(node: Node, *args: str) -> None:
    r = run_python(["-m", "bastion.cli.main", "cluster", *args, "--config", str(node.config)], timeout=200)
    log = node.temp_dir / "ray-start.log"
    detail = log.read_text()[-3000:] if log.exists() else ""
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr}\n{detail}"


@contextmanager
def running_cluster() -> Iterator[Cluster]:
    """A two-node cluster with token auth and mutual TLS; both nodes stopped on exit (only their processes,
    ``bastion.cluster.node.stop_node``), and none of them may be left running."""
    with short_dir("bcl-") as base:
        pki = make_pki(base)
        block = free_port_block(70)
        gcs = block + 65
        head = _node(base, pki, "head", HEAD_IP, block, gcs)
        worker = _node(base, pki, "worker", WORKER_IP, block + 32, gcs)
        try:
            start_node(head, "start-head")
            start_node(worker, "start-worker", "--address", f"{HEAD_IP}:{gcs}")
            yield Cluster(base, pki, head, worker)
        finally:
            for n in (worker, head):
                stop_node(n.temp_dir, grace_s=3)
            leftovers = node_processes(head.temp_dir) + node_processes(worker.temp_dir)
            assert not leftovers, f"Ray processes left running: {leftovers}"


def read_proc(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def listening_ports(pids: list[int]) -> set[int]:
    """The TCP ports these processes listen on."""
    inodes: set[str] = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in read_proc(table).decode().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A" and f[9] in inodes:  # 0A: LISTEN
                ports.add(int(f[1].rsplit(":", 1)[1], 16))
    return ports
