"""A real two-node Ray cluster on this machine, started with ``bastion cluster start-head`` /
``start-worker``: the head on 127.0.0.2, the worker on 127.0.0.3 (127.0.0.1 is rewritten by Ray to the host
address, which the node certificates do not name), token auth and mutual TLS from a cluster CA made by
``bastion cluster ca`` / ``issue``.

* a driver with the token and a cluster certificate runs a task on each node;
* a driver without the token, or with another one, is refused by the GCS at its first attempt;
* plaintext gRPC (and a TLS client without a certificate) to the nodes' ports fails at the handshake;
* neither the token nor a private key appears in any Ray process's command line or environment (only
  their file paths), nor in Ray's files; the nodes listen on the configured ports only (no client server,
  no dashboard) and their directories stay private.

Run first by ``test_cluster_cases.py`` in the child process that runs the live case modules, on its one
cluster (``live_cluster`` in conftest.py; before the other modules add replicas' listeners). The nodes are
stopped with that session whatever happens (``bastion.cluster.node.stop_node``, which ends exactly these
nodes' processes, not every Ray process of the machine as ``ray stop`` would).
"""

from __future__ import annotations

import json
import os
import socket
import stat
import time
from pathlib import Path

import grpc
import pytest
from cluster_util import HEAD_IP, WORKER_IP, Cluster, listening_ports, read_proc, run_python

from bastion.cluster.node import node_processes

PROBE = Path(__file__).with_name("ray_probe.py")
GCS_METHOD = "/ray.rpc.NodeInfoGcsService/GetClusterId"


@pytest.fixture
def cluster(live_cluster: Cluster) -> Cluster:
    return live_cluster


def _probe(*args: str, timeout: float) -> dict[str, object]:
    r = run_python([str(PROBE), *args], timeout=timeout)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
    assert r.returncode == 0 and lines, f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    out: dict[str, object] = json.loads(lines[-1][len("RESULT ") :])
    out["_stderr"] = r.stderr
    return out


def test_driver_with_token_and_tls_runs_on_both_nodes(cluster: Cluster) -> None:
    out = _probe("driver", str(cluster.head.config), HEAD_IP, WORKER_IP, timeout=150)
    results = out["results"]
    assert isinstance(results, list)
    assert [r["ip"] for r in results] == [HEAD_IP, WORKER_IP]
    for r in results:  # the workers got the token's path from the raylet, never the token
        assert not r["token_in_env"] and r["auth_env"] == ["RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH"]


@pytest.mark.parametrize("token", ["none", "wrong"])
def test_driver_without_the_token_is_refused_at_once(cluster: Cluster, token: str) -> None:
    cert, key = cluster.pki.node("head", HEAD_IP)  # a valid cluster certificate: TLS lets it in
    args = ["intruder", cluster.address, HEAD_IP, str(cluster.pki.ca), str(cert), str(key)]
    if token == "wrong":
        wrong = cluster.base / "wrong.token"
        fd = os.open(wrong, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, b"0" * 64)
        os.close(fd)
        args.append(str(wrong))
    out = _probe(*args, timeout=60)
    assert out["refused"] is True
    text = f"{out['error']}\n{out['_stderr']}"
    assert "InvalidAuthToken" in text or "Unauthenticated" in text, text[-2000:]
    assert isinstance(out["seconds"], float) and out["seconds"] < 10  # one refused attempt, not a timeout


def _tls_channel(cluster: Cluster, *, client_cert: bool) -> grpc.Channel:
    cert, key = cluster.pki.node("head", HEAD_IP)
    creds = grpc.ssl_channel_credentials(
        root_certificates=cluster.pki.ca.read_bytes(),
        private_key=key.read_bytes() if client_cert else None,
        certificate_chain=cert.read_bytes() if client_cert else None,
    )
    return grpc.secure_channel(cluster.address, creds)


def _call(channel: grpc.Channel, metadata: tuple[tuple[str, str], ...] = ()) -> grpc.StatusCode:
    method = channel.unary_unary(GCS_METHOD)
    try:
        method(b"", timeout=3, metadata=metadata)
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]  # grpc's exceptions are untyped
    finally:
        channel.close()
    return grpc.StatusCode.OK


def test_gcs_wants_both_the_certificate_and_the_token(cluster: Cluster) -> None:
    token = cluster.token().decode()
    assert _call(_tls_channel(cluster, client_cert=True)) == grpc.StatusCode.UNAUTHENTICATED
    bad = (("authorization", "Bearer " + "0" * 64),)
    assert _call(_tls_channel(cluster, client_cert=True), bad) == grpc.StatusCode.UNAUTHENTICATED
    good = (("authorization", f"Bearer {token}"),)
    assert _call(_tls_channel(cluster, client_cert=True), good) == grpc.StatusCode.OK
    # Mutual TLS: the token alone, from a client without a cluster certificate, does not get in.
    assert _call(_tls_channel(cluster, client_cert=False), good) == grpc.StatusCode.UNAVAILABLE


def test_plaintext_to_the_tls_nodes_fails_at_the_handshake(cluster: Cluster) -> None:
    token = cluster.token().decode()
    targets = [
        (HEAD_IP, cluster.head.port("gcs_port")),
        (HEAD_IP, cluster.head.port("node_manager_port")),
        (WORKER_IP, cluster.worker.port("node_manager_port")),
        (WORKER_IP, cluster.worker.port("object_manager_port")),
    ]
    for host, port in targets:
        t0 = time.monotonic()
        status = _call(grpc.insecure_channel(f"{host}:{port}"), (("authorization", f"Bearer {token}"),))
        assert status == grpc.StatusCode.UNAVAILABLE, (host, port, status)
        assert time.monotonic() - t0 < 3.5
        # The raw HTTP/2 preface gets no HTTP/2 answer: the TLS server closes (or sends a TLS alert).
        with socket.create_connection((host, port), timeout=3) as s:
            s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000"))
            try:
                reply = s.recv(64)
            except ConnectionResetError:
                reply = b""
        assert reply == b"" or reply[0] == 0x15, (host, port, reply[:16])  # 0x15: a TLS alert record


def test_no_secret_in_ray_processes_or_files(cluster: Cluster) -> None:
    token = cluster.token()
    key_bodies = []
    for name, ip in (("head", HEAD_IP), ("worker", WORKER_IP)):
        _, key = cluster.pki.node(name, ip)
        key_bodies += [ln for ln in key.read_bytes().splitlines() if ln and not ln.startswith(b"-----")]
    seen: dict[str, int] = {}
    for node in (cluster.head, cluster.worker):
        pids = node_processes(node.temp_dir)
        assert pids, f"no process of node {node.name}"
        for pid in pids:
            cmdline, environ = read_proc(f"/proc/{pid}/cmdline"), read_proc(f"/proc/{pid}/environ")
            name = read_proc(f"/proc/{pid}/comm").strip().decode()
            seen[name] = seen.get(name, 0) + 1
            for blob in (cmdline, environ):
                assert token not in blob, f"the cluster token in process {pid} ({name})"
                assert not any(body in blob for body in key_bodies), f"a private key in process {pid} ({name})"
            names = {e.split(b"=", 1)[0] for e in environ.split(b"\0") if e}
            assert b"RAY_AUTH_TOKEN" not in names
        for d in (node.temp_dir, Path(str(node.fields["spill_dir"]))):  # Ray's logs, session files, spills
            for path in d.rglob("*"):
                if path.is_file() and not path.is_symlink():
                    assert token not in path.read_bytes(), f"the cluster token in {path}"
    assert {"gcs_server", "raylet"} <= set(seen), seen  # the core processes were among those checked
    # Their environment names the token by path only.
    raylet = next(p for p in node_processes(cluster.head.temp_dir) if read_proc(f"/proc/{p}/comm").strip() == b"raylet")
    assert f"RAY_AUTH_TOKEN_PATH={cluster.pki.token}".encode() in read_proc(f"/proc/{raylet}/environ").split(b"\0")


def test_nodes_listen_on_their_configured_ports_only_and_stay_private(cluster: Cluster) -> None:
    allowed = cluster.head.ports() | cluster.worker.ports()
    for node in (cluster.head, cluster.worker):
        ports = listening_ports(node_processes(node.temp_dir))
        assert ports, node.name
        assert ports <= allowed, f"{node.name} listens on unconfigured ports {sorted(ports - allowed)}"
    head_ports = listening_ports(node_processes(cluster.head.temp_dir))
    assert cluster.head.port("gcs_port") in head_ports and 10001 not in head_ports and 8265 not in head_ports
    for node in (cluster.head, cluster.worker):
        for field in ("temp_dir", "spill_dir"):
            mode = stat.S_IMODE(os.lstat(str(node.fields[field])).st_mode)
            assert mode == 0o700, f"{node.name} {field} is {mode:04o}"
